"""The registered model's code (MLflow models-from-code): serving runs this file to build the model, so no
pickled object is ever loaded from the artifact store. registry.register logs it with the encoder folder as the
`encoder` artifact and leap_core as code."""

import mlflow

from leap_core.serve.registry import EarlyExitModel

mlflow.models.set_model(EarlyExitModel())
