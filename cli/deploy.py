"""`saegov deploy build|verify`, `saegov generate`, `saegov audit explain`."""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Callable

import click

from cli.common import actor_option, fail, json_option, open_store, print_json, registry_command, resolve_actor, subgroup


def governance_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Deployment / enforcement / model errors as one-line messages (registry ones via registry_command)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from governance.basemodel import ModelLoadError
        from governance.deployment_eval import EvalError
        from governance.enforcement import DeploymentError, EnforcementError
        from governance.enforcement.explain import ExplainError
        from governance.hooks import HookPointError
        from governance.sae.model import SaeLoadError

        try:
            return fn(*args, **kwargs)
        except (DeploymentError, EnforcementError, EvalError, ExplainError, HookPointError, ModelLoadError,
                SaeLoadError) as exc:
            fail(str(exc))

    return wrapper


def _parse_ref(ref: str) -> tuple[str, int | None]:
    name, sep, version = ref.partition("@")
    if not sep:
        return name, None
    if not version.isdigit():
        raise click.BadParameter(f"expected NAME@VERSION, got {ref!r}", param_hint="--blocklist")
    return name, int(version)


def register(root: click.Group) -> None:
    deploy = subgroup(root, "deploy", "Deployments: verified diffusers folders that enforce a blocklist.")

    @deploy.command("build")
    @click.option("--blocklist", "blocklist_ref", required=True, metavar="NAME@VERSION")
    @click.option("--model", required=True, help="Base pipeline: a local diffusers folder or hub id.")
    @click.option("--out", type=click.Path(path_type=Path), required=True)
    @click.option("--guidance", type=float, default=None, help="Default CFG scale (default: as scored).")
    @click.option("--reference-error-sign", is_flag=True,
                  help="Compatibility: the reference code's x_hat' + (x_hat - x) instead of x + (z' - z) W_dec.")
    @actor_option
    @json_option
    @registry_command
    @governance_errors
    def build(blocklist_ref: str, model: str, out: Path, guidance: float | None, reference_error_sign: bool,
              actor: str | None, as_json: bool) -> None:
        """Build a deployment folder from a published, fully approved blocklist."""
        from governance.enforcement import build_deployment

        name, version = _parse_ref(blocklist_ref)
        store = open_store()
        path, record = build_deployment(store, name, version, model, out, resolve_actor(actor) or "",
                                        guidance=guidance,
                                        error_mode="reference" if reference_error_sign else "faithful")
        if as_json:
            print_json(record)
        else:
            click.echo(f"deployment {record.id} of {name}@{record.blocklist_version} written to {path}")

    @deploy.command("verify")
    @click.argument("folder", type=click.Path(path_type=Path))
    @click.option("--offline", is_flag=True, help="Do not consult the registry (hashes and signature only).")
    @json_option
    @registry_command
    @governance_errors
    def verify(folder: Path, offline: bool, as_json: bool) -> None:
        """Verify hashes, signature and (when the registry is reachable) approvals."""
        from governance.enforcement import verify_deployment

        v = verify_deployment(folder, check_registry=not offline)
        info = {"path": str(folder), "ok": True, "manifest_sha256": v.manifest_sha256,
                "blocklist": v.manifest.payload.blocklist, "files": len(v.manifest.payload.files),
                "registry_checked": v.registry_checked, "deployment_id": v.deployment_id, "notes": v.notes}
        if as_json:
            print_json(info)
            return
        click.echo(f"ok: {info['files']} files verified, signature valid, blocklist {info['blocklist']}"
                   + (f", approvals current (deployment {v.deployment_id})" if v.registry_checked else ""))
        for note in v.notes:
            click.echo(f"note: {note}")

    @root.command("generate")
    @click.option("--deployment", "deployment", type=click.Path(path_type=Path), required=True)
    @click.argument("prompt")
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--out", "out", type=click.Path(path_type=Path), required=True, help="PNG to write.")
    @click.option("--trace", "trace_file", type=click.Path(path_type=Path), default=None, help="Also write the trace JSON.")
    @click.option("--record", is_flag=True, help="Store the trace in the registry.")
    @click.option("--steps", type=int, default=None, help="Default: the deployment's approved step count.")
    @click.option("--guidance", type=float, default=None, help="Default: the deployment's approved guidance.")
    @actor_option
    @json_option
    @registry_command
    @governance_errors
    def generate(deployment: Path, prompt: str, seed: int, out: Path, trace_file: Path | None, record: bool,
                 steps: int | None, guidance: float | None, actor: str | None, as_json: bool) -> None:
        """Generate one image through a verified deployment, with its feature trace."""
        import hashlib

        import torch
        from PIL.PngImagePlugin import PngInfo

        from governance.enforcement import EnforcedStableDiffusionPipeline
        from governance.enforcement.explain import TRACE_PNG_KEY
        from registry.audit import canonical_json

        store = open_store() if record else None
        if store is not None:
            store.check_actor(resolve_actor(actor))
        pipe = EnforcedStableDiffusionPipeline.from_pretrained(deployment, store=store)
        result = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance,
                      generator=torch.Generator().manual_seed(seed), seeds=[seed])
        trace = result.traces[0]
        if store is not None:
            gen = store.record_generation(deployment_id=pipe.saegov.deployment_id,
                                          prompt_sha256=hashlib.sha256(prompt.encode()).hexdigest(),
                                          seed=seed, trace=trace, actor=resolve_actor(actor))
            trace = {**trace, "generation_id": gen.id}
        text = canonical_json(trace)
        info = PngInfo()
        info.add_text(TRACE_PNG_KEY, text)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        result.images[0].save(tmp, format="PNG", pnginfo=info)
        tmp.replace(out)
        if trace_file is not None:
            trace_file.write_text(json.dumps(trace, indent=2) + "\n")
        n = sum(len(c["suppressed"]) > 0 for c in trace["unet_calls"])
        if as_json:
            print_json({"image": str(out), "trace_file": str(trace_file) if trace_file else None,
                        "generation_id": trace.get("generation_id"), "suppressed_calls": n,
                        "unet_calls": len(trace["unet_calls"]), "trace": trace})
            return
        click.echo(f"{out}: suppression in {n} of {len(trace['unet_calls'])} UNet calls"
                   + (f"; recorded as generation {trace['generation_id']}" if "generation_id" in trace else ""))

    audit = subgroup(root, "audit", "The hash-chained audit log.")

    @audit.command("explain")
    @click.argument("target")
    @json_option
    @registry_command
    @governance_errors
    def explain_cmd(target: str, as_json: bool) -> None:
        """Which concepts a generation suppressed, by which features, approved by whom (IMG, TRACE or GENERATION_ID)."""
        from governance.enforcement.deployment import reachable_store
        from governance.enforcement.explain import explain, load_trace, render_text

        store = reachable_store()
        trace, gen_id = load_trace(target, store)
        report = explain(trace, store, gen_id if gen_id is not None else trace.get("generation_id"))
        if as_json:
            print_json(report)
        else:
            click.echo(render_text(report))
