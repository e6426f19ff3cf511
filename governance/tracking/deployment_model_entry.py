"""The code of every saegov deployment MLflow Model (models-from-code): the model itself is the
installed saegov's, so what runs is what was reviewed, and the model folder carries no code of
its own. `governance.tracking.deployment_model.check_model_folder` checks a downloaded model's
copy of this file byte for byte before MLflow executes it."""
from mlflow.models import set_model

from governance.tracking.deployment_model import DeploymentModel

set_model(DeploymentModel())
