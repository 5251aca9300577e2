"""MLflow "models from code" entry point of the logged recommender.

``mlflow.pyfunc.log_model(python_model=<this file>)`` stores this script with the model and
runs it when the model is loaded: no pickled Python object is ever written or read.
"""

import mlflow

from rere_pipeline.mlops.serving import RecommenderModel

mlflow.models.set_model(RecommenderModel())
