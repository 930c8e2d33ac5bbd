"""The paper's deployment alert rules: the thresholds `leap monitor` judges traffic by and its report states."""

MAX_DEPTH_SHIFT = 1.0  # layers (the paper: the exit-layer distribution shifts by more than one layer)
MAX_NN10_DROP = 0.20  # relative (the paper: NN@10 against a full-depth reference drops by more than 20%)
PSI_MAJOR = 0.25  # the usual mark of a major population shift; reported, not an alert rule of the paper
