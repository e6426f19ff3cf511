"""The workspace (`SAEGOV_HOME`) and the environment variables that locate things, and URIs."""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse

ENV_HOME = "SAEGOV_HOME"
ENV_DATABASE_URL = "SAEGOV_DATABASE_URL"
ENV_ACTOR = "SAEGOV_ACTOR"
ENV_MLFLOW_URI = "MLFLOW_TRACKING_URI"
# A person's own settings and private keys: never inside the shared workspace.
ENV_CONFIG_DIR = "SAEGOV_CONFIG_DIR"
# A trust store file (governance.formats.trusted_keys) for verifying deployments.
ENV_TRUSTED_KEYS = "SAEGOV_TRUSTED_KEYS"


def workspace_home() -> Path:
    """`SAEGOV_HOME`, default `./.saegov`."""
    return Path(os.environ.get(ENV_HOME) or ".saegov")


def uri_to_path(uri: str) -> Path:
    """A `file:` URI (or a plain path) -> a local path."""
    if uri.startswith("file:"):
        return Path(unquote(urlparse(uri).path))
    return Path(uri)


def config_dir() -> Path:
    """`SAEGOV_CONFIG_DIR`, else `$XDG_CONFIG_HOME/saegov`, else `~/.config/saegov`: the person's
    own folder, where their private signing key lives."""
    if os.environ.get(ENV_CONFIG_DIR):
        return Path(os.environ[ENV_CONFIG_DIR])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "saegov"


def workspace_relative(path: Path) -> str:
    """What a workspace records about a path of its own: relative to `SAEGOV_HOME` when inside it
    (so a copied or moved workspace still finds it), else absolute."""
    path, home = Path(path).resolve(), workspace_home().resolve()
    return path.relative_to(home).as_posix() if path.is_relative_to(home) else str(path)


def workspace_path(recorded: str) -> Path:
    """The inverse of `workspace_relative`."""
    p = Path(recorded)
    return p if p.is_absolute() else workspace_home() / p
