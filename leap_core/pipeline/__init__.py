"""The experiment a flow runs: its stages (experiment), the hand-off between flow steps (handoff: arm plan, file refs, S3) and RetrainFlow's stages (retrain)."""
