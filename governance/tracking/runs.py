"""MLflow conventions of saegov (DESIGN.md): a local sqlite store by default, one experiment per
base model, runs with the full config as params, registered models with aliases (never stages).

Everything goes through an explicit `MlflowClient` (no fluent global state), so several
trackers (tests, threads) never share an active run by accident.

Every run names who started it and with what: `mlflow.user` and `saegov.actor` (the saegov
actor), `mlflow.source.name` (the saegov command, e.g. `saegov sae train`), `mlflow.source.type`
LOCAL and `saegov.version`. UA / IRA / CRA are logged in percent (docs/evaluation.md).
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
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
    from governance.tracking.local_store import rebase_if_moved

    home = workspace_home().resolve()
    home.mkdir(parents=True, exist_ok=True)
    rebase_if_moved(home)  # a copied or moved workspace reads and writes its own artifacts
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
        # "Connection refused", not "<urlopen error [Errno 111] Connection refused>".
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        why = reason.strerror if isinstance(reason, OSError) and reason.strerror else first_line(reason)
        raise TrackingUnreachable(f"MLflow server {uri} is unreachable ({why})") from None


def quiet_mlflow() -> None:
    """No MLflow progress bars, hints or warnings on a command's stderr (its progress and its
    one-line error are all it prints). Imports nothing: the CLI calls it before every command."""
    import logging
    import warnings

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow prints run links on stdout when a run on a server ends; stdout is a command's result
    # (`--json`), and saegov prints the links itself, on stderr (cli.common.announce_runs).
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    # Model logging warns about type hints and signatures that saegov sets on purpose. A filter
    # is not enough: MLflow's save_model re-enables its UserWarnings inside catch_warnings, so
    # the warnings raised in MLflow's own files are dropped where they would be shown.
    warnings.filterwarnings("ignore", module=r"mlflow(\.|$)")
    if not getattr(warnings.showwarning, "_saegov_quiet", False):
        warnings.showwarning = _without_mlflow(warnings.showwarning)
    logging.getLogger("mlflow").setLevel(logging.ERROR)


def _without_mlflow(show: Callable[..., None]) -> Callable[..., None]:
    import re

    in_mlflow = re.compile(r"[/\\]mlflow[/\\]")

    def showwarning(message: Any, category: Any, filename: str, lineno: int, file: Any = None,
                    line: str | None = None) -> None:
        if not in_mlflow.search(str(filename)):
            show(message, category, filename, lineno, file, line)

    showwarning._saegov_quiet = True  # type: ignore[attr-defined]
    return showwarning


def run_link(uri: str, experiment_id: str, run_id: str) -> str:
    """Where a person finds the run: its page in the MLflow UI when the tracking URI is a
    server, else the run id (a local store has no UI address)."""
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return run_id


def saegov_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("saegov")
    except PackageNotFoundError:  # a source checkout that was never installed
        return "unknown"


def _invocation() -> tuple[str | None, str | None]:
    """(command path, --actor value) of the saegov command running now, if any: runs started by
    service code that does not pass them (deployments, evaluations) still name both."""
    click = sys.modules.get("click")
    ctx = click.get_current_context(silent=True) if click is not None else None
    if ctx is None:
        return None, None
    actor = ctx.params.get("actor")
    return ctx.command_path, actor if isinstance(actor, str) else None


def run_identity_tags(actor: str | None, command: str | None) -> dict[str, str]:
    """The tags that say who started a run and with which command (see the module docstring)."""
    from governance.common.workspace import ENV_ACTOR

    cli_command, cli_actor = _invocation()
    actor = actor or cli_actor or os.environ.get(ENV_ACTOR) or None
    command = command or cli_command or "saegov (library)"
    tags = {"mlflow.source.name": command, "mlflow.source.type": "LOCAL", "saegov.version": saegov_version()}
    if actor:
        tags |= {"mlflow.user": actor, "saegov.actor": actor}
    else:  # no saegov identity: the login is the best MLflow can show (saegov.actor stays unset)
        import getpass

        try:
            tags["mlflow.user"] = getpass.getuser()
        except (KeyError, OSError):
            pass
    return tags


@dataclass(frozen=True)
class DatasetRef:
    """An activation dataset as an MLflow dataset: one identity (name, digest) that the
    collection run and every training run on it log as an input, so the UI links them."""

    name: str
    sha256: str  # of manifest.json: the dataset's lineage hash
    manifest_uri: str
    profile: Mapping[str, Any]
    d_in: int

    def entity(self) -> Any:
        import json

        from mlflow.entities import Dataset

        # MLflow caps digests at 36 characters; the full sha256 is in the profile and the run's params.
        schema = {"mlflow_colspec": [{"name": "activations", "type": "tensor",
                                      "tensor-spec": {"dtype": "float16", "shape": [-1, self.d_in]}}]}
        return Dataset(name=self.name, digest=self.sha256[:36], source_type="local",
                       source=json.dumps({"uri": self.manifest_uri}), schema=json.dumps(schema),
                       profile=json.dumps({"manifest_sha256": self.sha256, **self.profile}, sort_keys=True))


def activation_dataset_ref(folder: str | Path, manifest: Any, manifest_sha256: str) -> DatasetRef:
    """`manifest`: the folder's ActivationManifest."""
    p = manifest.params
    return DatasetRef(
        name=f"activations {p.hook_point}", sha256=manifest_sha256,
        manifest_uri=(Path(folder).resolve() / "manifest.json").as_uri(), d_in=int(manifest.d_in),
        profile={"hook_point": p.hook_point, "base_model_hash": p.base_model_hash, "rows": manifest.total_rows,
                 "d_in": manifest.d_in, "prompts": p.n_prompts, "shards": len(manifest.shards),
                 "complete": manifest.complete})


# Runs finished by the command running now (cli.common.announce_runs prints their links once
# the command has succeeded, so a failure stays one line).
_FINISHED: ContextVar[list[Tracker] | None] = ContextVar("saegov_finished_runs", default=None)


@contextmanager
def collect_finished_runs() -> Iterator[list[Tracker]]:
    runs: list[Tracker] = []
    token = _FINISHED.set(runs)
    try:
        yield runs
    finally:
        _FINISHED.reset(token)


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
                 flush_every: int = 200, actor: str | None = None, command: str | None = None,
                 parent: Tracker | None = None) -> None:
        """`actor` / `command`: who runs it and the saegov command (default: those of the CLI
        invocation running now, else SAEGOV_ACTOR). `parent`: a child run in the parent's
        experiment (`mlflow.parentRunId`), e.g. one point of a sweep."""
        from mlflow.tracking import MlflowClient

        if parent is not None:
            self.uri, self.client, self.experiment_id = parent.uri, parent.client, parent.experiment_id
            identity = {k: v for k, v in parent.run.data.tags.items()
                        if k in ("mlflow.user", "saegov.actor", "mlflow.source.name", "mlflow.source.type",
                                 "saegov.version")}
            identity["mlflow.parentRunId"] = parent.run_id
        else:
            quiet_mlflow()
            self.uri = uri or tracking_uri()
            check_tracking(self.uri)
            self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
            self.experiment_id = self._experiment(base_model_hash)
            identity = run_identity_tags(actor, command)
        all_tags = {**identity, "saegov.kind": kind, **(tags or {})}
        self.run = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags)
        self.run_id: str = self.run.info.run_id
        self.parent_run_id = parent.run_id if parent is not None else None
        self._pending: list[Any] = []
        self._flush_every = flush_every
        self._finished = False

    def _experiment(self, base_model_hash: str | None) -> str:
        name = experiment_name(base_model_hash)
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return str(exp.experiment_id)
        # With a local store MLflow would default artifacts to ./mlruns in the cwd.
        location = None
        if self.uri.startswith("sqlite:") and not os.environ.get(ENV_URI):
            location = (workspace_home().resolve() / "mlartifacts").as_uri()
        return str(self.client.create_experiment(name, artifact_location=location,
                                                 tags={"saegov.base_model_hash": base_model_hash or ""}))

    @property
    def link(self) -> str:
        """The run's page in the MLflow UI (a tracking server), else its id."""
        return run_link(self.uri, self.experiment_id, self.run_id)

    def child(self, kind: str, run_name: str | None = None, tags: Mapping[str, str] | None = None) -> Tracker:
        """A nested run under this one (MLflow's compare view charts a parent's children)."""
        return Tracker(kind, None, run_name=run_name, tags=tags, parent=self)

    def log_dataset_input(self, dataset: DatasetRef, context: str) -> None:
        """`dataset` as an input of this run (`mlflow.data.context` = `context`)."""
        from mlflow.entities import DatasetInput, InputTag

        self.client.log_inputs(self.run_id, datasets=[DatasetInput(
            dataset.entity(), tags=[InputTag("mlflow.data.context", context)])])

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
                               tags: Mapping[str, Any] | None = None, model_tags: Mapping[str, Any] | None = None,
                               description: str | None = None) -> str:
        """A new version of registered model `model_name` from this run's artifacts, given
        `alias` (aliases move; stages are deprecated and never used). `model_tags` and
        `description` label the registered model when this creates it."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(model_name)
        except MlflowException:
            self.client.create_registered_model(model_name, tags={k: str(v) for k, v in (model_tags or {}).items()},
                                                description=description)
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
        finished = _FINISHED.get()
        if finished is not None and status == "FINISHED" and self.parent_run_id is None:
            finished.append(self)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.finish("FAILED" if exc_type else "FINISHED")
