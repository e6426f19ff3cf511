"""Building and verifying deployment folders (the layout: governance.formats.deployment).

A deployment is a normal diffusers folder (`save_pretrained` layout) plus `saegov/`:
`sae/` (cfg.json + sae.safetensors), `blocklist.json`, and `manifest.json` (sha256 of every
other file, base model hash, SAE, blocklist name@version, approvals, generation defaults,
built by/at) signed with Ed25519. Loading verifies all of it and refuses on any mismatch.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from governance.common.errors import FormatError, GovernanceError
from governance.common.hashing import sha256_bytes, sha256_file
from governance.common.timeutil import iso_seconds
from governance.common.workspace import ENV_TRUSTED_KEYS, workspace_relative
from governance.enforcement import signing
from governance.formats.blocklist import Approval, BlockedConcept, BlocklistSpec, SaeRef, read_blocklist, write_blocklist
from governance.formats.deployment import (
    MANIFEST, SAEGOV_DIR, DeployedSae, DeploymentManifest, GenerationDefaults, ManifestPayload, Signature,
    read_deployment_manifest, sae_dir, write_deployment_manifest,
)

DEFAULT_GUIDANCE = 7.5


class DeploymentError(GovernanceError):
    """A deployment that cannot be built, or that fails verification (one-line message)."""


@dataclass
class VerifiedDeployment:
    path: Path
    manifest: DeploymentManifest
    manifest_sha256: str
    blocklist: BlocklistSpec
    registry_checked: bool
    deployment_id: int | None = None
    trusted_by: str | None = None  # where the signing key's trust came from; None: untrusted
    notes: list[str] = field(default_factory=list)


def _hash_tree(root: Path) -> dict[str, str]:
    """sha256 of every file but the manifest. A symbolic link anywhere (to a file inside or
    outside the folder) is refused: what is verified must be what is in the folder."""
    if root.is_symlink():
        raise DeploymentError(f"{root} is a symbolic link; give the deployment folder itself")
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            raise DeploymentError(f"{rel} is a symbolic link; a deployment may not contain links")
        if p.is_file() and rel != MANIFEST:
            out[rel] = sha256_file(p)
    return out


def blocklist_spec_from_record(bl: Any, saes: dict[str, Any]) -> BlocklistSpec:
    """The deployment's blocklist.json from a registry BlocklistVersionRecord and its SAERecords
    (by hook point)."""
    entries = []
    for e in bl.entries:
        entries.append(BlockedConcept(
            concept=e.concept, kind=e.concept_kind, mapping_id=e.mapping_id, hook_point=e.hook_point,
            gamma=e.gamma, scheduler=e.scheduler, num_steps=e.num_steps,
            approval=Approval(review_id=e.approval_review_id, by=e.approved_by,
                              at=e.approved_at.isoformat() if e.approved_at else None,
                              justification=getattr(e, "approval_justification", None)),
            timesteps=e.timesteps,
        ))
    return BlocklistSpec(
        name=bl.name, version=bl.version, content_sha256=bl.content_sha256,
        saes=[SaeRef(id=r.id, ref=r.ref, hook_point=h, weights_sha256=r.weights_sha256) for h, r in sorted(saes.items())],
        entries=entries,
    )


def build_deployment(store: Any, blocklist: str, version: int | None, model: str, out: Path, actor: str,
                     guidance: float | None = None, error_mode: str = "faithful",
                     track: bool = True) -> tuple[Path, Any]:
    """Build `out` from a published blocklist; returns (path, DeploymentRecord). `track=False`
    logs no MLflow run and registers no MLflow model version."""
    from governance.basemodel.loading import load_pipeline, model_folder_hash
    from governance.sae.model import TopKSAE
    from governance.tracking.artifacts import sae_folder

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DeploymentError(f"output folder {out} exists and is not empty")
    # Refused before minutes of work, not after: the role, this person's deployment key, and the
    # key the record will be signed with.
    from registry.workflow import require_role

    who = store.check_actor(actor)
    require_role(who.name, who.role, "deployment.record")
    key = signing.registered_own_key(store, owner=actor)
    store.check_actor(actor, "deployment.record")
    bl = store.get_blocklist(blocklist, version)
    if bl.state != "published":
        raise DeploymentError(f"blocklist {bl.ref} is {bl.state}; only published versions can be deployed")
    if not bl.entries:
        raise DeploymentError(f"blocklist {bl.ref} is empty")
    for e in bl.entries:
        if e.mapping_state != "approved" or e.approval_review_id is None:
            raise DeploymentError(f"mapping {e.mapping_id} ({e.concept}) of {bl.ref} is {e.mapping_state}, not approved")
    schedulers = {(e.scheduler, e.num_steps) for e in bl.entries}
    if len(schedulers) != 1:
        raise DeploymentError(f"mappings of {bl.ref} were scored with different schedules: {sorted(schedulers)}")
    scheduler_name, num_steps = schedulers.pop()
    sched_cls = scheduler_class(scheduler_name)
    if track:
        from governance.tracking.runs import check_tracking

        check_tracking()  # an unreachable MLflow server is refused before minutes of work, not after
    sae_recs = {x.hook_point: store.get_sae(x.sae_id) for x in bl.saes}
    saes = {}
    for hook, rec in sae_recs.items():
        try:
            saes[hook] = TopKSAE.load(sae_folder(rec), expected_sha256=rec.weights_sha256)
        except GovernanceError as exc:
            raise DeploymentError(f"SAE {rec.ref}: {exc}") from None
    pipe, folder = load_pipeline(model)
    base_hash = model_folder_hash(folder)
    for hook, rec in sae_recs.items():
        if rec.base_model_hash and rec.base_model_hash != base_hash:
            raise DeploymentError(f"model {model} (hash {base_hash[:12]}) is not the base model of SAE {rec.ref} "
                                  f"(hash {rec.base_model_hash[:12]})")
        from governance.basemodel.hooks import block_channels, resolve_hook_point

        channels = block_channels(resolve_hook_point(pipe.unet, hook))  # refused before writing
        if channels is not None and channels != saes[hook].d_in:
            raise DeploymentError(f"SAE {rec.ref} reads {saes[hook].d_in} channels, {hook} of {model} "
                                  f"outputs {channels}")
    try:
        pipe.scheduler = sched_cls.from_config(pipe.scheduler.config)
    except Exception as exc:  # noqa: BLE001 - a scheduler that rejects this model's config
        raise DeploymentError(f"scheduler {scheduler_name!r} cannot be configured for {model}: {exc}") from None
    spec = blocklist_spec_from_record(bl, sae_recs)
    spec = _with_justifications(store, spec)
    if guidance is None:
        guidance = _scored_guidance(store, bl) or DEFAULT_GUIDANCE

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        from governance.enforcement.component import mark_saegov_only

        mark_saegov_only(tmp)  # plain diffusers refuses the folder; before the manifest hashes model_index.json
        sg = tmp / SAEGOV_DIR
        sg.mkdir()
        for hook, sae in saes.items():
            if sae.save(tmp / sae_dir(hook)) != sae_recs[hook].weights_sha256:
                raise DeploymentError(f"SAE {sae_recs[hook].ref} re-saved with a different hash (dtype or layout changed)")
        write_blocklist(sg, spec)
        deployed = [DeployedSae(**ref.model_dump(), path=sae_dir(ref.hook_point)) for ref in spec.saes]
        payload = ManifestPayload(
            files=_hash_tree(tmp), base_model_hash=base_hash, saes=deployed, blocklist=bl.ref,
            blocklist_sha256=bl.content_sha256, mapping_ids=[e.mapping_id for e in bl.entries],
            approval_review_ids=[int(e.approval_review_id) for e in bl.entries],
            defaults=GenerationDefaults(scheduler=scheduler_name, num_inference_steps=num_steps, guidance_scale=guidance),
            error_mode=error_mode, built_by=actor, built_at=iso_seconds(),
        )
        signature = Signature(public_key=signing.public_hex(key), value=signing.sign(key, payload.signed_message()))
        manifest = DeploymentManifest(payload=payload, signature=signature)
        manifest_bytes = write_deployment_manifest(tmp, manifest)
        mlflow_version = (_log_to_mlflow(tmp, bl, list(sae_recs.values()), base_hash, actor, payload.defaults,
                                         _example_prompt(store, bl)) if track else None)
        try:
            record = store.record_deployment(
                blocklist=bl.name, version=bl.version, path=workspace_relative(out),
                manifest_sha256=sha256_bytes(manifest_bytes), base_model_hash=base_hash, actor=actor,
                mlflow_model_version=mlflow_version,
                details={"model": str(model), "defaults": payload.defaults.model_dump(),
                         "public_key": manifest.signature.public_key,
                         "saes": {h: r.ref for h, r in sorted(sae_recs.items())},
                         **({"mlflow_model": f"models:/{_model_name(bl.name)}/{mlflow_version}"} if mlflow_version else {})},
            )
        except BaseException:
            if mlflow_version:  # no registered version the registry does not know
                _unregister(bl.name, mlflow_version)
            raise
        if out.exists():
            out.rmdir()  # empty (checked above)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out, record


def _with_justifications(store: Any, spec: BlocklistSpec) -> BlocklistSpec:
    entries = []
    for e in spec.entries:
        if e.mapping_id is not None and e.approval.justification is None:
            m = store.get_mapping(e.mapping_id, with_features=False)
            app = m.approval
            if app is not None:
                e = e.model_copy(update={"approval": e.approval.model_copy(update={"justification": app.justification})})
        entries.append(e)
    return spec.model_copy(update={"entries": entries})


def _scored_guidance(store: Any, bl: Any) -> float | None:
    """The guidance scale the mappings were scored with, when their evidence records it."""
    for e in bl.entries:
        m = store.get_mapping(e.mapping_id, with_features=False)
        for ev in m.evidence:
            if isinstance(ev, dict) and ev.get("kind") == "scoring_params":
                try:
                    return float(json.loads(ev["ref"]).get("guidance"))
                except (ValueError, TypeError, KeyError):
                    continue
    return None


def _log_to_mlflow(folder: Path, bl: Any, saes: list[Any], base_hash: str, actor: str, defaults: Any,
                   example_prompt: str) -> str | None:
    """A run with the deployment as an MLflow Model (governance.tracking.deployment_model),
    registered as a new version of `deployment-NAME` with the alias `candidate`: `production`
    moves only through `saegov deploy promote`."""
    import tempfile

    from governance.tracking.deployment_model import MODEL_PATH, model_name, save_deployment_model
    from governance.tracking.runs import Tracker

    sae_tags = {"saegov.sae_ids": ",".join(str(r.id) for r in saes),
                "saegov.saes": ",".join(f"{r.hook_point}={r.ref}" for r in saes)}
    with Tracker("deployment", base_hash, run_name=f"deploy-{bl.ref}",
                 tags={"saegov.blocklist": bl.ref, "saegov.built_by": actor, **sae_tags}) as tr:
        tr.log_params({"blocklist": bl.ref, "saes": {r.hook_point: r.ref for r in saes}, "base_model_hash": base_hash})
        with tempfile.TemporaryDirectory(prefix="saegov-model-") as tmp:
            model = save_deployment_model(folder, Path(tmp) / MODEL_PATH, defaults, example_prompt)
            tr.log_artifacts(model, MODEL_PATH)
        return tr.register_model_version(model_name(bl.name), MODEL_PATH, alias="candidate",
                                         tags={"saegov.blocklist": bl.ref, **sae_tags})


def _model_name(blocklist: str) -> str:
    from governance.tracking.deployment_model import model_name

    return model_name(blocklist)


def _unregister(blocklist: str, version: str) -> None:
    from mlflow.tracking import MlflowClient

    from governance.tracking.runs import tracking_uri

    uri = tracking_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        mv = client.get_model_version(_model_name(blocklist), version)
        client.delete_model_version(_model_name(blocklist), version)
        if mv.run_id:
            client.delete_run(mv.run_id)
    except Exception:  # noqa: BLE001 - the registry's error is the one to report
        pass


def _example_prompt(store: Any, bl: Any) -> str:
    for e in bl.entries:
        try:
            prompts = store.get_concept(e.concept).prompts
        except Exception:  # noqa: BLE001 - only the input example's text depends on it
            prompts = []
        if prompts:
            return str(prompts[0])
    return f"a {bl.entries[0].concept}"


def scheduler_class(name: str) -> Any:
    """The diffusers scheduler class a mapping names; refused unless it is one."""
    import diffusers
    from diffusers import SchedulerMixin

    cls = getattr(diffusers, name, None) if name.isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise DeploymentError(f"{name!r} in the mappings is not a diffusers scheduler")
    return cls


def read_manifest(path: Path) -> tuple[DeploymentManifest, bytes]:
    try:
        return read_deployment_manifest(path)
    except FormatError as exc:
        raise DeploymentError(str(exc)) from None


def resolve_trust(store: Any | None, trusted_keys: Collection[str] | None = None,
                  trusted_keys_file: str | Path | None = None) -> dict[str, str]:
    """Public key -> where its trust comes from: the keys given, the trust store file
    (`trusted_keys_file`, else `SAEGOV_TRUSTED_KEYS`), and the registry's registered, unrevoked
    deployment keys when a registry is given."""
    keys: dict[str, str] = {k: "given" for k in trusted_keys or ()}
    file = trusted_keys_file or os.environ.get(ENV_TRUSTED_KEYS) or None
    if file:
        from governance.formats.trusted_keys import read_trusted_keys

        try:
            keys.update({k: f"trust store {file}" for k in read_trusted_keys(Path(file)).public_keys()})
        except FormatError as exc:
            raise DeploymentError(f"trusted keys: {exc}") from None
    if store is not None:
        keys.update({k: f"registry key of {r.actor}" for k, r in store.trusted_signing_keys().items()})
    return keys


def verify_deployment(path: str | Path, store: Any | None = None, check_registry: bool = True,
                      trusted_keys: Collection[str] | None = None, trusted_keys_file: str | Path | None = None,
                      allow_untrusted: bool = False) -> VerifiedDeployment:
    """Check every hash, the signature, that the signing key is trusted, and (unless
    `check_registry` is False, an explicit choice) the approvals in the registry.

    Fails closed: a registry that cannot be found when approvals are to be checked, a key that
    no trust store, given key or registry vouches for (unless `allow_untrusted`), a symbolic
    link anywhere in the folder.
    """
    path = Path(path)
    manifest, raw = read_manifest(path)
    p = manifest.payload
    try:
        message = manifest.signed_message()
    except FormatError as exc:
        raise DeploymentError(str(exc)) from None
    if not signing.verify(manifest.signature.public_key, message, manifest.signature.value):
        raise DeploymentError(f"{MANIFEST}: signature does not match its contents")
    actual = _hash_tree(path)
    for rel, digest in p.files.items():
        if rel not in actual:
            raise DeploymentError(f"file {rel} is missing")
        if actual[rel] != digest:
            raise DeploymentError(f"file {rel} was modified (sha256 mismatch)")
    extra = sorted(set(actual) - set(p.files))
    if extra:
        raise DeploymentError(f"file {extra[0]} is not in the manifest")
    try:
        blocklist = read_blocklist(path / SAEGOV_DIR)
    except FormatError as exc:
        raise DeploymentError(str(exc)) from None
    if sorted(blocklist.hook_points()) != sorted(x.hook_point for x in p.saes):
        raise DeploymentError(f"{MANIFEST}: its SAEs ({', '.join(sorted(x.hook_point for x in p.saes))}) are not "
                              f"the blocklist's ({', '.join(sorted(blocklist.hook_points()))})")
    for x in p.saes:
        weights = p.files[f"{x.path}/sae.safetensors"]
        recorded = blocklist.sae_at(x.hook_point).weights_sha256
        if (x.weights_sha256 and weights != x.weights_sha256) or (recorded and weights != recorded):
            raise DeploymentError(f"the SAE at {x.hook_point} is not the one its blocklist names (sha256 mismatch)")
    result = VerifiedDeployment(path=path, manifest=manifest, manifest_sha256=sha256_bytes(raw),
                                blocklist=blocklist, registry_checked=False)
    if check_registry and store is None:
        from registry.store import Store

        store = Store.open_if_present()
        if store is None:
            raise DeploymentError("no registry found (SAEGOV_HOME / SAEGOV_DATABASE_URL): the approvals cannot be "
                                  "re-checked; verify against the registry, or accept that explicitly (--offline)")
    trust = resolve_trust(store if check_registry else None, trusted_keys, trusted_keys_file)
    signer = manifest.signature.public_key
    if signer in trust:
        result.trusted_by = trust[signer]
    elif allow_untrusted:
        result.notes.append(f"UNTRUSTED: signed by key {signer[:16]}..., which no trust store or registry vouches for "
                            "(--allow-untrusted)")
    elif not trust:
        raise DeploymentError("no trusted keys to check the signature against: give --trusted-keys FILE (`saegov key "
                              "export`), set SAEGOV_TRUSTED_KEYS, or verify against the registry")
    else:
        raise DeploymentError(f"{MANIFEST}: signed by key {signer[:16]}..., which is not a trusted deployment key "
                              "(not registered, revoked, or not in the trust store)")
    if check_registry:
        _check_registry(store, result)
    else:
        result.notes.append("offline: approvals were not re-checked against the registry")
    return result


def _blocklist_difference(expected: BlocklistSpec, actual: BlocklistSpec) -> str | None:
    """What differs between the registry's blocklist and a deployment's blocklist.json (the
    entries that are enforced, not only a hash field), or None."""
    if (expected.name, expected.version) != (actual.name, actual.version):
        return f"it is {actual.name}@{actual.version}"
    def sae_key(s: SaeRef) -> tuple[str, str | None]:
        return s.hook_point, s.weights_sha256
    if sorted(map(sae_key, expected.saes)) != sorted(map(sae_key, actual.saes)):
        return "its SAEs differ"

    def entry_key(e: BlockedConcept) -> str:
        d = e.model_dump(mode="json", exclude={"approval"})
        d["approval_review_id"] = e.approval.review_id
        return json.dumps(d, sort_keys=True)
    mine = sorted(map(entry_key, expected.entries))
    theirs = sorted(map(entry_key, actual.entries))
    if mine != theirs:
        missing = [json.loads(k)["concept"] for k in mine if k not in theirs]
        return f"entries differ ({'changed or missing: ' + ', '.join(missing) if missing else 'extra entries'})"
    return None


def _check_registry(store: Any, result: VerifiedDeployment) -> None:
    from registry.errors import RegistryError

    p = result.manifest.payload
    name, _, version = p.blocklist.rpartition("@")
    try:
        bl = store.get_blocklist(name, int(version))
    except RegistryError as exc:
        raise DeploymentError(f"registry does not know blocklist {p.blocklist}: {exc}") from None
    if bl.content_sha256 != p.blocklist_sha256 or bl.content_sha256 != result.blocklist.content_sha256:
        raise DeploymentError(f"blocklist {p.blocklist} in the registry differs from the deployment's")
    expected = blocklist_spec_from_record(bl, {x.hook_point: store.get_sae(x.sae_id) for x in bl.saes})
    difference = _blocklist_difference(expected, result.blocklist)
    if difference:
        raise DeploymentError(f"blocklist.json is not blocklist {p.blocklist} of the registry: {difference}")
    for e in bl.entries:
        if e.mapping_state != "approved":
            raise DeploymentError(f"approval of mapping {e.mapping_id} ({e.concept}) was {e.mapping_state} "
                                  f"(review {e.approval_review_id})")
    if bl.state != "published":
        raise DeploymentError(f"blocklist {p.blocklist} is {bl.state} in the registry")
    deployments = [d for d in store.list_deployments() if d.manifest_sha256 == result.manifest_sha256]
    if not deployments:
        raise DeploymentError("this deployment's manifest is not recorded in the registry")
    result.deployment_id = deployments[-1].id
    result.registry_checked = True
