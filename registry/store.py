"""The store: every read and write of the registry. One transaction per call; every write locks
the audit chain head first (so writers are serialised and the chain cannot fork) and appends its
audit event in the same transaction. Returns detached pydantic records (registry.records).

Used by the CLI and, from Python, by training / scoring / deployment code:

    store = Store.open()                       # SAEGOV_DATABASE_URL / SAEGOV_HOME; checks schema
    sae = store.register_sae_version(name=..., hook_point=..., ..., actor="alice")
    m = store.create_mapping(sae.id, "red", spec, actor="alice")
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, func, select
from sqlalchemy import text as sa_text
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from governance.common.errors import FormatError, first_line
from governance.common.hashing import sha256_text
from governance.common.jsonio import canonical_json
from governance.common.timeutil import utcnow
from governance.formats.checkpoint import Checkpoint
from governance.formats.mapping import CHOSEN_WITH, FeatureEntry, MappingSpec
from governance.formats.validation import MAX_DESCRIPTION, check_name, read_json_model
from registry import audit, signatures, workflow
from registry.artifacts import inspect_sae_folder
from registry.policy import ApprovalPolicy, evidence_shortfalls, sanity_shortfalls
from registry.db import UPGRADE_HINT, check_schema, database_url, make_engine, sqlite_file
from registry.errors import (
    AlreadyExists,
    AuditVerificationError,
    DatabaseUnreachable,
    InvalidTransition,
    NotFound,
    PermissionDenied,
    SchemaOutOfDate,
    ValidationFailed,
)
from registry.models import (
    CONCEPT_KINDS,
    MAPPING_STATES,
    ROLES,
    Actor,
    ApprovalPolicyRow,
    AuditEvent,
    AuditHead,
    BaseModelRow,
    BlocklistRow,
    BlocklistDraftEntry,
    BlocklistVersion,
    BlocklistVersionEntry,
    BlocklistVersionSae,
    Concept,
    Deployment,
    DeploymentEvaluation,
    DeploymentPromotion,
    FeatureMapping,
    Generation,
    MappingFeature,
    Review,
    SAEVersion,
    SigningKey,
)
from registry.records import (
    EvaluationRecord,
    PromotionRecord,
    ActorRecord,
    AuditEventRecord,
    BaseModelRecord,
    BlocklistEntryRecord,
    BlocklistRecord,
    BlocklistSaeRecord,
    BlocklistVersionRecord,
    BlocklistVersionSummary,
    ConceptRecord,
    DeploymentRecord,
    GenerationRecord,
    MappingRecord,
    ReviewRecord,
    SAERecord,
    SigningKeyRecord,
)

SAERef = int | str  # id, "ID", "name@version" or "name" (latest version)
_MAX_ROW_ID = 2**63 - 1  # the largest INTEGER SQLite and PostgreSQL BIGINT store
_ACTOR_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


Keyring = Callable[[str], "Ed25519PrivateKey | None"]


def personal_keyring(actor: str) -> Ed25519PrivateKey | None:
    """The key in this person's config folder (`SAEGOV_CONFIG_DIR`), if they made one
    (`saegov key show`): whoever runs the process signs with it, whatever name they claim."""
    from governance.common.personal_key import load_key_if_present

    return load_key_if_present()


@dataclass
class _Tx:
    session: Session
    head: AuditHead
    actor: Actor
    signer: Ed25519PrivateKey | None = None

    def log(self, action: str, subject: str, payload: dict[str, Any]) -> None:
        audit.append_event(self.session, self.head, self.actor.name, action, subject, payload, signer=self.signer)

    def log_many(self, events: Sequence[tuple[str, str, dict[str, Any]]]) -> None:
        audit.append_events(self.session, self.head, self.actor.name, events, signer=self.signer)


@dataclass(frozen=True)
class NewGeneration:
    """One image to record (Store.record_generations)."""

    deployment_id: int
    prompt_sha256: str
    seed: int
    trace: dict[str, Any]


def _valid_name(name: str, what: str) -> str:
    try:
        return check_name(name, what)
    except FormatError as exc:
        raise ValidationFailed(str(exc)) from None


def _row_id(value: Any, what: str) -> int:
    """A row id from user input; not an integer, or outside what the database can hold, is a
    one-line NotFound (never a driver overflow)."""
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise NotFound(f"bad {what} id {value!r}") from None
    if not 0 < n <= _MAX_ROW_ID:
        raise NotFound(f"unknown {what} {value}")
    return n


def _check_sha256(value: str, what: str) -> str:
    value = value.strip().lower()
    if not _SHA256_HEX.fullmatch(value):
        raise ValidationFailed(f"{what} must be 64 hex characters (sha256)")
    return value


class Store:
    def __init__(self, engine: Engine, keyring: Keyring | None = None) -> None:
        """`keyring(actor)` gives the private key this process holds for an actor (default: the
        personal key of `SAEGOV_CONFIG_DIR`); an actor with a registered key acts only through it."""
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self.keyring: Keyring = keyring or personal_keyring

    @classmethod
    def open(cls, url: str | None = None, check: bool = True, keyring: Keyring | None = None) -> Store:
        url = url or database_url()
        if check and (path := sqlite_file(url)) is not None and not path.exists():
            # Checked before connecting: SQLite would create an empty file (and make_engine its folder).
            raise SchemaOutOfDate(f"no registry at {path}; {UPGRADE_HINT}")
        engine = make_engine(url)
        if check:
            check_schema(engine)
        return cls(engine, keyring=keyring)

    @classmethod
    def open_if_present(cls) -> Store | None:
        """The workspace's registry when one is configured (SAEGOV_DATABASE_URL, or a
        registry.db in SAEGOV_HOME); None when none is ("not checked" is then stated by the
        caller). A configured registry that cannot be used (unreachable, stale schema) raises:
        checks that depend on it fail closed rather than being skipped."""
        import os

        from governance.common.workspace import ENV_DATABASE_URL, workspace_home

        if not os.environ.get(ENV_DATABASE_URL) and not (workspace_home() / "registry.db").is_file():
            return None
        return cls.open()

    def close(self) -> None:
        self.engine.dispose()

    # --- transactions ------------------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[Session]:
        try:
            with self._sessions() as s, s.begin():
                yield s
        except OperationalError as exc:
            raise DatabaseUnreachable(f"database error: {first_line(exc)}") from None

    @contextmanager
    def _write(self, actor: str | None, action: str) -> Iterator[_Tx]:
        """One transaction: lock the chain head, resolve and authorise the actor, run, commit."""
        try:
            with self._sessions() as s, s.begin():
                head = audit.lock_head(s)
                row = self._actor_row(s, actor)
                workflow.require_role(row.name, row.role, action)
                yield _Tx(s, head, row, self._signer(s, row, action))
        except IntegrityError as exc:
            raise AlreadyExists(f"conflict: {first_line(exc)}") from None
        except OperationalError as exc:
            raise DatabaseUnreachable(f"database error: {first_line(exc)}") from None

    @staticmethod
    def _actor_row(s: Session, name: str | None) -> Actor:
        if not name:
            raise PermissionDenied("no actor given: pass --actor NAME or set SAEGOV_ACTOR")
        row = s.scalar(select(Actor).where(Actor.name == name))
        if row is None:
            raise PermissionDenied(f"unknown actor {name!r}")
        if row.disabled_at is not None:
            raise PermissionDenied(f"actor {name!r} was disabled on {row.disabled_at:%Y-%m-%d}")
        return row

    def _signer(self, s: Session, actor: Actor, action: str) -> Ed25519PrivateKey | None:
        """The key that signs this action, decided from the state before it (so registering a
        key cannot vouch for the action that registers it). An actor with a registered key acts
        only through that key: a name in SAEGOV_ACTOR or --actor is not enough."""
        table = set(s.scalars(select(SigningKey.public_key).where(SigningKey.actor_id == actor.id,
                                                                  SigningKey.revoked_at.is_(None))))
        logged = _logged_active_keys(s, actor.name)
        key = self.keyring(actor.name)
        public = signatures.public_hex(key) if key is not None else None
        # Either record saying the actor has a key is enough to require it (a key row deleted by
        # SQL does not turn them back into a bare name); the key used must be in both.
        if table | logged:
            if public not in table | logged:
                fix = (f"`saegov key show` creates one; an admin registers it with `saegov key register {actor.name} "
                       "--public-key KEY`" if public is None else
                       f"if it is {actor.name}'s new key, an admin runs `saegov key register {actor.name} "
                       f"--public-key {public}`")
                held = "holds no key" if public is None else f"holds key {public[:16]}..., not theirs"
                raise PermissionDenied(f"{actor.name!r} signs with a registered key and this config folder {held}: "
                                       f"only {actor.name} can act as {actor.name} ({fix})")
            if public not in table & logged:
                raise PermissionDenied(f"the key {str(public)[:16]}... of {actor.name!r} is registered in the key table "
                                       "or in the audit log but not in both: refused (run `saegov audit verify`)")
            return key
        if _logged_signatures_required(s):
            raise PermissionDenied(f"the approval policy requires signed actions and {actor.name!r} has no registered "
                                   f"key: an admin runs `saegov key register {actor.name} --public-key KEY` "
                                   "(KEY is what `saegov key show` prints for them)")
        return None

    def check_actor(self, name: str | None, action: str | None = None) -> ActorRecord:
        """Resolve an identity (raises `PermissionDenied` for a missing or unknown one). With
        `action`, also everything `_write` would refuse before it: the role, and the key this
        process must hold to act as them (so long work is refused before it starts)."""
        with self._read() as s:
            row = self._actor_row(s, name)
            if action is not None:
                workflow.require_role(row.name, row.role, action)
                self._signer(s, row, action)
            return _actor(row)

    # --- actors ------------------------------------------------------------------------------

    def add_actor(self, name: str, role: str, actor: str | None) -> ActorRecord:
        """Add an actor. The very first actor needs no identity and always becomes admin."""
        name = name.strip()
        if not name:
            raise ValidationFailed("actor name must not be empty")
        if not _ACTOR_NAME.fullmatch(name):
            # Look-alikes (a Cyrillic o, a zero-width space) and control or escape characters
            # would print as another actor's name.
            raise ValidationFailed(f"actor name {name[:64]!r} must be 1-64 ASCII letters, digits, '.', '_' or '-', "
                                   "starting with a letter")
        if role not in ROLES:
            raise ValidationFailed(f"unknown role {role!r}; one of {', '.join(ROLES)}")
        try:
            with self._sessions() as s, s.begin():
                head = audit.lock_head(s)
                first = s.scalar(select(func.count()).select_from(Actor)) == 0
                if first:
                    creator, role = None, "admin"
                    signer = None
                else:
                    creator = self._actor_row(s, actor)
                    workflow.require_role(creator.name, creator.role, "actor.add")
                    signer = self._signer(s, creator, "actor.add")
                if s.scalar(select(Actor).where(Actor.name == name)):
                    raise AlreadyExists(f"actor {name!r} already exists")
                row = Actor(name=name, role=role, created_by_id=creator.id if creator else None)
                s.add(row)
                s.flush()
                audit.append_event(s, head, creator.name if creator else name, "actor.add",
                                   f"actor:{name}", {"name": name, "role": role, "first": first}, signer=signer)
                return _actor(row)
        except IntegrityError as exc:
            raise AlreadyExists(f"conflict: {first_line(exc)}") from None

    def disable_actor(self, name: str, actor: str | None, reason: str) -> ActorRecord:
        """An admin disables an account: it acts no more (so it records no new deployment; those
        it recorded still verify against the registry), and `key export` leaves its keys out of
        offline trust stores. Revoke a key (`revoke_signing_key`) to distrust what it signed."""
        reason = workflow.require_justification(reason)
        with self._write(actor, "actor.disable") as tx:
            s = tx.session
            row = self._actor_row(s, name)
            if row.id == tx.actor.id:
                raise ValidationFailed("an admin cannot disable their own account")
            row.disabled_at = utcnow()
            s.flush()
            tx.log("actor.disable", f"actor:{name}", {"name": name, "reason": reason})
            return _actor(row)

    def set_actor_role(self, name: str, role: str, actor: str | None, reason: str) -> ActorRecord:
        """An admin changes an account's role (audited)."""
        reason = workflow.require_justification(reason)
        if role not in ROLES:
            raise ValidationFailed(f"unknown role {role!r}; one of {', '.join(ROLES)}")
        with self._write(actor, "actor.role") as tx:
            s = tx.session
            row = self._actor_row(s, name)
            if row.role == role:
                raise ValidationFailed(f"actor {name!r} is already {role}")
            if row.id == tx.actor.id:
                raise ValidationFailed("an admin cannot change their own role")
            old, row.role = row.role, role
            s.flush()
            tx.log("actor.role", f"actor:{name}", {"name": name, "from": old, "role": role, "reason": reason})
            return _actor(row)

    def list_actors(self) -> list[ActorRecord]:
        with self._read() as s:
            return [_actor(a) for a in s.scalars(select(Actor).order_by(Actor.id))]

    # --- signing keys ------------------------------------------------------------------------

    def register_signing_key(self, owner: str, public_key: str, actor: str | None,
                             purpose: str = "deployment") -> SigningKeyRecord:
        """An admin registers `owner`'s public key: deployments it signs become trusted."""
        public_key = _check_public_key(public_key)
        with self._write(actor, "key.register") as tx:
            s = tx.session
            person = self._actor_row(s, owner)
            if s.scalar(select(SigningKey).where(SigningKey.public_key == public_key)):
                raise AlreadyExists(f"key {public_key[:16]}... is already registered")
            row = SigningKey(public_key=public_key, purpose=purpose, actor_id=person.id, registered_by_id=tx.actor.id)
            s.add(row)
            s.flush()
            tx.log("key.register", f"key:{public_key}", {"id": row.id, "public_key": public_key,
                                                         "purpose": purpose, "owner": person.name})
            s.refresh(row)
            return _signing_key(row)

    def revoke_signing_key(self, public_key: str, actor: str | None, reason: str = "") -> SigningKeyRecord:
        """An admin revokes a key: nothing it signed is trusted from then on."""
        public_key = _check_public_key(public_key)
        with self._write(actor, "key.revoke") as tx:
            s = tx.session
            row = s.scalar(select(SigningKey).where(SigningKey.public_key == public_key))
            if row is None:
                raise NotFound(f"key {public_key[:16]}... is not registered")
            if row.revoked_at is not None:
                raise InvalidTransition(f"key {public_key[:16]}... was already revoked")
            row.revoked_at, row.revoked_by_id = utcnow(), tx.actor.id
            s.flush()
            tx.log("key.revoke", f"key:{public_key}", {"id": row.id, "public_key": public_key, "reason": reason})
            s.refresh(row)
            return _signing_key(row)

    def list_signing_keys(self) -> list[SigningKeyRecord]:
        with self._read() as s:
            return [_signing_key(k) for k in s.scalars(select(SigningKey).order_by(SigningKey.id))]

    def trusted_signing_keys(self, purpose: str = "deployment",
                             active_owners_only: bool = False) -> dict[str, SigningKeyRecord]:
        """Public key -> record, for the keys that are registered and not revoked both in the
        key table and in the audit log: a row inserted or un-revoked by SQL, without its
        `key.register` event (or despite a `key.revoke` one), is not trusted. (That the log
        itself is intact is `audit verify`'s to say.)"""
        with self._read() as s:
            events = s.execute(select(AuditEvent.action, AuditEvent.payload).where(AuditEvent.seq >= 1)
                               .where(AuditEvent.action.in_(("key.register", "key.revoke")))
                               .order_by(AuditEvent.seq)).all()
            logged: dict[str, bool] = {}
            for action, payload in events:
                try:
                    key = json.loads(payload).get("public_key")
                except ValueError:
                    continue
                if isinstance(key, str):
                    logged[key] = action == "key.register" and key not in logged
            rows = s.scalars(select(SigningKey).where(SigningKey.purpose == purpose,
                                                      SigningKey.revoked_at.is_(None)))
            return {r.public_key: _signing_key(r) for r in rows if logged.get(r.public_key)
                    and not (active_owners_only and r.actor.disabled_at is not None)}

    # --- base models -------------------------------------------------------------------------

    def register_base_model(self, name: str, source: str, content_hash: str,
                            actor: str | None) -> BaseModelRecord:
        content_hash = _check_sha256(content_hash, "base model content hash")
        with self._write(actor, "base_model.register") as tx:
            if tx.session.scalar(select(BaseModelRow).where(BaseModelRow.name == name)):
                raise AlreadyExists(f"base model {name!r} already exists")
            row = BaseModelRow(name=name, source=source, content_hash=content_hash,
                            created_by_id=tx.actor.id)
            tx.session.add(row)
            tx.session.flush()
            tx.log("base_model.register", f"base_model:{name}",
                   {"id": row.id, "name": name, "source": source, "content_hash": content_hash})
            return _base_model(row, tx.actor.name)

    def list_base_models(self) -> list[BaseModelRecord]:
        with self._read() as s:
            rows = s.execute(select(BaseModelRow, Actor.name).join(Actor, BaseModelRow.created_by_id == Actor.id)
                             .order_by(BaseModelRow.id))
            return [_base_model(b, n) for b, n in rows]

    def get_base_model(self, name: str) -> BaseModelRecord:
        with self._read() as s:
            row = s.scalar(select(BaseModelRow).where(BaseModelRow.name == name))
            if row is None:
                raise NotFound(f"unknown base model {name!r}")
            return _base_model(row, s.get(Actor, row.created_by_id).name)  # type: ignore[union-attr]

    # --- SAE versions ------------------------------------------------------------------------

    def register_sae_version(
        self, *, name: str, hook_point: str, d_in: int, n_latents: int, k: int,
        architecture: str, config: dict[str, Any], weights_uri: str, weights_sha256: str,
        actor: str | None, cfg_sha256: str | None = None, metrics: dict[str, Any] | None = None,
        base_model: str | None = None, activation_dataset_hash: str | None = None,
        mlflow_run_id: str | None = None, mlflow_model_version: str | None = None,
        version: int | None = None,
    ) -> SAERecord:
        """Register a new SAE version (version = next integer for `name` unless given)."""
        with self._write(actor, "sae.register") as tx:
            return self._register_sae(
                tx, name=name, hook_point=hook_point, d_in=d_in, n_latents=n_latents, k=k,
                architecture=architecture, config=config, weights_uri=weights_uri, weights_sha256=weights_sha256,
                cfg_sha256=cfg_sha256, metrics=metrics, base_model=base_model,
                activation_dataset_hash=activation_dataset_hash, mlflow_run_id=mlflow_run_id,
                mlflow_model_version=mlflow_model_version, version=version)

    def _register_sae(
        self, tx: _Tx, *, name: str, hook_point: str, d_in: int, n_latents: int, k: int,
        architecture: str, config: dict[str, Any], weights_uri: str, weights_sha256: str,
        cfg_sha256: str | None = None, metrics: dict[str, Any] | None = None,
        base_model: str | None = None, activation_dataset_hash: str | None = None,
        mlflow_run_id: str | None = None, mlflow_model_version: str | None = None,
        version: int | None = None,
    ) -> SAERecord:
        weights_sha256 = _check_sha256(weights_sha256, "weights sha256")
        _valid_name(name, "SAE")
        if min(d_in, n_latents, k) <= 0 or k > n_latents:
            raise ValidationFailed("d_in, n_latents and k must be positive, k <= n_latents")
        if not hook_point:
            raise ValidationFailed("a hook point is required")
        s = tx.session
        bm = None
        if base_model is not None:
            bm = s.scalar(select(BaseModelRow).where(BaseModelRow.name == base_model))
            if bm is None:
                raise NotFound(f"unknown base model {base_model!r}")
        latest = s.scalar(select(func.max(SAEVersion.version)).where(SAEVersion.name == name))
        if version is None:
            version = (latest or 0) + 1
        elif s.scalar(select(SAEVersion).where(SAEVersion.name == name, SAEVersion.version == version)):
            raise AlreadyExists(f"SAE {name}@{version} already exists")
        row = SAEVersion(
            name=name, version=version, hook_point=hook_point, d_in=d_in, n_latents=n_latents,
            k=k, architecture=architecture, config=config, weights_uri=weights_uri,
            weights_sha256=weights_sha256, cfg_sha256=cfg_sha256, metrics=metrics or {},
            base_model_id=bm.id if bm else None, activation_dataset_hash=activation_dataset_hash,
            mlflow_run_id=mlflow_run_id, mlflow_model_version=mlflow_model_version,
            created_by_id=tx.actor.id,
        )
        s.add(row)
        s.flush()
        rec = _sae(row, tx.actor.name, bm)
        tx.log("sae.register", f"sae:{row.id}", rec.to_json() | {"created_at": None})
        return rec

    def import_sae_folder(self, folder: str | Path, actor: str | None, *, hook_point: str | None = None,
                          name: str | None = None, base_model: str | None = None,
                          **lineage: Any) -> SAERecord:
        """Validate and register a reference-format SAE folder (cfg.json + sae.safetensors)."""
        return self.import_sae_folders(folder, actor, hook_point=hook_point, name=name, base_model=base_model,
                                       single=True, **lineage)[0]

    def import_sae_folders(self, folder: str | Path, actor: str | None, *, hook_point: str | None = None,
                           name: str | None = None, base_model: str | None = None, single: bool = False,
                           **lineage: Any) -> list[SAERecord]:
        """Register an SAE folder, or a folder holding one SAE sub-folder per hook point (the
        reference's published layout, e.g. `unet.up_blocks.1.attentions.1/`): one SAE version per
        hook point, all or none. A `unet.` prefix is dropped; with `base_model`, every hook point
        and width is checked against its UNet's config first."""
        from governance.formats.unet_config import read_unet_config, strip_unet_prefix

        folder = Path(folder)
        if not folder.is_dir():
            raise ValidationFailed(f"{folder}: not a directory")
        subs = sorted(p for p in folder.iterdir() if p.is_dir() and (p / "cfg.json").is_file())
        multi = not (folder / "cfg.json").is_file() and bool(subs)
        if multi and single:
            raise ValidationFailed(f"{folder} holds one SAE per hook point ({len(subs)}); import them all at once")
        if multi and hook_point:
            raise ValidationFailed(f"{folder} holds one SAE per hook point ({len(subs)}); --hookpoint names one SAE")
        plans = []
        for sub in subs if multi else [folder]:
            info = inspect_sae_folder(sub)
            hook = hook_point or info.config_raw.get("hookpoint") or info.config_raw.get("hook_point")
            if not hook and ("blocks" in info.folder.name or multi):  # reference layout: folder per hook point
                hook = info.folder.name
            if not hook:
                raise ValidationFailed("no hook point: pass --hookpoint (e.g. up_blocks.1.attentions.1)")
            hook = strip_unet_prefix(str(hook))
            sae_name = name or info.folder.name
            if multi:
                sae_name = f"{name or folder.name}.{hook}"
            plans.append((info, hook, sae_name))
        if base_model is not None:
            unet = read_unet_config(Path(self.get_base_model(base_model).source))
            for info, hook, _ in plans:
                unet.check_hook_point(hook, info.config.d_in)
        with self._write(actor, "sae.register") as tx:
            return [self._register_sae(
                tx, name=sae_name, hook_point=hook, d_in=info.config.d_in, n_latents=info.config.n_latents,
                k=info.config.k, architecture="batch-topk" if info.config.batch_topk else "topk",
                config=info.config_raw, weights_uri=info.folder.as_uri(), weights_sha256=info.weights_sha256,
                cfg_sha256=info.cfg_sha256, base_model=base_model, **lineage) for info, hook, sae_name in plans]

    def update_sae_lineage(self, sae: SAERef, actor: str | None, *,
                           metrics: dict[str, Any] | None = None, mlflow_run_id: str | None = None,
                           mlflow_model_version: str | None = None) -> SAERecord:
        """Fill in lineage known only after registration (metrics merged, MLflow IDs set once)."""
        with self._write(actor, "sae.register") as tx:
            row = self._sae_row(tx.session, sae)
            changes: dict[str, Any] = {}
            for field, value in (("mlflow_run_id", mlflow_run_id), ("mlflow_model_version", mlflow_model_version)):
                if value is None:
                    continue
                current = getattr(row, field)
                if current not in (None, value):
                    raise ValidationFailed(f"SAE {row.name}@{row.version} already has {field} {current!r}")
                setattr(row, field, value)
                changes[field] = value
            if metrics:
                row.metrics = {**(row.metrics or {}), **metrics}
                changes["metrics"] = metrics
            tx.session.flush()
            tx.log("sae.update", f"sae:{row.id}", changes)
            return _sae(row, row.created_by.name, row.base_model)

    @staticmethod
    def _sae_row(s: Session, ref: SAERef) -> SAEVersion:
        row: SAEVersion | None
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            row = s.get(SAEVersion, _row_id(ref, "SAE"))
        elif "@" in ref:
            name, _, ver = ref.rpartition("@")
            if not ver.isdigit():
                raise NotFound(f"bad SAE reference {ref!r} (use ID, NAME or NAME@VERSION)")
            row = s.scalar(select(SAEVersion).where(SAEVersion.name == name, SAEVersion.version == int(ver)))
        else:
            row = s.scalar(select(SAEVersion).where(SAEVersion.name == ref)
                           .order_by(SAEVersion.version.desc()).limit(1))
        if row is None:
            raise NotFound(f"unknown SAE {ref!r}")
        return row

    def get_sae(self, ref: SAERef) -> SAERecord:
        with self._read() as s:
            row = self._sae_row(s, ref)
            return _sae(row, row.created_by.name, row.base_model)

    def list_saes(self) -> list[SAERecord]:
        with self._read() as s:
            rows = s.scalars(select(SAEVersion).options(selectinload(SAEVersion.created_by),
                                                        selectinload(SAEVersion.base_model))
                             .order_by(SAEVersion.id))
            return [_sae(r, r.created_by.name, r.base_model) for r in rows]

    # --- concepts ----------------------------------------------------------------------------

    def add_concept(self, name: str, kind: str, actor: str | None, description: str = "",
                    prompts: Sequence[str] = ()) -> ConceptRecord:
        name = _valid_name(name.strip(), "concept")
        if len(description) > MAX_DESCRIPTION:
            raise ValidationFailed(f"concept description is {len(description)} characters; at most {MAX_DESCRIPTION}")
        if kind not in CONCEPT_KINDS:
            raise ValidationFailed(f"unknown concept kind {kind!r}; one of {', '.join(CONCEPT_KINDS)}")
        prompts = [p for p in prompts]
        if not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ValidationFailed("prompts must be non-empty strings")
        with self._write(actor, "concept.add") as tx:
            if tx.session.scalar(select(Concept).where(Concept.name == name)):
                raise AlreadyExists(f"concept {name!r} already exists")
            row = Concept(name=name, kind=kind, description=description, prompts=prompts,
                          created_by_id=tx.actor.id)
            tx.session.add(row)
            tx.session.flush()
            tx.log("concept.add", f"concept:{name}",
                   {"id": row.id, "name": name, "kind": kind, "description": description,
                    "prompts": prompts})
            return _concept(row, tx.actor.name)

    def get_concept(self, name: str) -> ConceptRecord:
        with self._read() as s:
            row = s.scalar(select(Concept).where(Concept.name == name))
            if row is None:
                raise NotFound(f"unknown concept {name!r}")
            return _concept(row, row.created_by.name)

    def list_concepts(self, kind: str | None = None) -> list[ConceptRecord]:
        with self._read() as s:
            q = select(Concept).options(selectinload(Concept.created_by)).order_by(Concept.id)
            if kind:
                if kind not in CONCEPT_KINDS:
                    raise ValidationFailed(f"unknown concept kind {kind!r}; one of {', '.join(CONCEPT_KINDS)}")
                q = q.where(Concept.kind == kind)
            return [_concept(r, r.created_by.name) for r in s.scalars(q)]

    # --- mappings ----------------------------------------------------------------------------

    def create_mapping(self, sae: SAERef, concept: str | None, spec: MappingSpec,
                       actor: str | None, evidence: Sequence[dict[str, Any]] | None = None) -> MappingRecord:
        """Store a draft mapping of `concept` (default: spec.concept) to features of `sae`."""
        concept = concept or spec.concept
        if concept != spec.concept:
            raise ValidationFailed(f"mapping is for concept {spec.concept!r}, not {concept!r}")
        with self._write(actor, "mapping.create") as tx:
            s = tx.session
            sae_row = self._sae_row(s, sae)
            crow = s.scalar(select(Concept).where(Concept.name == concept))
            if crow is None:
                raise NotFound(f"unknown concept {concept!r}")
            top = spec.max_feature_id()
            if top >= sae_row.n_latents:
                raise ValidationFailed(
                    f"feature {top} is outside SAE {sae_row.name}@{sae_row.version} "
                    f"(width {sae_row.n_latents})")
            if spec.selection.rule == "assigned":
                _check_assigned(spec, concept, sae_row)
            _check_chosen_with(s, spec, concept, sae_row.hook_point)
            if any(e.get("kind") == CHOSEN_WITH for e in evidence or []):
                raise ValidationFailed(f"{CHOSEN_WITH} evidence belongs in the mapping spec, where its hash covers it")
            spec_json = spec.to_json_dict()
            ev = [e.model_dump(mode="json") for e in spec.evidence] + list(evidence or [])
            row = FeatureMapping(
                concept_id=crow.id, sae_id=sae_row.id, state="draft",
                selection_rule=spec.selection.rule, tau=spec.selection.tau,
                top_n=spec.selection.top_n, gamma=spec.gamma, scheduler=spec.scheduler,
                num_steps=spec.num_steps, spec=spec_json,
                spec_sha256=spec.sha256(),
                evidence=ev, created_by_id=tx.actor.id,
            )
            s.add(row)
            s.flush()
            s.add_all(MappingFeature(mapping_id=row.id, timestep=t, feature_id=e.feature,
                                     score=e.score, scale=e.scale, gate=e.gate)
                      for t, entries in spec.timesteps.items() for e in entries)
            s.flush()
            s.refresh(row)
            tx.log("mapping.create", f"mapping:{row.id}",
                   {"id": row.id, "concept": concept, "sae_id": sae_row.id,
                    "spec_sha256": row.spec_sha256, "evidence": ev})
            return _mapping(row, with_features=True)

    def import_mapping_file(self, path: str | Path, sae: SAERef, actor: str | None) -> MappingRecord:
        spec = read_json_model(MappingSpec, Path(path))
        return self.create_mapping(sae, None, spec, actor)

    @staticmethod
    def _mapping_row(s: Session, mapping_id: int | str) -> FeatureMapping:
        mid = _row_id(mapping_id, "mapping")
        row = s.get(FeatureMapping, mid)
        if row is None:
            raise NotFound(f"unknown mapping {mid}")
        return row

    def get_mapping(self, mapping_id: int | str, with_features: bool = True) -> MappingRecord:
        with self._read() as s:
            return _mapping(self._mapping_row(s, mapping_id), with_features)

    def check_in_force(self, mapping_ids: Sequence[int], concept: str, hook_point: str) -> list[MappingRecord]:
        """The mappings a sweep of `concept` at `hook_point` may hold in force (`concept sweep
        --with-mapping`), checked as `create_mapping` will check the sweep's result, so that a
        refusal comes before minutes of sampling: same concept, intact, not rejected or revoked,
        each at its own hook point other than `hook_point`, and with their own partners."""
        with self._read() as s:
            rows = [self._mapping_row(s, m) for m in dict.fromkeys(mapping_ids)]
            _check_chosen_with_rows(s, rows, concept, hook_point)
            return [_mapping(r, True) for r in rows]

    def list_mappings(self, state: str | None = None, concept: str | None = None,
                      sae: SAERef | None = None) -> list[MappingRecord]:
        with self._read() as s:
            q = (select(FeatureMapping).options(selectinload(FeatureMapping.reviews).selectinload(Review.actor),
                                                selectinload(FeatureMapping.concept),
                                                selectinload(FeatureMapping.sae),
                                                selectinload(FeatureMapping.created_by))
                 .order_by(FeatureMapping.id))
            if state:
                if state not in MAPPING_STATES:
                    raise ValidationFailed(f"unknown mapping state {state!r}; one of {', '.join(MAPPING_STATES)}")
                q = q.where(FeatureMapping.state == state)
            if concept:
                q = q.join(Concept).where(Concept.name == concept)
            if sae is not None:
                q = q.where(FeatureMapping.sae_id == self._sae_row(s, sae).id)
            rows = list(s.scalars(q))
            counts = dict(s.execute(select(MappingFeature.mapping_id, func.count())
                                    .group_by(MappingFeature.mapping_id)).all())
            return [_mapping(r, False, counts.get(r.id, 0)) for r in rows]

    # --- review ------------------------------------------------------------------------------

    def review(self, mapping_id: int | str, action: str, actor: str | None,
               justification: str | None, override: str | None = None) -> MappingRecord:
        """propose | approve | reject | revoke, with the role and four-eyes rules; an approval
        also with the evidence rules of registry.policy (an admin's `override` justification
        accepts a shortfall, and is recorded)."""
        if action not in workflow.TRANSITIONS:
            raise ValidationFailed(f"unknown review action {action!r}")
        justification = workflow.require_justification(justification)
        if override is not None and action != "approve":
            raise ValidationFailed("only an approval can override the approval policy")
        with self._write(actor, f"mapping.{action}") as tx:
            s = tx.session
            row = self._mapping_row(s, mapping_id)
            new_state = workflow.next_state(row.id, row.state, action)
            shortfalls: list[str] = []
            policy: ApprovalPolicy | None = None
            if action == "approve":
                proposer = next((r.actor.name for r in reversed(row.reviews) if r.action == "propose"), None)
                workflow.check_four_eyes(row.id, tx.actor.name, row.created_by.name, proposer,
                                         _account_lineage(s, tx.actor), _key_lineage(s, tx.signer))
                _require_intact(s, row, "approve it")
                policy = self._policy_in_force(s)
                shortfalls = sanity_shortfalls((f.timestep, f.feature_id, f.scale, f.gate) for f in row.features)
                shortfalls += evidence_shortfalls(policy, row.evidence or [])
                if shortfalls and override is None:
                    raise ValidationFailed(f"mapping {row.id} ({row.concept.name}) cannot be approved: {shortfalls[0]}"
                                           + (f" (and {len(shortfalls) - 1} more)" if len(shortfalls) > 1 else "")
                                           + "; an admin may approve it with --override JUSTIFICATION")
                if shortfalls:
                    override = workflow.require_justification(override)
                    if tx.actor.role != "admin":
                        raise PermissionDenied(f"{tx.actor.name} ({tx.actor.role}) may not override the approval "
                                               "policy; needs role admin")
                elif override is not None:
                    raise ValidationFailed(f"mapping {row.id} meets the approval policy; there is nothing to override")
            review = Review(mapping_id=row.id, actor_id=tx.actor.id, action=action,
                            from_state=row.state, to_state=new_state, justification=justification)
            s.add(review)
            row.state = new_state
            s.flush()
            payload: dict[str, Any] = {"mapping_id": row.id, "review_id": review.id,
                                       "from": review.from_state, "to": new_state,
                                       "justification": justification}
            if action == "approve":
                payload["policy_version"] = policy.version if policy else None
                if shortfalls:
                    payload["override"] = {"justification": override, "shortfalls": shortfalls}
            if action == "revoke":
                now = utcnow()
                hit = s.scalars(select(BlocklistVersion).join(BlocklistVersionEntry)
                                .where(BlocklistVersionEntry.mapping_id == row.id,
                                       BlocklistVersion.state == "published")).all()
                for v in hit:
                    v.state, v.revoked_at, v.revoked_by_mapping_id = "revoked", now, row.id
                payload["revoked_blocklists"] = sorted(f"{v.blocklist.name}@{v.version}" for v in hit)
            s.flush()
            s.refresh(row)
            tx.log(f"mapping.{action}", f"mapping:{row.id}", payload)
            return _mapping(row, with_features=False)

    def propose(self, mapping_id: int | str, actor: str | None, justification: str) -> MappingRecord:
        return self.review(mapping_id, "propose", actor, justification)

    def approve(self, mapping_id: int | str, actor: str | None, justification: str,
                override: str | None = None) -> MappingRecord:
        return self.review(mapping_id, "approve", actor, justification, override=override)

    # --- approval policy ---------------------------------------------------------------------

    def set_approval_policy(self, actor: str | None, min_ua: float | None = None, min_ira: float | None = None,
                            min_cra: float | None = None, require_signatures: bool = False) -> ApprovalPolicy:
        """A new policy version (admins only, audited); None leaves a metric unconstrained.
        `require_signatures`: from now on every action must be signed by its actor's registered
        key; the admin who turns it on must sign this one already. Once on it stays on (later
        versions inherit it): turning it off would let one admin re-open acting under a name."""
        with self._write(actor, "policy.set") as tx:
            s = tx.session
            require_signatures = require_signatures or _logged_signatures_required(s)
            if require_signatures and tx.signer is None:
                raise PermissionDenied(f"{tx.actor.name!r} has no registered key: register yours before requiring "
                                       "signed actions (`saegov key register`), or nobody could act afterwards")
            current = s.scalar(select(func.max(ApprovalPolicyRow.version))) or 0
            try:
                policy = ApprovalPolicy(version=current + 1, min_ua=min_ua, min_ira=min_ira, min_cra=min_cra,
                                        require_signatures=require_signatures)
            except ValueError as exc:
                raise ValidationFailed(f"approval policy: minimums are fractions in [0, 1] ({first_line(exc)})") from None
            s.add(ApprovalPolicyRow(version=policy.version, min_ua=min_ua, min_ira=min_ira, min_cra=min_cra,
                                    require_signatures=require_signatures, created_by_id=tx.actor.id))
            s.flush()
            tx.log("policy.set", f"policy:{policy.version}", policy.payload())
            return policy

    def approval_policy(self) -> ApprovalPolicy | None:
        with self._read() as s:
            return self._policy_in_force(s)

    @staticmethod
    def _policy_in_force(s: Session) -> ApprovalPolicy | None:
        """The highest policy version, which must be exactly what its `policy.set` event says,
        and the last such event's: a policy table edited by SQL fails closed."""
        row = s.scalar(select(ApprovalPolicyRow).order_by(ApprovalPolicyRow.version.desc()).limit(1))
        last = s.scalar(select(AuditEvent.payload).where(AuditEvent.seq >= 1).where(AuditEvent.action == "policy.set")
                        .order_by(AuditEvent.seq.desc()).limit(1))
        if row is None and last is None:
            return None
        policy = None if row is None else ApprovalPolicy(version=row.version, min_ua=row.min_ua, min_ira=row.min_ira,
                                                         min_cra=row.min_cra,
                                                         require_signatures=bool(row.require_signatures))
        try:
            logged = json.loads(last) if last is not None else None
        except ValueError:
            logged = None
        if policy is None or logged != policy.payload():
            raise ValidationFailed("the approval policy in the registry is not the one its audit log records; "
                                   "approvals are refused until an admin sets the policy again")
        return policy

    def reject(self, mapping_id: int | str, actor: str | None, justification: str) -> MappingRecord:
        return self.review(mapping_id, "reject", actor, justification)

    def revoke(self, mapping_id: int | str, actor: str | None, justification: str) -> MappingRecord:
        return self.review(mapping_id, "revoke", actor, justification)

    # --- blocklists --------------------------------------------------------------------------

    def _blocklist_row(self, s: Session, name: str) -> BlocklistRow:
        row = s.scalar(select(BlocklistRow).where(BlocklistRow.name == name))
        if row is None:
            raise NotFound(f"unknown blocklist {name!r}")
        return row

    def create_blocklist(self, name: str, mapping_ids: Sequence[int], actor: str | None) -> BlocklistRecord:
        """A new named blocklist whose draft holds `mapping_ids` (publish freezes versions)."""
        name = _valid_name(name.strip(), "blocklist")
        with self._write(actor, "blocklist.create") as tx:
            s = tx.session
            if s.scalar(select(BlocklistRow).where(BlocklistRow.name == name)):
                raise AlreadyExists(f"blocklist {name!r} already exists")
            ids = sorted({self._mapping_row(s, m).id for m in mapping_ids})
            row = BlocklistRow(name=name, created_by_id=tx.actor.id)
            s.add(row)
            s.flush()
            s.add_all(BlocklistDraftEntry(blocklist_id=row.id, mapping_id=m) for m in ids)
            s.flush()
            tx.log("blocklist.create", f"blocklist:{name}", {"id": row.id, "mapping_ids": ids})
            s.refresh(row)
            return _blocklist(row)

    def edit_blocklist(self, name: str, actor: str | None, add: Sequence[int] = (),
                       remove: Sequence[int] = ()) -> BlocklistRecord:
        """Add mappings to / remove mappings from the draft of the next version."""
        with self._write(actor, "blocklist.edit") as tx:
            s = tx.session
            row = self._blocklist_row(s, name)
            current = {e.mapping_id: e for e in row.draft_entries}
            added = sorted({self._mapping_row(s, m).id for m in add} - set(current))
            removed = sorted(set(int(m) for m in remove))
            for m in removed:
                if m not in current:
                    raise NotFound(f"mapping {m} is not in the draft of blocklist {name!r}")
                s.delete(current[m])
            s.add_all(BlocklistDraftEntry(blocklist_id=row.id, mapping_id=m) for m in added)
            s.flush()
            tx.log("blocklist.edit", f"blocklist:{name}", {"added": added, "removed": removed})
            s.refresh(row)
            return _blocklist(row)

    def publish_blocklist(self, name: str, actor: str | None) -> BlocklistVersionRecord:
        """Freeze the draft as version N+1: every entry approved, at most one SAE version per hook point."""
        with self._write(actor, "blocklist.publish") as tx:
            s = tx.session
            row = self._blocklist_row(s, name)
            mappings = [self._mapping_row(s, e.mapping_id) for e in row.draft_entries]
            if not mappings:
                raise ValidationFailed(f"blocklist {name!r} has no mappings to publish")
            for m in mappings:
                if m.state != "approved":
                    raise ValidationFailed(f"mapping {m.id} ({m.concept.name}) is {m.state}, not approved")
                _require_intact(s, m, "publish")
                logged = _logged_mapping_state(s, m.id)
                if logged != "approved":
                    raise AuditVerificationError(f"mapping {m.id} ({m.concept.name}) is approved in the table but "
                                                 f"{logged or 'unknown'} in the audit log; refusing to publish")
            _check_published_together(s, name, mappings)
            by_hook: dict[str, SAEVersion] = {}
            for m in sorted(mappings, key=lambda m: m.id):
                seen = by_hook.setdefault(m.sae.hook_point, m.sae)
                if seen.id != m.sae.id:
                    raise ValidationFailed(
                        f"blocklist {name!r} has two SAE versions at hook point {m.sae.hook_point}: "
                        f"{seen.name}@{seen.version} and {m.sae.name}@{m.sae.version} (one SAE per hook point)")
            approvals = {m.id: next(r for r in reversed(m.reviews) if r.action == "approve") for m in mappings}
            content = [{"mapping_id": m.id, "concept": m.concept.name, "spec_sha256": m.spec_sha256,
                        "approval_review_id": approvals[m.id].id} for m in mappings]
            saes = [{"hook_point": h, "sae_id": r.id, "weights_sha256": r.weights_sha256}
                    for h, r in sorted(by_hook.items())]
            # Covers every (hook point, SAE weights) pair and every approved mapping.
            digest = sha256_text(canonical_json(
                {"saes": [{"hook_point": x["hook_point"], "weights_sha256": x["weights_sha256"]} for x in saes],
                 "entries": content}))
            # A version published before revision 0002 hashed {sae_weights_sha256, entries}.
            legacy = (sha256_text(canonical_json({"sae_weights_sha256": saes[0]["weights_sha256"], "entries": content}))
                      if len(saes) == 1 else None)
            if row.versions and row.versions[-1].content_sha256 in (digest, legacy):
                raise ValidationFailed(
                    f"blocklist {name!r}: nothing changed since version {row.versions[-1].version}")
            version = (row.versions[-1].version if row.versions else 0) + 1
            in_force = next((v for v in reversed(row.versions) if v.state != "pending"), None)
            loosened = _loosening(in_force, mappings)
            v = BlocklistVersion(blocklist_id=row.id, version=version, content_sha256=digest,
                                 published_by_id=tx.actor.id, state="pending" if loosened else "published")
            s.add(v)
            s.flush()
            s.add_all(BlocklistVersionSae(blocklist_version_id=v.id, hook_point=x["hook_point"], sae_id=x["sae_id"])
                      for x in saes)
            s.add_all(BlocklistVersionEntry(blocklist_version_id=v.id, mapping_id=m.id,
                                            approval_review_id=approvals[m.id].id) for m in mappings)
            s.flush()
            s.refresh(v)
            event: dict[str, Any] = {"version_id": v.id, "saes": saes, "content_sha256": digest, "entries": content}
            if loosened:
                event |= {"state": "pending", "loosening": loosened}
            tx.log("blocklist.publish", f"blocklist:{name}@{version}", event)
            return _blocklist_version(v)

    def approve_blocklist(self, name: str, version: int, actor: str | None, justification: str) -> BlocklistVersionRecord:
        """A reviewer other than its publisher approves a pending (loosening) version."""
        justification = workflow.require_justification(justification)
        with self._write(actor, "blocklist.approve") as tx:
            s = tx.session
            row = self._blocklist_row(s, name)
            v = next((x for x in row.versions if x.version == int(version)), None)
            if v is None:
                raise NotFound(f"blocklist {name!r} has no version {version}")
            if v.state != "pending":
                raise InvalidTransition(f"blocklist {name}@{v.version} is {v.state}; only a pending version is approved")
            if v.published_by_id == tx.actor.id:
                raise PermissionDenied(f"four-eyes rule: {tx.actor.name} published {name}@{v.version} and cannot "
                                       "approve its loosening")
            later = [x.version for x in row.versions if x.version > v.version and x.state != "pending"]
            if later:
                raise InvalidTransition(f"blocklist {name}@{v.version} was superseded by version {later[0]}")
            for e in v.entries:
                if e.mapping.state != "approved":
                    raise ValidationFailed(f"mapping {e.mapping_id} ({e.mapping.concept.name}) of {name}@{v.version} "
                                           f"is {e.mapping.state}, not approved")
            _check_published_together(s, name, [e.mapping for e in v.entries])
            v.state, v.approved_by_id, v.approved_at = "published", tx.actor.id, utcnow()
            s.flush()
            s.refresh(v)
            tx.log("blocklist.approve", f"blocklist:{name}@{v.version}",
                   {"version_id": v.id, "content_sha256": v.content_sha256, "justification": justification})
            return _blocklist_version(v)

    def describe_blocklist(self, name: str) -> BlocklistRecord:
        with self._read() as s:
            return _blocklist(self._blocklist_row(s, name))

    def get_blocklist(self, name: str, version: int | None = None) -> BlocklistVersionRecord:
        """A published version (default: the latest) with entries, features and approvals."""
        with self._read() as s:
            row = self._blocklist_row(s, name)
            if not row.versions:
                raise NotFound(f"blocklist {name!r} has no published version")
            if version is None:
                return _blocklist_version(row.versions[-1])
            for v in row.versions:
                if v.version == version:
                    return _blocklist_version(v)
            raise NotFound(f"blocklist {name!r} has no version {version}")

    def list_blocklists(self) -> list[BlocklistRecord]:
        with self._read() as s:
            return [_blocklist(b) for b in s.scalars(select(BlocklistRow).order_by(BlocklistRow.id))]

    # --- deployments and generations ---------------------------------------------------------

    def record_deployment(self, *, blocklist: str, version: int, path: str, manifest_sha256: str,
                          base_model_hash: str, actor: str | None,
                          mlflow_model_version: str | None = None,
                          details: dict[str, Any] | None = None) -> DeploymentRecord:
        """Record a built deployment folder; refused for a revoked blocklist version."""
        manifest_sha256 = _check_sha256(manifest_sha256, "manifest sha256")
        base_model_hash = _check_sha256(base_model_hash, "base model hash")
        with self._write(actor, "deployment.record") as tx:
            s = tx.session
            bl = self._blocklist_row(s, blocklist)
            v = next((x for x in bl.versions if x.version == version), None)
            if v is None:
                raise NotFound(f"blocklist {blocklist!r} has no version {version}")
            if v.state != "published":
                raise ValidationFailed(f"blocklist {blocklist}@{version} is {v.state}")
            for e in v.entries:
                _require_intact(s, e.mapping, "record a deployment")
            _check_published_together(s, blocklist, [e.mapping for e in v.entries])
            logged = _logged_version_state(s, f"{blocklist}@{v.version}")
            if logged != "published":
                raise AuditVerificationError(f"blocklist {blocklist}@{v.version} is published in the table but "
                                             f"{logged or 'unknown'} in the audit log; refusing to record a deployment")
            row = Deployment(blocklist_version_id=v.id, base_model_hash=base_model_hash,
                             path=path, manifest_sha256=manifest_sha256,
                             mlflow_model_version=mlflow_model_version, details=details or {},
                             built_by_id=tx.actor.id)
            s.add(row)
            s.flush()
            s.refresh(row)
            rec = _deployment(row)
            tx.log("deployment.record", f"deployment:{row.id}", rec.to_json() | {"built_at": None})
            return rec

    def get_deployment(self, deployment_id: int) -> DeploymentRecord:
        with self._read() as s:
            row = s.get(Deployment, _row_id(deployment_id, "deployment"))
            if row is None:
                raise NotFound(f"unknown deployment {deployment_id}")
            return _deployment(row)

    def list_deployments(self) -> list[DeploymentRecord]:
        with self._read() as s:
            return [_deployment(d) for d in s.scalars(select(Deployment).order_by(Deployment.id))]

    def record_evaluation(self, *, deployment_id: int, metrics: dict[str, Any], actor: str | None,
                          report_sha256: str | None = None, mlflow_run_id: str | None = None) -> EvaluationRecord:
        """Record an evaluation of a deployment (UA / IRA / CRA per concept, as fractions), the
        evidence a promotion names."""
        if not isinstance(metrics, dict) or not metrics:
            raise ValidationFailed("an evaluation needs metrics")
        if report_sha256 is not None:
            report_sha256 = _check_sha256(report_sha256, "report sha256")
        with self._write(actor, "deployment.evaluate") as tx:
            s = tx.session
            d = s.get(Deployment, _row_id(deployment_id, "deployment"))
            if d is None:
                raise NotFound(f"unknown deployment {deployment_id}")
            row = DeploymentEvaluation(deployment_id=d.id, metrics=metrics,
                                       metrics_sha256=sha256_text(canonical_json(metrics)),
                                       report_sha256=report_sha256, mlflow_run_id=mlflow_run_id,
                                       created_by_id=tx.actor.id)
            s.add(row)
            s.flush()
            s.refresh(row)
            rec = _evaluation(row)
            tx.log("deployment.evaluate", f"deployment:{d.id}", rec.to_json() | {"created_at": None})
            return rec

    def list_evaluations(self, deployment_id: int | None = None) -> list[EvaluationRecord]:
        with self._read() as s:
            q = select(DeploymentEvaluation).order_by(DeploymentEvaluation.id)
            if deployment_id is not None:
                q = q.where(DeploymentEvaluation.deployment_id == _row_id(deployment_id, "deployment"))
            return [_evaluation(e) for e in s.scalars(q)]

    def promote_deployment(self, *, deployment_id: int, evaluation_id: int, alias: str, actor: str | None,
                           mlflow_model: str | None = None, mlflow_version: str | None = None) -> PromotionRecord:
        """Give a deployment an alias (`production`). The caller has verified the deployment's
        files and signature (governance.enforcement.promote); here: its blocklist version is
        still in force, the evaluation is one recorded for this deployment, and by someone other
        than the promoter (four-eyes)."""
        alias = _valid_name(alias, "alias")
        with self._write(actor, "deployment.promote") as tx:
            s = tx.session
            d = s.get(Deployment, _row_id(deployment_id, "deployment"))
            if d is None:
                raise NotFound(f"unknown deployment {deployment_id}")
            ev = s.get(DeploymentEvaluation, _row_id(evaluation_id, "evaluation"))
            if ev is None or ev.deployment_id != d.id:
                raise ValidationFailed(f"evaluation {evaluation_id} is not an evaluation of deployment {d.id}")
            if ev.created_by_id == tx.actor.id:
                raise PermissionDenied(f"four-eyes rule: {tx.actor.name} recorded evaluation {ev.id} and cannot promote "
                                       "on it; another person evaluates or promotes")
            v = d.blocklist_version
            ref = f"{v.blocklist.name}@{v.version}"
            if v.state != "published":
                raise ValidationFailed(f"blocklist {ref} of deployment {d.id} is {v.state}")
            for e in v.entries:
                _require_intact(s, e.mapping, "promote a deployment")
            _check_published_together(s, v.blocklist.name, [e.mapping for e in v.entries])
            if _logged_version_state(s, ref) != "published":
                raise AuditVerificationError(f"blocklist {ref} is published in the table but not in the audit log; "
                                             "refusing to promote")
            row = DeploymentPromotion(deployment_id=d.id, evaluation_id=ev.id, alias=alias, mlflow_model=mlflow_model,
                                      mlflow_version=mlflow_version, promoted_by_id=tx.actor.id)
            s.add(row)
            s.flush()
            s.refresh(row)
            rec = _promotion(row)
            tx.log("deployment.promote", f"deployment:{d.id}", rec.to_json() | {"promoted_at": None})
            return rec

    def list_promotions(self, alias: str | None = None) -> list[PromotionRecord]:
        with self._read() as s:
            q = select(DeploymentPromotion).order_by(DeploymentPromotion.id)
            if alias is not None:
                q = q.where(DeploymentPromotion.alias == alias)
            return [_promotion(p) for p in s.scalars(q)]

    def record_generation(self, *, deployment_id: int, prompt_sha256: str, seed: int,
                          trace: dict[str, Any], actor: str | None) -> GenerationRecord:
        """Record one generation's trace (stored as canonical JSON with its sha256)."""
        return self.record_generations([NewGeneration(deployment_id, prompt_sha256, seed, trace)], actor)[0]

    def record_generations(self, items: Sequence[NewGeneration], actor: str | None) -> list[GenerationRecord]:
        """Record many generations in one transaction: one multi-row INSERT of the rows and one
        of their `generation.record` events (each event as `record_generation` writes it, so the
        chain means the same; only the cost per image falls). All or nothing."""
        if not items:
            return []
        prepared = []
        for item in items:
            prompt_sha256 = _check_sha256(item.prompt_sha256, "prompt sha256")
            try:
                trace_text = canonical_json(item.trace)
            except (TypeError, ValueError) as exc:
                raise ValidationFailed(f"trace is not JSON-serialisable: {exc}") from None
            seed = int(item.seed)
            if not 0 <= seed < 2**63:
                raise ValidationFailed(f"seed {seed} is out of range [0, 2**63)")
            prepared.append((_row_id(item.deployment_id, "deployment"), prompt_sha256, seed, trace_text,
                             sha256_text(trace_text)))
        with self._write(actor, "generation.record") as tx:
            s = tx.session
            wanted = {p[0] for p in prepared}
            known = set(s.scalars(select(Deployment.id).where(Deployment.id.in_(wanted))))
            if missing := sorted(wanted - known):
                raise NotFound(f"unknown deployment {missing[0]}")
            now = utcnow()
            rows = [{"deployment_id": d, "prompt_sha256": ph, "seed": seed, "trace": text, "trace_sha256": digest,
                     "created_by_id": tx.actor.id, "created_at": now} for d, ph, seed, text, digest in prepared]
            ids = audit.insert_rows(s, Generation.__table__, rows, returning="id")
            tx.log_many([("generation.record", f"generation:{gid}",
                          {"deployment_id": d, "prompt_sha256": ph, "seed": seed, "trace_sha256": digest})
                         for gid, (d, ph, seed, _text, digest) in zip(ids, prepared)])
            # The caller's trace as given (its canonical text is what was stored and hashed):
            # parsing the stored text back costs more than the whole insert.
            return [GenerationRecord(id=gid, deployment_id=d, prompt_sha256=ph, seed=seed, trace=item.trace,
                                     trace_sha256=digest, created_by=tx.actor.name, created_at=now)
                    for gid, item, (d, ph, seed, _text, digest) in zip(ids, items, prepared)]

    def get_generation(self, generation_id: int) -> GenerationRecord:
        with self._read() as s:
            row = s.get(Generation, _row_id(generation_id, "generation"))
            if row is None:
                raise NotFound(f"unknown generation {generation_id}")
            return _generation(row, row.created_by.name)

    def list_generations(self, deployment_id: int | None = None) -> list[GenerationRecord]:
        with self._read() as s:
            q = select(Generation).options(selectinload(Generation.created_by)).order_by(Generation.id)
            if deployment_id is not None:
                q = q.where(Generation.deployment_id == _row_id(deployment_id, "deployment"))
            return [_generation(g, g.created_by.name) for g in s.scalars(q)]

    # --- audit -------------------------------------------------------------------------------

    def audit_events(self, actor: str | None = None, subject: str | None = None,
                     action: str | None = None, since_seq: int | None = None,
                     limit: int | None = None) -> list[AuditEventRecord]:
        """Filter the log; `subject`/`action` ending in `*` match as prefixes."""
        with self._read() as s:
            q = select(AuditEvent).order_by(AuditEvent.seq)
            if actor:
                q = q.where(AuditEvent.actor == actor)
            for col, val in ((AuditEvent.subject, subject), (AuditEvent.action, action)):
                if val:
                    q = q.where(col.startswith(val[:-1], autoescape=True) if val.endswith("*") else col == val)
            if since_seq is not None:
                q = q.where(AuditEvent.seq >= since_seq)
            if limit is not None:
                q = q.limit(limit)
            return [AuditEventRecord(seq=e.seq, created_at=e.created_at, actor=e.actor, action=e.action,
                                     subject=e.subject, payload=_shown_payload(e.payload),
                                     prev_hash=e.prev_hash, hash=e.hash) for e in s.scalars(q)]

    def verify_audit(self, checkpoint: Checkpoint | Sequence[Checkpoint] | None = None,
                     anchors: frozenset[str] | None = None) -> audit.VerifyReport:
        """Recompute the whole chain and check every signature and the rules of
        registry.signatures (raises `AuditVerificationError` at the first bad event). With
        `anchors`, every root of the key history must be one of those public keys."""
        from registry.audit_parallel import verify_parallel, workers_for

        cps = [checkpoint] if isinstance(checkpoint, Checkpoint) else list(checkpoint or [])
        try:
            with self.engine.connect() as conn:
                audit.check_bounds(conn)
                size = audit.read_head(conn)[0]
            if (workers := workers_for(self.engine, size)) > 1:
                return verify_parallel(self.engine, cps, anchors, size, workers).report
            with audit.reading(self.engine) as conn:
                return audit.verify_stored(conn, checkpoint=cps, signatures=signatures.SignatureCheck(anchors=anchors))
        except SQLAlchemyError as exc:
            raise DatabaseUnreachable(f"database error: {first_line(exc)}") from None

    def verify_audit_since(self, checkpoint: Checkpoint, anchors: frozenset[str] | None = None) -> audit.VerifyReport:
        """Verify only the events after `checkpoint` (whose signature the caller checked): event
        `size` must still be its head, and every later event must link from it. With `anchors`,
        every root of the key history must be one of them."""
        try:
            with audit.reading(self.engine) as conn:
                audit.check_bounds(conn)
                if checkpoint.size:
                    stored = conn.execute(sa_text("SELECT hash FROM audit_events WHERE seq = :n"),
                                          {"n": checkpoint.size}).scalar()
                    if stored != checkpoint.head_hash:
                        raise AuditVerificationError(
                            f"audit event {checkpoint.size} is not the head of the checkpoint of {checkpoint.time} "
                            f"({'missing' if stored is None else 'different'}): the log was cut or rewritten",
                            checkpoint.size)
                check = audit.replayed_state(conn, checkpoint.size, anchors)
                # The rows before the checkpoint are not re-hashed here; the state they give must be
                # the one the (signed) checkpoint recorded, or an edit among them would go unseen.
                if checkpoint.state_sha256 is None:
                    raise AuditVerificationError(
                        f"the checkpoint of {checkpoint.time} records no state digest (made by an older saegov): "
                        "take a new one with `saegov audit checkpoint --sign`, or run a full `audit verify`", None)
                if check.state_digest() != checkpoint.state_sha256:
                    raise AuditVerificationError(
                        f"audit events 1..{checkpoint.size} no longer give the keys, roles and approvals the checkpoint "
                        f"of {checkpoint.time} recorded (edited before it): run a full `audit verify`", None)
                check.check_roots()
                return audit.verify_stored(conn, after=checkpoint.size,
                                           start=(checkpoint.size, checkpoint.head_hash), signatures=check)
        except SQLAlchemyError as exc:
            raise DatabaseUnreachable(f"database error: {first_line(exc)}") from None

    def verify_state(self) -> list[str]:
        """Replay the audit log and compare it with the state tables (registry.replay): the
        disagreements, first first; empty when every table is what the events say."""
        from registry.replay import disagreements, replay

        try:
            with self._read() as s:
                events = s.execute(select(AuditEvent.seq, AuditEvent.actor, AuditEvent.action, AuditEvent.subject,
                                          AuditEvent.payload).order_by(AuditEvent.seq))
                found = disagreements(s, replay(events))
                found += [p for m in s.scalars(select(FeatureMapping).order_by(FeatureMapping.id))
                          if (p := _mapping_integrity(s, m))]
                return found
        except (ValueError, KeyError, TypeError) as exc:
            raise AuditVerificationError(f"an audit event cannot be replayed: {exc!r}") from None

    def checkpoint_signers(self) -> dict[str, str]:
        """Public key -> owner, for the unrevoked keys of admins and auditors not disabled, as the
        audit log (replayed) says, not the key or actor tables: who may vouch for a tree head."""
        try:
            with self.engine.connect() as conn:
                check = audit.replayed_state(conn)
        except SQLAlchemyError as exc:
            raise DatabaseUnreachable(f"database error: {first_line(exc)}") from None
        out = {}
        for public in check.keys:
            if (who := check.owner_role(public)) is not None and who[1] in ("admin", "auditor"):
                out[public] = who[0]
        return out

    def export_audit(self, path: str | Path) -> int:
        """Write the whole log, signatures included, as `saegov.audit-log/v1` (after verifying
        it: an export is evidence, so a broken chain is refused rather than copied)."""
        from governance.formats.audit_log import AuditLogHeader, write_audit_log

        report = self.verify_audit()
        try:
            with audit.reading(self.engine) as conn, closing(audit.iter_event_rows(conn)) as rows:
                head = audit.read_head(conn)
                if head[0] != report.size:
                    raise AuditVerificationError("the log grew while it was exported; export again", None)
                return write_audit_log(Path(path), AuditLogHeader(size=report.size, head_hash=report.head_hash),
                                       (r for r in rows if r[0] <= report.size))
        except SQLAlchemyError as exc:
            raise DatabaseUnreachable(f"database error: {first_line(exc)}") from None

    def consistency_proof(self, old: Checkpoint, new: Checkpoint) -> list[str]:
        """The RFC 6962 proof that `old`'s tree is a prefix of `new`'s, after checking both
        against the chain (in one pass)."""
        if not 0 < old.size <= new.size:
            raise ValidationFailed(f"the old checkpoint ({old.size} events) must be non-empty and no larger than "
                                   f"the new one ({new.size})")
        try:
            with audit.reading(self.engine) as conn:
                leaves = audit.verify_stored(conn, checkpoint=[old, new], signatures=signatures.SignatureCheck()).leaves
        except SQLAlchemyError as exc:
            raise DatabaseUnreachable(f"database error: {first_line(exc)}") from None
        return audit.consistency_proof(leaves, old.size)

    def audit_checkpoint(self) -> Checkpoint:
        from governance.common.timeutil import iso_utc

        from registry.audit_parallel import verify_parallel, workers_for

        try:
            with audit.reading(self.engine) as conn:
                size = audit.read_head(conn)[0]
                if (workers := workers_for(self.engine, size)) <= 1:
                    return audit.make_checkpoint(conn)
            res = verify_parallel(self.engine, [], None, size, workers, leaves_upto=size)
            if res.report.size != size:  # appended to while it was read: the leaves stop at `size`
                raise AuditVerificationError("the log grew while the checkpoint was taken; take it again", None)
            return Checkpoint(size=res.report.size, head_hash=res.report.head_hash,
                              merkle_root=audit.merkle_root(res.leaves), time=iso_utc(utcnow()),
                              state_sha256=res.state.state_digest())
        except SQLAlchemyError as exc:
            raise DatabaseUnreachable(f"database error: {first_line(exc)}") from None


# --- row -> record ----------------------------------------------------------------------------


def _signing_key(k: SigningKey) -> SigningKeyRecord:
    return SigningKeyRecord(id=k.id, public_key=k.public_key, purpose=k.purpose, actor=k.actor.name,
                            registered_by=k.registered_by.name, created_at=k.created_at, revoked_at=k.revoked_at,
                            revoked_by=k.revoked_by.name if k.revoked_by else None)


def _check_public_key(value: str) -> str:
    value = (value or "").strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ValidationFailed("a public key is 64 hex digits (a raw Ed25519 key; `saegov key show` prints yours)")
    return value


def _actor(a: Actor) -> ActorRecord:
    return ActorRecord(id=a.id, name=a.name, role=a.role, created_at=a.created_at, disabled_at=a.disabled_at)


def _base_model(b: BaseModelRow, creator: str) -> BaseModelRecord:
    return BaseModelRecord(id=b.id, name=b.name, source=b.source, content_hash=b.content_hash,
                           created_by=creator, created_at=b.created_at)


def _sae(r: SAEVersion, creator: str, bm: BaseModelRow | None) -> SAERecord:
    return SAERecord(
        id=r.id, ref=f"{r.name}@{r.version}", name=r.name, version=r.version, hook_point=r.hook_point,
        d_in=r.d_in, n_latents=r.n_latents, k=r.k, architecture=r.architecture, config=r.config,
        weights_uri=r.weights_uri, weights_sha256=r.weights_sha256, cfg_sha256=r.cfg_sha256,
        metrics=r.metrics or {}, base_model=bm.name if bm else None,
        base_model_hash=bm.content_hash if bm else None,
        activation_dataset_hash=r.activation_dataset_hash, mlflow_run_id=r.mlflow_run_id,
        mlflow_model_version=r.mlflow_model_version, created_by=creator, created_at=r.created_at)


def _concept(c: Concept, creator: str) -> ConceptRecord:
    return ConceptRecord(id=c.id, name=c.name, kind=c.kind, description=c.description or "",
                         prompts=list(c.prompts or []), created_by=creator, created_at=c.created_at)


def _review(r: Review) -> ReviewRecord:
    return ReviewRecord(id=r.id, action=r.action, actor=r.actor.name, from_state=r.from_state,
                        to_state=r.to_state, justification=r.justification, created_at=r.created_at)


def _features(m: FeatureMapping) -> dict[int, list[FeatureEntry]]:
    out: dict[int, list[FeatureEntry]] = {}
    for f in m.features:
        out.setdefault(f.timestep, []).append(
            FeatureEntry(feature=f.feature_id, score=f.score, scale=f.scale, gate=f.gate))
    return out


def _mapping(m: FeatureMapping, with_features: bool, n_features: int | None = None) -> MappingRecord:
    feats = _features(m) if with_features else None
    if n_features is None:
        n_features = len(m.features)
    return MappingRecord(
        id=m.id, concept=m.concept.name, concept_kind=m.concept.kind, sae_id=m.sae_id,
        sae_ref=f"{m.sae.name}@{m.sae.version}", state=m.state, selection_rule=m.selection_rule,
        tau=m.tau, top_n=m.top_n, gamma=m.gamma, scheduler=m.scheduler, num_steps=m.num_steps,
        spec_sha256=m.spec_sha256, evidence=list(m.evidence or []), n_features=n_features,
        created_by=m.created_by.name, created_at=m.created_at,
        reviews=[_review(r) for r in m.reviews], timesteps=feats)


def _blocklist(b: BlocklistRow) -> BlocklistRecord:
    return BlocklistRecord(
        id=b.id, name=b.name,
        created_by=_session_actor_name(b, b.created_by_id), created_at=b.created_at,
        draft_mapping_ids=[e.mapping_id for e in b.draft_entries],
        versions=[BlocklistVersionSummary(
            version=v.version, state=v.state, content_sha256=v.content_sha256,
            n_entries=len(v.entries), published_by=v.published_by.name,
            published_at=v.published_at, revoked_by_mapping_id=v.revoked_by_mapping_id)
            for v in b.versions])


def _session_actor_name(obj: Any, actor_id: int) -> str:
    from sqlalchemy.orm import object_session

    s = object_session(obj)
    assert s is not None
    a = s.get(Actor, actor_id)
    return a.name if a else "?"


def _account_lineage(s: Session, actor: Actor) -> list[str]:
    """Who created `actor`'s account, who created theirs, ... up to the first actor."""
    out: list[str] = []
    seen = {actor.id}
    current = actor
    while current.created_by_id is not None and current.created_by_id not in seen:
        seen.add(current.created_by_id)
        parent = s.get(Actor, current.created_by_id)
        if parent is None:
            break
        out.append(parent.name)
        current = parent
    return out


def _key_lineage(s: Session, signer: Ed25519PrivateKey | None) -> list[str]:
    """Who registered the signing key, and whose account made theirs: a key an admin registered
    is as much that admin's as an account they created."""
    if signer is None:
        return []
    row = s.scalar(select(SigningKey).where(SigningKey.public_key == signatures.public_hex(signer)))
    if row is None:
        return []
    return [row.registered_by.name] + _account_lineage(s, row.registered_by)


def _mapping_integrity(s: Session, row: FeatureMapping) -> str | None:
    """What makes a mapping's rows differ from what was created and logged, or None: its spec
    hash and evidence must be those of its `mapping.create` event, its stored spec must hash to
    that, and its feature rows (what blocklists and deployments are built from) must be the
    spec's. Rows edited by SQL after review would otherwise be deployed as approved."""
    payload = s.scalar(select(AuditEvent.payload).where(AuditEvent.seq >= 1).where(AuditEvent.subject == f"mapping:{row.id}",
                                                        AuditEvent.action == "mapping.create"))
    if payload is None:
        return f"mapping {row.id} has no mapping.create event"
    logged = json.loads(payload)
    if row.spec_sha256 != logged.get("spec_sha256"):
        return f"mapping {row.id}: its spec hash is not the one its creation logged"
    if (row.evidence or []) != (logged.get("evidence") or []):
        return f"mapping {row.id}: its evidence is not the evidence its creation logged"
    try:
        spec = MappingSpec.model_validate(row.spec)
    except ValueError:
        return f"mapping {row.id}: its stored spec is not a mapping spec"
    if spec.sha256() != row.spec_sha256:
        return f"mapping {row.id}: its stored spec does not hash to its spec hash"
    rows = sorted((f.timestep, f.feature_id, f.score, f.scale, f.gate) for f in row.features)
    wanted = sorted((t, e.feature, e.score, e.scale, e.gate) for t, es in spec.timesteps.items() for e in es)
    if rows != wanted:
        return f"mapping {row.id}: its feature rows are not its spec's features"
    return None


def _require_intact(s: Session, row: FeatureMapping, doing: str) -> None:
    problem = _mapping_integrity(s, row)
    if problem:
        raise AuditVerificationError(f"{problem}; refusing to {doing}")


def _shown_payload(text: str) -> dict[str, Any]:
    """A stored payload for listing; one that is not a JSON object (only an edit behind the log
    makes one) is shown as its text, for `audit verify` to name."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        value = None
    return value if isinstance(value, dict) else {"unreadable_payload": text[:200]}


def _logged_signatures_required(s: Session) -> bool:
    """Whether the last `policy.set` event requires signed actions. Read from the log, not the
    policy table: a table edited by SQL cannot switch the requirement off."""
    last = s.scalar(select(AuditEvent.payload).where(AuditEvent.seq >= 1).where(AuditEvent.action == "policy.set")
                    .order_by(AuditEvent.seq.desc()).limit(1))
    if last is None:
        return False
    try:
        return bool(json.loads(last).get("require_signatures", False))
    except (ValueError, AttributeError):
        return True  # an unreadable policy event fails closed


def _logged_active_keys(s: Session, owner: str) -> set[str]:
    """The keys the audit log registered to `owner` and has not revoked."""
    events = s.execute(select(AuditEvent.action, AuditEvent.payload).where(AuditEvent.seq >= 1)
                       .where(AuditEvent.action.in_(("key.register", "key.revoke"))).order_by(AuditEvent.seq)).all()
    owners: dict[str, str | None] = {}
    for action, payload in events:
        try:
            p = json.loads(payload)
            public = str(p["public_key"])
        except (ValueError, KeyError, TypeError):
            continue
        owners[public] = p.get("owner") if action == "key.register" else None
    return {k for k, o in owners.items() if o == owner}


def _logged_mapping_state(s: Session, mapping_id: int) -> str | None:
    """A mapping's state as its own events (`mapping:ID`) say: the last review's target state."""
    rows = s.execute(select(AuditEvent.action, AuditEvent.payload).where(AuditEvent.seq >= 1).where(AuditEvent.subject == f"mapping:{mapping_id}")
                     .order_by(AuditEvent.seq)).all()
    state = None
    for action, payload in rows:
        p = json.loads(payload)
        if action == "mapping.create":
            state = "draft"
        elif "to" in p:
            state = p["to"]
    return state


def _logged_version_state(s: Session, ref: str) -> str | None:
    """A blocklist version's state as the log says: published or pending by its publish event,
    published by an approval, revoked by any mapping revocation that lists it."""
    rows = s.execute(select(AuditEvent.action, AuditEvent.payload).where(AuditEvent.seq >= 1).where(AuditEvent.subject == f"blocklist:{ref}")
                     .order_by(AuditEvent.seq)).all()
    state = None
    for action, payload in rows:
        if action == "blocklist.publish":
            state = json.loads(payload).get("state", "published")
        elif action == "blocklist.approve":
            state = "published"
    revocations = s.scalars(select(AuditEvent.payload).where(AuditEvent.seq >= 1).where(AuditEvent.action == "mapping.revoke"))
    if state is not None and any(ref in json.loads(p).get("revoked_blocklists", []) for p in revocations):
        state = "revoked"
    return state


def _loosening(in_force: BlocklistVersion | None, mappings: list[FeatureMapping]) -> list[dict[str, Any]]:
    """What a new version stops blocking, or blocks differently, compared with the version in
    force: each (concept, hook point) of it that the new one drops or serves by another mapping.
    A changed mapping may be weaker, and whether it is cannot be read off its numbers, so any
    change is reviewed."""
    if in_force is None:
        return []
    new = {(m.concept.name, m.sae.hook_point): m.id for m in mappings}
    out = []
    for e in in_force.entries:
        key = (e.mapping.concept.name, e.mapping.sae.hook_point)
        if key not in new:
            out.append({"concept": key[0], "hook_point": key[1], "removed_mapping_id": e.mapping_id})
        elif new[key] != e.mapping_id:
            out.append({"concept": key[0], "hook_point": key[1], "removed_mapping_id": e.mapping_id,
                        "replaced_by_mapping_id": new[key]})
    return sorted(out, key=lambda d: (d["concept"], d["hook_point"]))


def _blocklist_version(v: BlocklistVersion) -> BlocklistVersionRecord:
    hook_of = {x.sae_id: x.hook_point for x in v.saes}
    entries = []
    for e in v.entries:
        m = e.mapping
        entries.append(BlocklistEntryRecord(
            mapping_id=m.id, concept=m.concept.name, concept_kind=m.concept.kind,
            mapping_state=m.state, approval_review_id=e.approval.id, approved_by=e.approval.actor.name,
            approved_at=e.approval.created_at, sae_id=m.sae_id, hook_point=hook_of.get(m.sae_id, m.sae.hook_point),
            gamma=m.gamma, scheduler=m.scheduler, num_steps=m.num_steps, timesteps=_features(m)))
    saes = [BlocklistSaeRecord(hook_point=x.hook_point, sae_id=x.sae_id, sae_ref=f"{x.sae.name}@{x.sae.version}",
                               weights_sha256=x.sae.weights_sha256) for x in v.saes]
    return BlocklistVersionRecord(
        id=v.id, name=v.blocklist.name, version=v.version, ref=f"{v.blocklist.name}@{v.version}",
        state=v.state, saes=saes, content_sha256=v.content_sha256, published_by=v.published_by.name,
        published_at=v.published_at, revoked_at=v.revoked_at,
        revoked_by_mapping_id=v.revoked_by_mapping_id, entries=entries,
        approved_by=v.approved_by.name if v.approved_by else None, approved_at=v.approved_at)


def _deployment(d: Deployment) -> DeploymentRecord:
    v = d.blocklist_version
    return DeploymentRecord(
        id=d.id, blocklist=v.blocklist.name, blocklist_version=v.version, blocklist_state=v.state,
        sae_ids=[x.sae_id for x in v.saes], base_model_hash=d.base_model_hash, path=d.path,
        manifest_sha256=d.manifest_sha256, mlflow_model_version=d.mlflow_model_version,
        details=d.details or {}, built_by=d.built_by.name, built_at=d.built_at)


def _evaluation(e: DeploymentEvaluation) -> EvaluationRecord:
    return EvaluationRecord(id=e.id, deployment_id=e.deployment_id, metrics=e.metrics, metrics_sha256=e.metrics_sha256,
                            report_sha256=e.report_sha256, mlflow_run_id=e.mlflow_run_id,
                            created_by=e.created_by.name, created_at=e.created_at)


def _promotion(p: DeploymentPromotion) -> PromotionRecord:
    return PromotionRecord(id=p.id, deployment_id=p.deployment_id, evaluation_id=p.evaluation_id, alias=p.alias,
                           mlflow_model=p.mlflow_model, mlflow_version=p.mlflow_version,
                           promoted_by=p.promoted_by.name, promoted_at=p.promoted_at)


def _generation(g: Generation, creator: str) -> GenerationRecord:
    return GenerationRecord(id=g.id, deployment_id=g.deployment_id, prompt_sha256=g.prompt_sha256,
                            seed=g.seed, trace=json.loads(g.trace), trace_sha256=g.trace_sha256,
                            created_by=creator, created_at=g.created_at)


def _check_chosen_with(s: Session, spec: MappingSpec, concept: str, hook_point: str) -> None:
    """A mapping measured with others in force (CHOSEN_WITH evidence) must name existing, intact
    mappings of its own concept, by their current spec hash, at other hook points than its own."""
    try:
        refs = spec.chosen_with()
    except ValueError as exc:
        raise ValidationFailed(str(exc)) from None
    rows = []
    for mid, sha in refs.items():
        row = s.get(FeatureMapping, mid)
        if row is None:
            raise ValidationFailed(f"the mapping is recorded as chosen with mapping {mid}, which does not exist")
        if row.spec_sha256 != sha:
            raise ValidationFailed(f"the mapping is recorded as chosen with mapping {mid} of sha256 {sha[:12]}, "
                                   f"but mapping {mid} is {row.spec_sha256[:12]}")
        rows.append(row)
    _check_chosen_with_rows(s, rows, concept, hook_point)


def _check_chosen_with_rows(s: Session, rows: list[FeatureMapping], concept: str, hook_point: str) -> None:
    """What a mapping at `hook_point` may be measured with: mappings of `concept`, intact, not
    rejected or revoked, one per hook point and none at `hook_point`, and closed: every mapping
    one of them was itself measured with is among them (else the new point would be measured
    with a partner of a partner missing, or two mappings at one hook point)."""
    seen = {hook_point}
    present = {r.id: r.spec_sha256 for r in rows}
    for row in rows:
        if row.concept.name != concept:
            raise ValidationFailed(f"mapping {row.id} is of {row.concept.name!r}, not {concept!r}: only mappings "
                                   "of the same concept at other blocks can be measured together")
        if row.state in ("rejected", "revoked"):
            raise ValidationFailed(f"mapping {row.id} is {row.state}; nothing can be measured with it")
        if row.sae.hook_point in seen:
            raise ValidationFailed(f"mapping {row.id} is at {row.sae.hook_point}, where another mapping of the "
                                   "sweep already is: one mapping per hook point")
        seen.add(row.sae.hook_point)
        _require_intact(s, row, "measure a mapping with it")
        for mid, sha in _partners(row).items():
            if present.get(mid) != sha:
                raise ValidationFailed(f"mapping {row.id} was itself measured with mapping {mid}; "
                                       f"hold mapping {mid} in force too")


def _partners(row: FeatureMapping) -> dict[int, str]:
    """The CHOSEN_WITH references of a stored mapping (checked intact by the caller)."""
    try:
        return MappingSpec.model_validate(row.spec).chosen_with()
    except ValueError as exc:
        raise ValidationFailed(f"mapping {row.id}: {exc}") from None


def _check_published_together(s: Session, name: str, mappings: list[FeatureMapping]) -> None:
    """A mapping whose operating point was measured with other mappings in force is what its
    evidence says only beside them: a version holding it without them (or with other versions
    of them) would run an operating point nobody measured."""
    present = {m.id: m for m in mappings}
    for m in mappings:
        for mid, sha in _partners(m).items():
            partner = present.get(mid)
            if partner is not None and partner.spec_sha256 == sha:
                continue
            why = f"add mapping {mid} to blocklist {name!r} too (its sweep measured them together)"
            gone = s.get(FeatureMapping, mid) if partner is None else None
            if gone is not None and gone.state in ("rejected", "revoked"):
                why = f"mapping {mid} is {gone.state}, so mapping {m.id} needs a new sweep"
            raise ValidationFailed(f"mapping {m.id} ({m.concept.name} at {m.sae.hook_point}) was chosen with mapping "
                                   f"{mid} in force; {why}")


def _check_assigned(spec: MappingSpec, concept: str, sae_row: Any) -> None:
    """An "assigned" mapping claims the SAE's dedicated latents of the concept: it must select
    exactly those, at every timestep, from an SAE whose config (hash-pinned) records them."""
    from governance.common.errors import FormatError
    from governance.formats.supervision import supervision_of

    where = f"SAE {sae_row.name}@{sae_row.version}"
    if not sae_row.cfg_sha256:
        raise ValidationFailed(f"{where} has no recorded cfg.json hash; an 'assigned' mapping needs one")
    try:
        sup = supervision_of(sae_row.config or {}, sae_row.n_latents)
    except FormatError as exc:
        raise ValidationFailed(f"{where}: {exc}") from None
    latents = sup.latents_of(concept) if sup else None
    if not latents:
        raise ValidationFailed(f"{where} assigns no latents to {concept!r}; an 'assigned' mapping cannot claim it")
    for t, entries in spec.timesteps.items():
        if sorted(e.feature for e in entries) != sorted(latents):
            raise ValidationFailed(f"'assigned' mapping of {concept!r} selects features "
                                   f"{sorted(e.feature for e in entries)} at timestep {t}, not the latents "
                                   f"{sorted(latents)} {where} assigns to it")
