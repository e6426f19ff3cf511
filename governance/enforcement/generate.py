"""`saegov generate`: one image through a verified deployment, with its trace in the PNG, in a
JSON file and (with `record`) in the registry."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from governance.common.errors import UsageError
from governance.common.hashing import sha256_text
from governance.formats.trace import Trace, write_trace_json, write_trace_png


@dataclass
class Generated:
    image: Path
    trace_file: Path | None
    trace: Trace

    @property
    def generation_id(self) -> int | None:
        return self.trace.generation_id

    def summary(self) -> dict[str, Any]:
        return {"image": str(self.image), "trace_file": str(self.trace_file) if self.trace_file else None,
                "generation_id": self.generation_id, "suppressed_calls": self.trace.suppressed_calls(),
                "unet_calls": len(self.trace.unet_calls), "trace": self.trace.to_json_dict()}


def generate_image(deployment: Path | str, prompt: str, *, seed: int, out: Path, trace_file: Path | None = None,
                   record: bool = False, actor: str | None = None, steps: int | None = None,
                   guidance: float | None = None) -> Generated:
    import torch

    from governance.enforcement.pipeline import EnforcedStableDiffusionPipeline

    for path in (out, trace_file):  # refused before the model loads and before anything is recorded
        if path is not None:
            _check_writable(path)
    store = None
    if record:
        from registry.store import Store

        store = Store.open()
        store.check_actor(actor, "generation.record")  # refuse before the model loads, not after
    if isinstance(deployment, str):  # an MLflow Model URI: its own copy of the deployment is verified and loaded
        from governance.tracking.deployment_model import check_promoted, fetched_deployment
        from registry.store import Store

        with fetched_deployment(deployment) as folder:
            pipe = EnforcedStableDiffusionPipeline.from_pretrained(folder, store=store)
        registry = store or Store.open_if_present()
        if registry is not None:  # without one, the trust store vouched for the signature alone
            check_promoted(registry, deployment, pipe.saegov)
    else:
        pipe = EnforcedStableDiffusionPipeline.from_pretrained(deployment, store=store)
    result = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance,
                  generator=torch.Generator().manual_seed(seed), seeds=[seed])
    trace: Trace = result.trace_records[0]
    if store is not None:
        gen = store.record_generation(deployment_id=pipe.saegov.deployment_id,
                                      prompt_sha256=sha256_text(prompt),
                                      seed=seed, trace=trace.to_json_dict(), actor=actor)
        trace = trace.model_copy(update={"generation_id": gen.id})
    out.parent.mkdir(parents=True, exist_ok=True)
    write_trace_png(out, result.images[0], trace)
    if trace_file is not None:
        write_trace_json(trace_file, trace)
    return Generated(image=out, trace_file=trace_file, trace=trace)


def _check_writable(path: Path) -> None:
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path} is a folder; give a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {path.parent}: {exc.strerror or exc}") from None
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"cannot write {path}: permission denied")
