"""The registered Router package's code (MLflow models-from-code): serving runs this file to build the model, so no
pickled object is ever loaded from the artifact store. registry.register logs it, instead of serving_model.py, for
a folder whose one module is a query/document Router (leap_core.query_encoder.package)."""

import mlflow

from leap_core.serve.registry import QueryRouteModel

mlflow.models.set_model(QueryRouteModel())
