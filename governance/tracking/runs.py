"""MLflow conventions of saegov (DESIGN.md): a local sqlite store by default, one experiment per
base model, runs with the full config as params, registered models with aliases (never stages).

Everything goes through an explicit `MlflowClient` (no fluent global state), so several
trackers (tests, threads) never share an active run by accident.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from governance.common.errors import UnreachableError, first_line
from governance.common.workspace import ENV_MLFLOW_URI as ENV_URI
from governance.common.workspace import workspace_home


class TrackingUnreachable(UnreachableError):
    """The MLflow tracking server (or store) cannot be reached."""


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI`, else sqlite:///$SAEGOV_HOME/mlflow.db."""
    if os.environ.get(ENV_URI):
        return os.environ[ENV_URI]
    home = workspace_home().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'mlflow.db'}"


def check_tracking(uri: str | None = None, timeout_s: int = 10) -> None:
    """Refuse early, with one line, when the tracking server does not answer (instead of after
    minutes of work and MLflow's own retries)."""
    uri = uri or tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as resp:  # noqa: S310
            if resp.status == 200:
                return
            raise TrackingUnreachable(f"MLflow server {uri} answered {resp.status} to /health")
    except (urllib.error.URLError, OSError) as exc:
        raise TrackingUnreachable(f"MLflow server {uri} is unreachable ({first_line(exc)})") from None


def experiment_name(base_model_hash: str | None) -> str:
    return f"saegov/{base_model_hash[:12]}" if base_model_hash else "saegov/unknown-base-model"


def flatten_params(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> flat `a.b` params; MLflow params are strings of bounded length."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_params(v, key + "."))
        else:
            out[key] = str(v)[:6000]
    return out


class Tracker:
    """One MLflow run. Metrics are buffered and sent in batches (a round-trip per step would
    dominate a fast training step)."""

    def __init__(self, kind: str, base_model_hash: str | None, run_name: str | None = None,
                 tags: Mapping[str, str] | None = None, uri: str | None = None,
                 flush_every: int = 200) -> None:
        import logging

        from mlflow.tracking import MlflowClient

        # MLflow's INFO lines (store creation, migrations) would interleave with the progress bar.
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        self.uri = uri or tracking_uri()
        check_tracking(self.uri)
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        name = experiment_name(base_model_hash)
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            # With a local store MLflow would default artifacts to ./mlruns in the cwd.
            location = None
            if self.uri.startswith("sqlite:") and not os.environ.get(ENV_URI):
                location = (workspace_home().resolve() / "mlartifacts").as_uri()
            exp_id = self.client.create_experiment(name, artifact_location=location,
                                                   tags={"saegov.base_model_hash": base_model_hash or ""})
        else:
            exp_id = exp.experiment_id
        all_tags = {"saegov.kind": kind, **(tags or {})}
        self.run = self.client.create_run(exp_id, run_name=run_name, tags=all_tags)
        self.run_id: str = self.run.info.run_id
        self._pending: list[Any] = []
        self._flush_every = flush_every
        self._finished = False

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        flat = flatten_params(params)
        items = [Param(k, v) for k, v in sorted(flat.items())]
        for i in range(0, len(items), 100):  # log_batch accepts at most 100 params per call
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self._pending.extend(Metric(k, float(v), ts, step or 0) for k, v in metrics.items())
        if len(self._pending) >= self._flush_every:
            self.flush()

    def flush(self) -> None:
        while self._pending:
            chunk, self._pending = self._pending[:1000], self._pending[1000:]
            self.client.log_batch(self.run_id, metrics=chunk)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_artifacts(self, folder: str | Path, artifact_path: str) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def register_model_version(self, model_name: str, artifact_path: str, alias: str = "candidate",
                               tags: Mapping[str, Any] | None = None) -> str:
        """A new version of registered model `model_name` from this run's artifacts, given
        `alias` (aliases move; stages are deprecated and never used)."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(model_name)
        except MlflowException:
            self.client.create_registered_model(model_name)
        source = f"{self.run.info.artifact_uri.rstrip('/')}/{artifact_path}"
        mv = self.client.create_model_version(
            model_name, source, run_id=self.run_id, tags={k: str(v) for k, v in (tags or {}).items()})
        self.client.set_registered_model_alias(model_name, alias, mv.version)
        return str(mv.version)

    def set_model_version_tags(self, model_name: str, version: str, tags: Mapping[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_model_version_tag(model_name, version, k, str(v))

    def finish(self, status: str = "FINISHED") -> None:
        if self._finished:
            return
        self._finished = True
        try:
            self.flush()
        finally:
            self.client.set_terminated(self.run_id, status=status)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.finish("FAILED" if exc_type else "FINISHED")
