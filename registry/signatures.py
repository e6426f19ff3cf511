"""Actors sign what they do (issue 15): every audit event can carry its actor's Ed25519
signature over the event hash, and the log says which keys were valid for whom, and when.

Signed message: b"saegov.audit-event/v1\\n" + the event's hash (hex). The hash already commits
to the sequence number, the previous hash, the time, the actor, the action, the subject and the
payload, so a signature cannot be moved to another event or another place in the chain.

Keys come from the log itself: `key.register` (owner, by whom) and `key.revoke` events, with
`actor.disable`. Replaying them in chain order, `SignatureCheck` enforces, for every event:

- a signature verifies, with a key registered to the event's actor and not revoked before it;
- an actor who holds a registered key signs everything they do (an unsigned event by them is
  someone else using their name);
- once an approval policy with `require_signatures` is in force, every event is signed (and the
  event that turns it on is itself signed);
- a disabled actor does nothing more, and an actor the log never added does nothing at all;
- every action is one its actor's role allowed at that point (roles replayed from `actor.add`
  and `actor.role`, against registry.workflow.PERMISSIONS): a role raised by SQL for one
  action and set back leaves an event that names it;
- the key that approves a mapping is neither the key that created it nor the one that proposed it;
- a deployment is not promoted, by name or by key, by whoever recorded the evaluation the
  promotion rests on;
- the approver is not the mapping's creator or proposer, nor an account that descends from them
  (created by them, or by an account they created, ...), nor signs with a key that one of them
  or their descendants registered: the store's four-eyes rule (registry.workflow), checked
  from the log alone.

A key registered by an unsigned event, or by its own signature, is a root of trust. With trust
anchors (an auditor's `--trusted-keys` file) every root must be an anchor, and every anchor must
be registered in the log (a log stripped of its key registrations and re-chained unsigned fails):
the whole key history then derives from keys the auditor chose to trust, so an exported log plus
those public keys is enough to check four-eyes without the registry.

`state_digest()` summarises everything the rules depend on; a signed checkpoint records it, so
`audit verify --since` can start from the state the checkpoint vouches for instead of trusting
rows before it that it does not re-hash.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from governance.common.jsonio import canonical_json
from governance.common.personal_key import public_hex, verify_hex  # noqa: F401  (public_hex: registry's API too)
from registry.errors import AuditVerificationError
from registry.workflow import PERMISSIONS

EVENT_DOMAIN = b"saegov.audit-event/v1\n"
# Actions whose payload changes what SignatureCheck tracks.
TRACKED_ACTIONS = ("actor.add", "actor.role", "key.register", "key.revoke", "actor.disable", "policy.set", "mapping.create",
                   "mapping.propose", "mapping.approve", "deployment.evaluate", "deployment.promote")


# Logged action -> the permission the store checked for it (the same name unless listed).
_PERMISSION_OF = {"sae.update": "sae.register"}


def event_message(event_hash: str) -> bytes:
    return EVENT_DOMAIN + event_hash.encode()


def sign_event(key: Ed25519PrivateKey, event_hash: str) -> tuple[str, str]:
    """(signer public key, signature), both hex."""
    return public_hex(key), key.sign(event_message(event_hash)).hex()


def signature_valid(public_key: str, event_hash: str, signature: str) -> bool:
    return verify_hex(public_key, event_message(event_hash), signature)


@dataclass
class _Key:
    owner: str
    root: bool
    registrar: str
    revoked: bool = False


@dataclass
class SignatureCheck:
    """Feed events in chain order (`check`); raises `AuditVerificationError` at the first event
    that breaks a rule of the module docstring. `prime` replays the state of events already
    verified (those before a trusted checkpoint) without checking them again."""

    anchors: frozenset[str] | None = None
    keys: dict[str, _Key] = field(default_factory=dict)
    disabled: set[str] = field(default_factory=set)
    required: bool = False
    mapping_keys: dict[int, set[str]] = field(default_factory=dict)
    mapping_people: dict[int, set[str]] = field(default_factory=dict)
    creators: dict[str, str] = field(default_factory=dict)  # account -> the account that created it
    roles: dict[str, str] = field(default_factory=dict)  # account -> its role at this point of the log
    evaluators: dict[int, tuple[str, str | None]] = field(default_factory=dict)  # evaluation -> (actor, key)
    signed: int = 0
    # Owners holding an unrevoked key: checked on every event, so a set refreshed on key events.
    _keyed_owners: set[str] = field(default_factory=set)
    judge_anchors: bool = True  # False for all but the last range of a parallel verification
    _plain_ok: set[tuple[str, str]] = field(default_factory=set)  # (actor, action) passed since the last state change

    @property
    def plain_passed(self) -> set[tuple[str, str]]:
        """The live set of (actor, action) pairs `check` would pass at once (unsigned, untracked,
        already passed since the last tracked event); verify_rows skips the call for them."""
        return self._plain_ok

    def lineage(self, actor: str) -> list[str]:
        """Who created `actor`'s account, who created theirs, ..."""
        out: list[str] = []
        while (parent := self.creators.get(actor)) is not None and parent not in out and parent != actor:
            out.append(parent)
            actor = parent
        return out

    def active_keys(self, actor: str) -> list[str]:
        return [k for k, v in self.keys.items() if v.owner == actor and not v.revoked]


    def check(self, seq: int, actor: str, action: str, subject: str, payload: str, event_hash: str,
              signer_key: str | None, signature: str | None) -> None:
        # Most events of a long log are unsigned, untracked actions an actor already passed: their
        # verdict depends only on state that tracked events change, so it is remembered until one does.
        plain = not signer_key and not signature and action not in TRACKED_ACTIONS
        if plain and (actor, action) in self._plain_ok:
            return
        if actor in self.disabled:
            raise AuditVerificationError(f"audit event {seq}: {action} by {actor!r}, whose account was disabled "
                                         "before it", seq)
        role = self.roles.get(actor)
        if role is None:
            if not (action == "actor.add" and not self.roles):  # only the very first actor adds themselves
                raise AuditVerificationError(f"audit event {seq}: {action} by {actor!r}, whom no earlier actor.add "
                                             "event created", seq)
        elif (allowed := PERMISSIONS.get(_PERMISSION_OF.get(action, action))) is not None and role not in allowed:
            raise AuditVerificationError(f"audit event {seq}: {action} by {actor!r}, whose role at that point was "
                                         f"{role} (needs {' or '.join(sorted(allowed))})", seq)
        if signer_key or signature:
            key = self.keys.get(signer_key or "")
            if key is None or key.owner != actor or key.revoked:
                why = ("not registered" if key is None else f"registered to {key.owner!r}" if key.owner != actor
                       else "revoked")
                raise AuditVerificationError(f"audit event {seq}: {action} by {actor!r} is signed with key "
                                             f"{(signer_key or '?')[:16]}..., which is {why} at that point", seq)
            if not signature or not signature_valid(str(signer_key), event_hash, signature):
                raise AuditVerificationError(f"audit event {seq}: {action} by {actor!r} has a signature that does "
                                             "not verify (forged or altered)", seq)
            self.signed += 1
        elif self.required:
            raise AuditVerificationError(f"audit event {seq}: {action} by {actor!r} is unsigned, but the approval "
                                         "policy in force requires signed actions", seq)
        elif actor in self._keyed_owners:
            raise AuditVerificationError(f"audit event {seq}: {action} by {actor!r} is unsigned although {actor!r} "
                                         "has a registered key (someone else acted in their name)", seq)
        if action in TRACKED_ACTIONS:
            self._apply(seq, actor, action, subject, payload, signer_key or None, check=True)
        elif plain:
            self._plain_ok.add((actor, action))

    def prime(self, actor: str, action: str, subject: str, payload: str, signer_key: str | None) -> None:
        if action in TRACKED_ACTIONS:
            self._apply(0, actor, action, subject, payload, signer_key or None, check=False)

    def check_roots(self) -> None:
        """After priming (`--since`): every root of the key history so far must be an anchor."""
        if self.anchors is not None:
            for public, key in self.keys.items():
                if key.root and public not in self.anchors:
                    raise AuditVerificationError(f"key {public[:16]}... of {key.owner!r} is a root of trust before the "
                                                 "checkpoint but not one of the trusted keys", None)

    def owner_role(self, public: str) -> tuple[str, str] | None:
        """(owner, role) of an unrevoked key whose owner is not disabled, as the log says."""
        key = self.keys.get(public)
        if key is None or key.revoked or key.owner in self.disabled or key.owner not in self.roles:
            return None
        return key.owner, self.roles[key.owner]

    def finish(self) -> None:
        """After the last event: every trust anchor must have been registered in the log."""
        if self.judge_anchors and self.anchors is not None and (missing := sorted(self.anchors - set(self.keys))):
            raise AuditVerificationError(f"trusted key {missing[0][:16]}... is registered nowhere in this log (its "
                                         "registration was removed, or the log is not the one the keys belong to)"
                                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""), None)

    def state_digest(self) -> str:
        """sha256 of everything the rules depend on (keys, roles, lineage, four-eyes sets)."""
        state = {
            "keys": {k: [v.owner, v.root, v.registrar, v.revoked] for k, v in self.keys.items()},
            "disabled": sorted(self.disabled), "required": self.required, "roles": self.roles,
            "creators": self.creators,
            "mapping_keys": {str(m): sorted(v) for m, v in self.mapping_keys.items()},
            "mapping_people": {str(m): sorted(v) for m, v in self.mapping_people.items()},
        }
        if self.evaluators:  # absent from logs before evaluations existed: their digests stay the same
            state["evaluators"] = {str(e): list(v) for e, v in self.evaluators.items()}
        return hashlib.sha256(canonical_json(state).encode()).hexdigest()

    def _apply(self, seq: int, actor: str, action: str, subject: str, payload: str, signer: str | None,
               check: bool) -> None:
        self._plain_ok.clear()
        try:
            p = json.loads(payload)
            if not isinstance(p, dict):
                raise TypeError("not an object")
            self._apply_payload(seq, actor, action, p, signer, check)
        except AuditVerificationError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise AuditVerificationError(f"audit event {seq}: the payload of this {action} cannot be read "
                                         f"({type(exc).__name__})", seq or None) from None

    def _apply_payload(self, seq: int, actor: str, action: str, p: dict[str, Any], signer: str | None,
                       check: bool) -> None:
        if action == "actor.add":
            name = str(p["name"])
            if check and p.get("first") and (self.roles or name != actor):
                raise AuditVerificationError(f"audit event {seq}: actor.add of {name!r} claims to be the first actor, "
                                             "but it is not the log's first", seq)
            if check and name in self.roles:
                raise AuditVerificationError(f"audit event {seq}: actor {name!r} is added a second time", seq)
            self.roles[name] = "admin" if p.get("first") else str(p["role"])
            if not p.get("first"):
                self.creators[name] = actor
        elif action == "actor.role":
            name = str(p["name"])
            if check and (name not in self.roles or name == actor):
                raise AuditVerificationError(f"audit event {seq}: actor.role of {name!r} by {actor!r}, which no store "
                                             "writes (an unknown account, or one's own role)", seq)
            self.roles[name] = str(p["role"])
        elif action == "key.register":
            public = str(p.get("public_key"))
            if check and public in self.keys:
                raise AuditVerificationError(f"audit event {seq}: key {public[:16]}... is registered a second time", seq)
            root = signer is None or signer == public
            if check and root and self.anchors is not None and public not in self.anchors:
                raise AuditVerificationError(f"audit event {seq}: key {public[:16]}... of {p.get('owner')!r} is a root "
                                             "of trust (registered by an unsigned or self-signed event) but not one "
                                             "of the trusted keys", seq)
            self.keys[public] = _Key(owner=str(p.get("owner")), root=root, registrar=actor)
            self._keyed_owners = {v.owner for v in self.keys.values() if not v.revoked}
        elif action == "key.revoke":
            if (k := self.keys.get(str(p.get("public_key")))) is not None:
                k.revoked = True
            self._keyed_owners = {v.owner for v in self.keys.values() if not v.revoked}
        elif action == "actor.disable":
            name = str(p.get("name"))
            if check and (name not in self.roles or name == actor):
                raise AuditVerificationError(f"audit event {seq}: actor.disable of {name!r} by {actor!r}, which no "
                                             "store writes (an unknown account, or one's own)", seq)
            self.disabled.add(name)
        elif action == "policy.set":
            wanted = bool(p.get("require_signatures", False))
            if check and wanted and signer is None:
                raise AuditVerificationError(f"audit event {seq}: signed actions were required by an unsigned "
                                             "policy.set", seq)
            if check and self.required and not wanted:
                raise AuditVerificationError(f"audit event {seq}: policy.set turned signed actions off, which no "
                                             "policy may do once they are required", seq)
            self.required = wanted
        elif action == "deployment.evaluate":
            self.evaluators[int(p["id"])] = (actor, signer)
        elif action == "deployment.promote":
            recorder, key = self.evaluators.get(int(p["evaluation_id"]), (None, None))
            if check and (recorder == actor or (signer is not None and signer == key)):
                raise AuditVerificationError(f"audit event {seq}: deployment {p.get('deployment_id')} promoted by "
                                             f"{actor!r} on evaluation {p['evaluation_id']}, which they recorded "
                                             "(four-eyes)", seq)
        elif action in ("mapping.create", "mapping.propose", "mapping.approve"):
            mapping = int(p["id"] if action == "mapping.create" else p["mapping_id"])
            keys = self.mapping_keys.setdefault(mapping, set())
            people = self.mapping_people.setdefault(mapping, set())
            if action == "mapping.approve":
                if check and signer is not None and signer in keys:
                    raise AuditVerificationError(f"audit event {seq}: mapping {mapping} was approved with the key "
                                                 f"{signer[:16]}... that created or proposed it (four-eyes)", seq)
                if check:
                    self._check_four_eyes(seq, mapping, actor, signer, people)
            else:
                people.add(actor)
                if signer is not None:
                    keys.add(signer)

    def _check_four_eyes(self, seq: int, mapping: int, approver: str, signer: str | None, people: set[str]) -> None:
        behind = [approver, *self.lineage(approver)]
        key = self.keys.get(signer or "")
        if key is not None:
            behind += [key.registrar, *self.lineage(key.registrar)]
        for who in behind:
            if who in people:
                how = ("is" if who == approver else
                       "descends from" if who in self.lineage(approver) else "signs with a key registered by")
                raise AuditVerificationError(f"audit event {seq}: mapping {mapping} approved by {approver!r}, who "
                                             f"{how} {who!r}, its creator or proposer (four-eyes)", seq)
