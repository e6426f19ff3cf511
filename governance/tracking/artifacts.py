"""Reading a run's artifact back (evidence shown in reports), without MLflow's progress bar."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from governance.tracking.runs import tracking_uri


def run_artifact_bytes(ref: str) -> bytes:
    """The bytes of `runs:/RUN_ID/PATH`."""
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
    from mlflow.tracking import MlflowClient

    run_id, _, artifact = ref[len("runs:/"):].partition("/")
    with tempfile.TemporaryDirectory() as tmp:
        previous = os.environ.get(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name)
        os.environ[MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name] = "false"  # our progress goes to stderr, once
        try:
            local = MlflowClient(tracking_uri=tracking_uri()).download_artifacts(run_id, artifact, tmp)
        finally:
            if previous is None:
                os.environ.pop(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name, None)
            else:
                os.environ[MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name] = previous
        return Path(local).read_bytes()
