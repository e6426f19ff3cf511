"""Reading a run's artifact back (evidence shown in reports), without MLflow's progress bar."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from governance.tracking.runs import tracking_uri


def run_artifact_bytes(ref: str) -> bytes:
    """The bytes of `runs:/RUN_ID/PATH`."""
    with tempfile.TemporaryDirectory() as tmp:
        return download_quietly(ref, Path(tmp)).read_bytes()


def is_model_uri(ref: str | Path) -> bool:
    """An MLflow address of a model (no import of MLflow: light commands test it first)."""
    return isinstance(ref, str) and ref.startswith(("models:/", "runs:/", "mlflow-artifacts:/"))


def download_quietly(uri: str, dst: Path) -> Path:
    """Download an MLflow artifact URI (`runs:/`, `models:/`, `mlflow-artifacts:/`, ...) into
    `dst`, without MLflow's progress bar; returns the local path."""
    import mlflow
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

    previous = os.environ.get(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name)
    os.environ[MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name] = "false"
    try:
        dst.mkdir(parents=True, exist_ok=True)
        if uri.startswith("models:/"):
            uri = model_version_source(uri)
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst),
                                                        tracking_uri=tracking_uri()))
    finally:
        if previous is None:
            os.environ.pop(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name, None)
        else:
            os.environ[MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name] = previous


def model_version_source(uri: str) -> str:
    """`models:/NAME/VERSION` or `models:/NAME@ALIAS` -> where that version's files are, read from
    this workspace's model registry (never MLflow's process-global registry URI)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    ref = uri[len("models:/"):].strip("/")
    client = MlflowClient(tracking_uri=tracking_uri(), registry_uri=tracking_uri())
    if "@" in ref:
        name, _, alias = ref.partition("@")
        mv = client.get_model_version_by_alias(name, alias)
    else:
        name, _, version = ref.rpartition("/")
        if not name or not version.isdigit():
            raise MlflowException(f"{uri}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
        mv = client.get_model_version(name, version)
    return client.get_model_version_download_uri(name, mv.version)


MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:", "http://", "https://", "s3://", "gs://", "wasbs://",
                  "abfss://", "hdfs://", "dbfs:/")


def cache_dir() -> Path:
    """Content-addressed copies of fetched artifacts, `$SAEGOV_HOME/cache/<sha256>`: a cache,
    never the record (the registry holds the MLflow URI and the sha256)."""
    from governance.common.workspace import workspace_home

    return workspace_home() / "cache"


def sae_folder(rec: object) -> Path:
    """A local folder holding the SAE of registry record `rec` (weights_uri, weights_sha256,
    mlflow_run_id, ref): its local copy when this machine has it, else a cached or freshly fetched
    copy from MLflow's artifact store. The weights are hash-checked when loaded (TopKSAE.load
    with the recorded sha256), and before a download enters the cache."""
    import shutil

    from governance.common.errors import GovernanceError, UnreachableError, first_line
    from governance.common.hashing import sha256_file
    from governance.common.workspace import uri_to_path
    from governance.formats.sae_config import CFG_NAME, WEIGHTS_NAME

    uri, sha = str(getattr(rec, "weights_uri")), str(getattr(rec, "weights_sha256"))
    cfg_sha = getattr(rec, "cfg_sha256", None)
    ref = getattr(rec, "ref", "?")

    def checked(folder: Path, where: str) -> Path:
        # The weights are hash-checked where they are loaded; the config (k, normalisation, ...)
        # changes what the weights do just as much, and is checked here for every source.
        if cfg_sha and (not (folder / CFG_NAME).is_file() or sha256_file(folder / CFG_NAME) != cfg_sha):
            raise GovernanceError(f"SAE {ref}: the {CFG_NAME} at {where} is not the registered one (sha256 mismatch)")
        return folder

    # Keyed by both hashes: the same weights under another config are another SAE.
    cached = cache_dir() / "sae" / (f"{sha}-{cfg_sha}" if cfg_sha else sha)
    if (cached / WEIGHTS_NAME).is_file():
        return checked(cached, str(cached))
    if not uri.startswith(MLFLOW_SCHEMES):
        local = uri_to_path(uri)
        if local.is_dir():
            return checked(local, str(local))
        run_id = getattr(rec, "mlflow_run_id", None)
        if not run_id:
            raise GovernanceError(f"SAE {getattr(rec, 'ref', '?')}: its weights are at {uri}, which this machine "
                                  "cannot read, and no MLflow copy is recorded")
        uri = f"runs:/{run_id}/sae"
    from governance.tracking.runs import check_tracking

    check_tracking()
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{sha[:12]}.", dir=cached.parent))
    try:
        try:
            got = download_quietly(uri, tmp)
        except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds; one line for all
            raise UnreachableError(f"SAE {getattr(rec, 'ref', '?')}: cannot fetch {uri} ({first_line(exc)})") from None
        if not (got / WEIGHTS_NAME).is_file() or sha256_file(got / WEIGHTS_NAME) != sha:
            raise GovernanceError(f"SAE {getattr(rec, 'ref', '?')}: the copy at {uri} is not the registered one "
                                  "(sha256 mismatch)")
        checked(got, uri)
        try:
            got.rename(cached)
        except OSError:  # another process cached it first
            if not (cached / WEIGHTS_NAME).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return cached
