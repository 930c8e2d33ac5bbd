"""What ships and runs: the early-exit encoder and its policies, the sentence-transformers module, fixed points and ONNX export, the MLflow model, the traffic log and its monitor."""
