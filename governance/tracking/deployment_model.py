"""Deployments as MLflow Models: a pyfunc flavour logged as models-from-code (no pickle), whose one
artifact is the whole signed deployment folder.

    model = mlflow.pyfunc.load_model("models:/deployment-no-red@production")
    model.predict(pd.DataFrame({"prompt": ["a red circle"]}), params={"seed": 3})
    # -> DataFrame: prompt, seed, image (base64 PNG), trace (saegov.trace/v1 JSON)

Loading verifies the deployment (hashes, a trusted signature, and the approvals when a registry
is configured) and enforces its blocklist; there is no way to load it unverified. Trust comes from
the loading machine (its registry, or `SAEGOV_TRUSTED_KEYS`), never from the model itself: a
model that carried its own trust store would vouch for itself.
"""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from governance.common.errors import GovernanceError
from governance.common.hashing import sha256_file

ARTIFACT = "deployment"
MODEL_PATH = "model"  # the run artifact path of the MLflow Model
ENTRY = Path(__file__).with_name("deployment_model_entry.py")


class DeploymentModelError(GovernanceError):
    """An MLflow deployment model that cannot be logged, fetched or loaded (one line)."""


def model_name(blocklist: str) -> str:
    """The registered MLflow model of a blocklist's deployments."""
    return f"deployment-{blocklist}"


def _pyfunc_base() -> type:
    from mlflow.pyfunc import PythonModel

    return PythonModel


class DeploymentModel(_pyfunc_base()):  # type: ignore[misc]
    """The pyfunc: prompts in, enforced images and their traces out."""

    def load_context(self, context: Any) -> None:
        from governance.enforcement.pipeline import EnforcedStableDiffusionPipeline
        from registry.store import Store

        folder = Path(context.artifacts[ARTIFACT])
        # The approvals are re-checked wherever a registry is configured; without one the
        # signing key must be in SAEGOV_TRUSTED_KEYS (verify_deployment refuses otherwise).
        store = Store.open_if_present()
        self.pipe = EnforcedStableDiffusionPipeline.from_pretrained(folder, store=store,
                                                                    check_registry=store is not None)

    # Untyped on purpose: MLflow reads predict's type hints as a schema; the signature is explicit.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        import pandas as pd
        import torch

        params = params or {}
        prompts = _prompts(model_input)
        d = self.pipe.saegov.manifest.payload.defaults
        steps = int(params.get("num_inference_steps") or d.num_inference_steps)
        guidance = float(params.get("guidance_scale") if params.get("guidance_scale") is not None
                         else d.guidance_scale)
        seed = int(params.get("seed") or 0)
        rows = []
        for i, prompt in enumerate(prompts):
            s = seed + i
            out = self.pipe(prompt, num_inference_steps=steps, guidance_scale=guidance,
                            generator=torch.Generator().manual_seed(s), seeds=[s])
            buf = io.BytesIO()
            out.images[0].save(buf, format="PNG")
            rows.append({"prompt": prompt, "seed": s, "image": base64.b64encode(buf.getvalue()).decode(),
                         "trace": json.dumps(out.traces[0], sort_keys=True)})
        return pd.DataFrame(rows, columns=["prompt", "seed", "image", "trace"])


def _prompts(model_input: Any) -> list[str]:
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        if "prompt" not in model_input.columns:
            raise DeploymentModelError("the input needs a 'prompt' column")
        values = model_input["prompt"].tolist()
    elif isinstance(model_input, str):
        values = [model_input]
    elif isinstance(model_input, dict) and "prompt" in model_input:
        v = model_input["prompt"]
        values = [v] if isinstance(v, str) else list(v)
    else:
        values = list(model_input)
    if not values or not all(isinstance(v, str) and v.strip() for v in values):
        raise DeploymentModelError("prompts must be non-empty strings")
    return values


def signature(defaults: Any) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "prompt")]),
        outputs=Schema([ColSpec("string", "prompt"), ColSpec("long", "seed"), ColSpec("string", "image"),
                        ColSpec("string", "trace")]),
        params=ParamSchema([ParamSpec("num_inference_steps", "long", int(defaults.num_inference_steps)),
                            ParamSpec("guidance_scale", "double", float(defaults.guidance_scale)),
                            ParamSpec("seed", "long", 0)]),
    )


def requirements() -> list[str]:
    """Pinned to what built it: serving with another torch or diffusers is a different model."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in ("mlflow", "torch", "diffusers", "transformers", "safetensors", "cryptography", "pydantic",
                 "sqlalchemy", "pandas", "pillow"):
        try:
            out.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            continue
    return out


def save_deployment_model(deployment: Path, dest: Path, defaults: Any, example_prompt: str) -> Path:
    """Write the MLflow Model folder for `deployment` at `dest` (models-from-code: the code is
    saegov's entry file; the deployment folder is copied in as the artifact)."""
    import logging
    import tempfile

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    stage = Path(tempfile.mkdtemp(prefix=".saegov-stage-", dir=deployment.parent)) / ARTIFACT
    try:
        # The artifact is named after its folder; links keep a multi-GB copy cheap.
        shutil.copytree(deployment, stage, copy_function=_link_or_copy)
        _save(dest, stage, defaults, example_prompt)
    finally:
        shutil.rmtree(stage.parent, ignore_errors=True)
    return dest


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _save(dest: Path, deployment: Path, defaults: Any, example_prompt: str) -> None:
    import pandas as pd
    from mlflow.pyfunc import save_model

    save_model(path=str(dest), python_model=str(ENTRY), artifacts={ARTIFACT: str(deployment)},
               signature=signature(defaults),
               input_example=(pd.DataFrame({"prompt": [example_prompt]}),
                              {"num_inference_steps": int(defaults.num_inference_steps),
                               "guidance_scale": float(defaults.guidance_scale), "seed": 0}),
               pip_requirements=requirements(),
               metadata={"saegov": "deployment"})
    # MLflow records where the code and the artifact were on the building machine; neither is
    # read back (the loader uses the file names), and a model says nothing about a workspace.
    from mlflow.models import Model

    model = Model.load(str(dest))
    pyfunc = model.flavors["python_function"]
    pyfunc["model_code_path"] = ENTRY.name
    for art in (pyfunc.get("artifacts") or {}).values():
        if isinstance(art, dict):
            art.pop("uri", None)
    model.save(str(dest / "MLmodel"))


# The python_function keys a saegov deployment model has. Every other key changes what MLflow
# loads (`data` moves the code to a subfolder, `predict_fn`, `model_config`, ...): refused.
PYFUNC_KEYS = {"loader_module", "model_code_path", "artifacts", "python_version", "env", "streamable",
               "cloudpickle_version", "code"}
LOADER = "mlflow.pyfunc.loaders.code_model"


def check_model_folder(folder: Path, name: str | None = None) -> Path:
    """Before MLflow executes a downloaded model's code: its MLmodel must load saegov's entry
    file, byte for byte, through MLflow's code-model loader, with the deployment folder as its
    one artifact, and nothing else (models-from-code runs whatever file the model names)."""
    import yaml

    label = name or str(folder)  # what the user gave, not the private copy
    try:
        mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
        pyfunc = mlmodel["flavors"]["python_function"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        raise DeploymentModelError(f"{label}: not an MLflow pyfunc model (MLmodel unreadable)") from None
    if not isinstance(pyfunc, dict) or not isinstance(mlmodel.get("flavors"), dict):
        raise DeploymentModelError(f"{label}: not an MLflow pyfunc model (MLmodel malformed)")
    if set(mlmodel["flavors"]) != {"python_function"}:
        raise DeploymentModelError(f"{label}: flavours {sorted(mlmodel['flavors'])}: a saegov deployment model has "
                                   "only python_function")
    extra = sorted(set(pyfunc) - PYFUNC_KEYS)
    if extra:
        raise DeploymentModelError(f"{label}: its python_function has {', '.join(map(str, extra))}, which saegov "
                                   "deployment models never have; refusing to run it")
    code = pyfunc.get("model_code_path")
    # MLflow's code-model loader reads the file of that name in the model folder.
    if not isinstance(code, str) or Path(code).name != ENTRY.name or pyfunc.get("loader_module") != LOADER:
        raise DeploymentModelError(f"{label}: not a saegov deployment model (its code is {code!r})")
    entry = folder / ENTRY.name  # where MLflow's code-model loader reads it from
    if entry.is_symlink() or not entry.is_file() or sha256_file(entry) != sha256_file(ENTRY):
        raise DeploymentModelError(f"{label}: its code file differs from saegov's {ENTRY.name}; refusing to run it")
    # Anything else MLflow would import or unpickle on load.
    if pyfunc.get("code") is not None or (folder / "code").exists() or (folder / "python_model.pkl").exists():
        raise DeploymentModelError(f"{label}: carries code or pickles of its own; refusing to run it")
    artifacts = pyfunc.get("artifacts")
    entry_art = artifacts.get(ARTIFACT) if isinstance(artifacts, dict) else None
    if not isinstance(artifacts, dict) or set(artifacts) != {ARTIFACT} or not isinstance(entry_art, dict) \
            or entry_art.get("path") != f"artifacts/{ARTIFACT}":
        raise DeploymentModelError(f"{label}: its artifacts are not exactly the deployment folder "
                                   f"(artifacts/{ARTIFACT})")
    return folder


def deployment_in(model_folder: Path) -> Path:
    """The deployment folder of a checked model folder (always `artifacts/deployment`)."""
    folder = model_folder / "artifacts" / ARTIFACT
    if folder.is_symlink() or not folder.is_dir():
        raise DeploymentModelError(f"{model_folder}: the model holds no deployment folder")
    return folder


def _checked_copy(uri: str, base: Path) -> Path:
    """A private copy of the model at `uri` (a model folder, or an MLflow URI downloaded) under
    `base`, with its code checked before anything of it runs: what is checked is what is loaded,
    whoever can write the original."""
    from mlflow.exceptions import MlflowException

    from governance.common.errors import first_line
    from governance.tracking.artifacts import download_quietly, is_model_uri
    from governance.tracking.runs import check_tracking

    local = base / "model"
    if Path(uri).is_dir():
        shutil.copytree(uri, local, symlinks=True)
    elif is_model_uri(uri):
        check_tracking()
        try:
            local = download_quietly(uri, local)
        except MlflowException as exc:
            raise DeploymentModelError(f"{uri}: {first_line(exc)}") from None
    else:
        raise DeploymentModelError(f"{uri} is neither a model folder nor an MLflow model URI "
                                   "(models:/deployment-NAME@ALIAS)")
    return check_model_folder(local, uri)


def load_deployment_model(uri: str, dst: Path | None = None) -> Any:
    """`mlflow.pyfunc.load_model(uri)`, with the model's code checked before MLflow runs it.
    `uri`: `models:/NAME@ALIAS`, `models:/NAME/VERSION`, `runs:/...` or a local folder."""
    import tempfile

    import mlflow

    from registry.store import Store

    # Without `dst` the copy is ours: removed at once when refused, else when the model is
    # garbage-collected or the interpreter exits (the pipeline's `save_pretrained` copies the
    # verified deployment from it). One copy per load, weights included, must not pile up.
    tmp = None if dst is not None else Path(tempfile.mkdtemp(prefix="saegov-model-"))
    try:
        local = _checked_copy(uri, dst if dst is not None else tmp)
        model = mlflow.pyfunc.load_model(str(local))
        store = Store.open_if_present()
        if store is not None:
            check_promoted(store, uri, model.unwrap_python_model().pipe.saegov)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if tmp is not None:
        weakref.finalize(model, shutil.rmtree, tmp, True)
    return model


def fetch_deployment(uri: str, dst: Path) -> Path:
    """The deployment folder inside the MLflow Model at `uri`, downloaded under `dst` with the
    model's code checked; the folder itself is verified by whoever loads it (verify_deployment),
    like any other."""
    return deployment_in(_checked_copy(uri, dst))


@contextmanager
def fetched_deployment(uri: str) -> Iterator[Path]:
    """`fetch_deployment` into a private temporary folder, removed after the block."""
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="saegov-model-"))
    try:
        yield fetch_deployment(uri, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_promoted(store: Any, uri: str, verified: Any) -> None:
    """For `models:/NAME@ALIAS` with a registry: the deployment the alias serves must be the one
    the registry last promoted to that alias (an alias moved by hand in MLflow, or a version's
    artifacts swapped after its promotion, is refused). `candidate`, which every build moves,
    needs no promotion; a version number (`models:/NAME/3`) is the caller's explicit choice.
    Every deployment model must belong to its blocklist (`deployment-<blocklist>`)."""
    if not uri.startswith("models:/"):
        return
    ref = uri[len("models:/"):]
    name, at, alias = ref.partition("@")
    if not at:
        name = ref.rpartition("/")[0]
    blocklist = verified.manifest.payload.blocklist
    if name != model_name(str(blocklist).partition("@")[0]):
        raise DeploymentModelError(f"{uri} holds a deployment of blocklist {blocklist}, not of {name}")
    if not at or alias == "candidate":
        return
    promotions = [p for p in store.list_promotions(alias) if p.mlflow_model == name]
    if not promotions:
        raise DeploymentModelError(f"{uri}: the registry never promoted {name} to {alias!r} (an alias set in MLflow by "
                                   "hand); see `saegov deploy status`")
    last = promotions[-1]
    dep = store.get_deployment(last.deployment_id)
    if dep.manifest_sha256 != verified.manifest_sha256:
        raise DeploymentModelError(f"{uri} is not the deployment the registry promoted to {alias!r} (deployment "
                                   f"{dep.id}, version {last.mlflow_version}); see `saegov deploy status`")


def serve(uri: str, host: str = "127.0.0.1", port: int = 5000, workers: int = 1) -> int:
    """`mlflow models serve` of the deployment model at `uri`, from a private copy checked
    first: saegov's own code (check_model_folder), the deployment verified (hashes, trusted
    signature, approvals where a registry is configured) and, for an alias, the registry's
    promotion (check_promoted). Plain `mlflow models serve` runs whatever code the artifact store
    holds; this is the way that does not trust the store. Returns the server's exit status
    (128 + N when stopped by signal N)."""
    import sys
    import tempfile

    from governance.enforcement.deployment import verify_deployment
    from registry.store import Store

    try:  # around the whole context: a stop signal may come as it is entered or left
        with _StopSignals() as stop:
            tmp = Path(tempfile.mkdtemp(prefix="saegov-serve-"))
            try:
                local = _checked_copy(uri, tmp)
                store = Store.open_if_present()
                verified = verify_deployment(deployment_in(local), store=store, check_registry=store is not None)
                if store is not None:
                    check_promoted(store, uri, verified)
                exe = Path(sys.executable).with_name("mlflow")
                bindir = str(Path(sys.executable).parent)
                env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
                cmd = [str(exe) if exe.is_file() else "mlflow", "models", "serve", "-m", str(local), "--env-manager",
                       "local", "--host", host, "-p", str(port), "-w", str(workers)]
                return stop.run(cmd, env)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except _Stopped as exc:
        return 128 + exc.signum


class _Stopped(BaseException):
    """A stop signal (SIGTERM, SIGINT, SIGHUP) that arrived before the server ran."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _StopSignals:
    """Stop signals for a process that runs a server in its own process group.

    Python's default SIGTERM ends a process without running `finally`: a server stopped by
    `kill` or a service manager would leave its copy of the deployment (weights included) in
    the temporary folder and orphan the server's workers. Inside this context a stop signal
    raises `_Stopped` until `run` has started the server, and from then on goes to the server's
    whole group; `run` returns once no process of the group is left. Signals ignored on entry
    (`nohup`) stay ignored. Outside the main thread, or without process groups (Windows),
    nothing is installed and `run` just waits for the server."""

    def __init__(self) -> None:
        import signal
        import threading

        self.signals = [s for s in (getattr(signal, n, None) for n in ("SIGTERM", "SIGINT", "SIGHUP")) if s is not None]
        self.active = hasattr(os, "killpg") and threading.current_thread() is threading.main_thread()
        self.proc: Any = None
        self.signalled = False
        self.previous: dict[int, Any] = {}

    def _handler(self, signum: int, _frame: Any) -> None:
        if self.proc is None:
            raise _Stopped(signum)
        self.signalled = True
        _signal_group(self.proc.pid, signum)

    def __enter__(self) -> _StopSignals:
        import signal

        if self.active:
            for s in self.signals:
                if signal.getsignal(s) is not signal.SIG_IGN:
                    self.previous[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        import signal

        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def run(self, cmd: list[str], env: dict[str, str]) -> int:
        import signal
        import subprocess

        if not self.active:
            return subprocess.call(cmd, env=env)
        # Blocked while the server starts, so that none arrives between its start and
        # `self.proc` (it would be lost with the server left running); the server itself starts
        # with this process's mask as it was.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, self.signals)
        try:
            self.proc = subprocess.Popen(cmd, env=env, start_new_session=True,
                                         preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_SETMASK, mask))
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a pending signal now goes to the group
        try:
            rc = self.proc.wait()
            return 128 - rc if rc < 0 else rc  # killed by signal N: the shell's 128 + N
        finally:
            _stop_group(self.proc, self.signalled)


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:  # every process of the group has exited
        pass


def _group_left(pgid: int) -> bool:
    """Whether a process of group `pgid` is still running (zombies, which only wait for their
    parent to reap them, do not count)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def _stop_group(proc: Any, signalled: bool, grace: float = 30.0) -> None:
    """Stop what is left of `proc`'s process group: its leader may have exited while its
    workers (uvicorn's) still finish requests or shut down. `signalled`: the group already got
    the stop signal (a second SIGTERM makes uvicorn skip its graceful shutdown)."""
    import signal
    import time

    if proc.poll() is None or (not signalled and _group_left(proc.pid)):
        _signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while proc.poll() is None or _group_left(proc.pid):
        if time.monotonic() > deadline:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
            break
        time.sleep(0.1)
