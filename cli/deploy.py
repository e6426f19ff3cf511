"""`saegov deploy build|verify`: deployment folders that enforce a published blocklist."""
from __future__ import annotations

from pathlib import Path

import click

from cli.common import GUIDANCE, actor_option, json_option, open_store, parse_ref, print_json, resolve_actor, subgroup


def register(root: click.Group) -> None:
    deploy = subgroup(root, "deploy", "Deployments: verified diffusers folders that enforce a blocklist.")

    @deploy.command("build")
    @click.option("--blocklist", "blocklist_ref", required=True, metavar="NAME@VERSION")
    @click.option("--model", required=True, help="Base pipeline: a local diffusers folder or hub id.")
    @click.option("--out", type=click.Path(path_type=Path), required=True)
    @click.option("--guidance", type=GUIDANCE, default=None, help="Default CFG scale (default: as scored).")
    @click.option("--reference-error-sign", is_flag=True,
                  help="Compatibility: the reference code's x_hat' + (x_hat - x) instead of x + (z' - z) W_dec.")
    @click.option("--no-mlflow", is_flag=True, help="Log no MLflow run and register no MLflow model version.")
    @actor_option
    @json_option
    def build(blocklist_ref: str, model: str, out: Path, guidance: float | None, reference_error_sign: bool,
              no_mlflow: bool, actor: str | None, as_json: bool) -> None:
        """Build a deployment folder from a published, fully approved blocklist."""
        from governance.enforcement import build_deployment

        name, version = parse_ref(blocklist_ref)
        path, record = build_deployment(open_store(), name, version, model, out, resolve_actor(actor) or "",
                                        guidance=guidance,
                                        error_mode="reference" if reference_error_sign else "faithful",
                                        track=not no_mlflow)
        if as_json:
            print_json(record)
        else:
            click.echo(f"deployment {record.id} of {name}@{record.blocklist_version} written to {path}")

    @deploy.command("verify")
    @click.argument("folder")
    @click.option("--offline", is_flag=True,
                  help="Do not consult the registry: approvals are not re-checked, and the signing key must be "
                       "in a trust store (--trusted-keys or SAEGOV_TRUSTED_KEYS).")
    @click.option("--trusted-keys", type=click.Path(path_type=Path), default=None,
                  help="Trust store file (`saegov key export`); default: SAEGOV_TRUSTED_KEYS.")
    @click.option("--allow-untrusted", is_flag=True,
                  help="Accept a signature by a key nobody vouches for (says so loudly). Not for production.")
    @json_option
    def verify(folder: str, offline: bool, trusted_keys: Path | None, allow_untrusted: bool, as_json: bool) -> None:
        """Verify hashes, that a trusted key signed it, and (unless --offline) its approvals. FOLDER: a
        deployment folder, or its MLflow Model (models:/deployment-NAME@ALIAS or /VERSION: the copy MLflow
        serves, and for an alias, that it is the one the registry promoted)."""
        from governance.enforcement import verify_deployment

        from governance.tracking.artifacts import is_model_uri

        if is_model_uri(folder):
            from governance.tracking.deployment_model import check_promoted, fetched_deployment

            with fetched_deployment(folder) as local:
                v = verify_deployment(local, check_registry=not offline, trusted_keys_file=trusted_keys,
                                      allow_untrusted=allow_untrusted)
            if not offline:
                check_promoted(open_store(), folder, v)
        else:
            v = verify_deployment(Path(folder), check_registry=not offline, trusted_keys_file=trusted_keys,
                                  allow_untrusted=allow_untrusted)
        info = {"path": str(folder), "ok": True, "manifest_sha256": v.manifest_sha256,
                "blocklist": v.manifest.payload.blocklist, "files": len(v.manifest.payload.files),
                "saes": {s.hook_point: s.ref or s.weights_sha256 for s in v.manifest.payload.saes},
                "registry_checked": v.registry_checked, "deployment_id": v.deployment_id,
                "trusted_by": v.trusted_by, "notes": v.notes}
        if as_json:
            print_json(info)
            return
        signed = f"signed by a trusted key ({v.trusted_by})" if v.trusted_by else "signature valid but UNTRUSTED"
        click.echo(f"ok: {info['files']} files verified, {signed}, blocklist {info['blocklist']}, "
                   f"SAEs at {', '.join(info['saes'])}"
                   + (f", approvals current (deployment {v.deployment_id})" if v.registry_checked else ""))
        for note in v.notes:
            click.echo(f"note: {note}", err=note.startswith("UNTRUSTED"))

    @deploy.command("promote")
    @click.argument("deployment_id", type=click.IntRange(min=1))
    @click.option("--alias", default="production", show_default=True, help="The MLflow alias to move.")
    @click.option("--evaluation", "evaluation_id", type=click.IntRange(min=1), default=None,
                  help="The recorded evaluation it rests on (default: the latest of this deployment).")
    @actor_option
    @json_option
    def promote(deployment_id: int, alias: str, evaluation_id: int | None, actor: str | None, as_json: bool) -> None:
        """Make a deployment `production`: verified against the registry (the MLflow Model's own copy) and
        evaluated; the promotion is audited, then MLflow's alias moves."""
        from governance.enforcement.promote import promote as do_promote

        done = do_promote(open_store(), deployment_id, resolve_actor(actor), alias=alias, evaluation_id=evaluation_id)
        info = {"promotion": done.record.to_json(), "evaluation_id": done.evaluation.id,
                "manifest_sha256": done.verified_manifest_sha256, "mlflow_model": done.mlflow_model}
        if as_json:
            print_json(info)
            return
        click.echo(f"deployment {deployment_id} promoted to {alias} (promotion {done.record.id}, evaluation "
                   f"{done.evaluation.id})" + (f": {done.mlflow_model}" if done.mlflow_model else " (no MLflow Model)"))

    @deploy.command("serve")
    @click.argument("model")
    @click.option("--host", default="127.0.0.1", show_default=True)
    @click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
    @click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True)
    def serve(model: str, host: str, port: int, workers: int) -> None:
        """Serve a deployment MLflow Model (models:/deployment-NAME@production, or a model folder) with
        `mlflow models serve`, after checking its code, verifying the deployment and, for an alias, the
        registry's promotion, on a private copy (plain `mlflow models serve` trusts the artifact store)."""
        from governance.tracking.deployment_model import serve as do_serve

        raise SystemExit(do_serve(model, host=host, port=port, workers=workers))

    @deploy.command("status")
    @click.option("--alias", default="production", show_default=True)
    @json_option
    def status(alias: str, as_json: bool) -> None:
        """Where each deployment model's alias points, against the registry's last promotion; exit 1 on a
        mismatch (an alias moved in MLflow by hand)."""
        from governance.enforcement.promote import alias_status

        rows = alias_status(open_store(), alias)
        if as_json:
            print_json(rows)
        else:
            for r in rows:
                state = "ok" if r["ok"] else "MISMATCH"
                registry = (f"registry promoted version {r['promoted_version']} (deployment {r['deployment_id']}, by "
                            f"{r['promoted_by']})" if r["promotion_id"] else "never promoted by the registry")
                click.echo(f"{r['model']}@{alias}: {registry}, MLflow points at {r['mlflow_version']}: {state}")
            if not rows:
                click.echo(f"no deployment was promoted to {alias}")
        if not all(r["ok"] for r in rows):
            raise SystemExit(1)
