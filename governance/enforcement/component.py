"""Deployment folders that plain diffusers refuses to load.

A deployment is a diffusers folder, so without this `StableDiffusionPipeline.from_pretrained(DIR)`
or `DiffusionPipeline.from_pretrained(DIR)` would return the model with no verification and no
blocklist. `mark_saegov_only` (run by `build_deployment` before the manifest hashes the folder,
so the change is signed like every other byte) declares the UNet in `model_index.json` as

    "unet": ["governance.enforcement.component", "SaegovUNet2DConditionModel"]

which diffusers resolves as a custom component:
- saegov not imported (or not installed): diffusers 0.42 imports no module a repository names and
  raises a ValueError naming `governance.enforcement.component` (older diffusers imported it: the
  import fails without saegov, and with it the refusal below runs);
- saegov imported: diffusers calls `SaegovUNet2DConditionModel.from_pretrained`, which refuses with
  `PlainLoadRefused` unless saegov's verified loader (`EnforcedStableDiffusionPipeline
  .from_pretrained`) is loading that very folder (`verified_loading`, a context variable).

Limits: this closes the pipeline loaders, not the weights. Anyone can still read `unet/`
directly (`UNet2DConditionModel.from_pretrained(DIR, subfolder="unet")`), pass components to
`from_pretrained` themselves, or enter `verified_loading` by hand; a deployment is governed
against accidental, unenforced use, not against someone holding its files. Deployments built
before this module keep their standard `model_index.json` (the signed bytes cannot change) and
still load plainly with diffusers; saegov loads both.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

# diffusers looks the loading base classes up by name in the module a component is declared in
# (pipeline_loading_utils.get_class_obj_and_candidates): ModelMixin must be importable from here.
from diffusers import ModelMixin, UNet2DConditionModel  # noqa: F401 - ModelMixin: see above

from governance.enforcement.deployment import DeploymentError

LIBRARY = __name__  # "governance.enforcement.component": what model_index.json names
CLASS_NAME = "SaegovUNet2DConditionModel"
COMPONENT = "unet"

# The resolved folder saegov's verified loader is loading right now (per thread and task); None
# everywhere else.
_verified_folder: ContextVar[Path | None] = ContextVar("saegov_verified_folder", default=None)


class PlainLoadRefused(DeploymentError):
    """A deployment folder loaded by something other than saegov's verified loader."""


def refusal_message(folder: str | Path) -> str:
    return (f"{folder} is a saegov deployment, and loading it with plain diffusers would skip its verification and "
            "its blocklist: load it with saegov's EnforcedStableDiffusionPipeline.from_pretrained(folder) or "
            "`saegov generate --deployment folder`")


class SaegovUNet2DConditionModel(UNet2DConditionModel):
    """The UNet of a deployment: a UNet2DConditionModel that only saegov's verified loader may
    load from a folder."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *args: Any, **kwargs: Any) -> Any:
        target = Path(pretrained_model_name_or_path)
        allowed = _verified_folder.get()
        if allowed is None or not _inside(target, allowed):
            # diffusers passes DIR/unet; name the deployment folder, which is what the user gave.
            folder = target.parent if target.name == COMPONENT else target
            raise PlainLoadRefused(refusal_message(folder))
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder)
    except OSError:
        return False


@contextmanager
def verified_loading(folder: str | Path) -> Iterator[None]:
    """Inside the block, `SaegovUNet2DConditionModel.from_pretrained` loads from `folder` (the
    deployment copy saegov has just verified), and from nowhere else."""
    token = _verified_folder.set(Path(folder).resolve())
    try:
        yield
    finally:
        _verified_folder.reset(token)


def mark_saegov_only(folder: str | Path) -> None:
    """Declare the UNet of the diffusers folder `folder` as `SaegovUNet2DConditionModel`, so
    that only saegov loads the pipeline. Written as diffusers' own save_config writes it."""
    path = Path(folder) / "model_index.json"
    index = json.loads(path.read_text(encoding="utf-8"))
    entry = index.get(COMPONENT)
    if not (isinstance(entry, list) and len(entry) == 2 and entry[1] in ("UNet2DConditionModel", CLASS_NAME)):
        raise DeploymentError(f"model_index.json declares the {COMPONENT} as {entry!r}, not a UNet2DConditionModel")
    index[COMPONENT] = [LIBRARY, CLASS_NAME]
    path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def is_saegov_only(folder: str | Path) -> bool:
    """Whether `folder`'s model_index.json declares the UNet as saegov's (deployments built
    before `mark_saegov_only` existed do not)."""
    try:
        index = json.loads((Path(folder) / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return index.get(COMPONENT) == [LIBRARY, CLASS_NAME]
