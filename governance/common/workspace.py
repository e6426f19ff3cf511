"""The workspace (`SAEGOV_HOME`) and the environment variables that locate things, and URIs."""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse

ENV_HOME = "SAEGOV_HOME"
ENV_DATABASE_URL = "SAEGOV_DATABASE_URL"
ENV_ACTOR = "SAEGOV_ACTOR"
ENV_MLFLOW_URI = "MLFLOW_TRACKING_URI"


def workspace_home() -> Path:
    """`SAEGOV_HOME`, default `./.saegov`."""
    return Path(os.environ.get(ENV_HOME) or ".saegov")


def uri_to_path(uri: str) -> Path:
    """A `file:` URI (or a plain path) -> a local path."""
    if uri.startswith("file:"):
        return Path(unquote(urlparse(uri).path))
    return Path(uri)
