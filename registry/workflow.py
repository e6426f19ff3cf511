"""The review state machine and the role rules. Pure functions: no database access.

Roles:
- admin: adds actors; may do everything an engineer or a reviewer does, but the four-eyes rule
  binds admins too (nobody approves a mapping they created or proposed).
- engineer: registers base models, SAE versions, concepts and mappings; proposes mappings;
  builds and publishes blocklists; records deployments and generations.
- reviewer: approves, rejects and revokes mappings.
- auditor: reads only (listing, audit log, verify, checkpoint).
Reading needs no role at all.
"""
from __future__ import annotations

from registry.errors import InvalidTransition, PermissionDenied, ValidationFailed

# action -> roles allowed to perform it
PERMISSIONS: dict[str, frozenset[str]] = {
    "actor.add": frozenset({"admin"}),
    "actor.disable": frozenset({"admin"}),
    "actor.role": frozenset({"admin"}),
    "key.register": frozenset({"admin"}),
    "key.revoke": frozenset({"admin"}),
    "policy.set": frozenset({"admin"}),
    "base_model.register": frozenset({"admin", "engineer"}),
    "sae.register": frozenset({"admin", "engineer"}),
    "concept.add": frozenset({"admin", "engineer"}),
    "mapping.create": frozenset({"admin", "engineer"}),
    "mapping.propose": frozenset({"admin", "engineer"}),
    "mapping.approve": frozenset({"admin", "reviewer"}),
    "mapping.reject": frozenset({"admin", "reviewer"}),
    "mapping.revoke": frozenset({"admin", "reviewer"}),
    "blocklist.create": frozenset({"admin", "engineer"}),
    "blocklist.edit": frozenset({"admin", "engineer"}),
    "blocklist.publish": frozenset({"admin", "engineer"}),
    "blocklist.approve": frozenset({"admin", "reviewer"}),
    "deployment.record": frozenset({"admin", "engineer"}),
    "generation.record": frozenset({"admin", "engineer"}),
    "deployment.evaluate": frozenset({"admin", "engineer", "reviewer"}),
    "deployment.promote": frozenset({"admin", "engineer"}),
}

# review action -> (from state, to state)
TRANSITIONS: dict[str, tuple[str, str]] = {
    "propose": ("draft", "proposed"),
    "approve": ("proposed", "approved"),
    "reject": ("proposed", "rejected"),
    "revoke": ("approved", "revoked"),
}


def require_role(actor_name: str, role: str, action: str) -> None:
    allowed = PERMISSIONS[action]
    if role not in allowed:
        raise PermissionDenied(
            f"{actor_name} ({role}) may not do {action}; "
            f"needs role {' or '.join(sorted(allowed))}"
        )


def next_state(mapping_id: int, state: str, review_action: str) -> str:
    src, dst = TRANSITIONS[review_action]
    if state != src:
        raise InvalidTransition(
            f"mapping {mapping_id} is {state}; only a {src} mapping can be {dst}"
        )
    return dst


def check_four_eyes(mapping_id: int, approver: str, creator: str, proposer: str | None,
                    account_lineage: list[str] | tuple[str, ...] = (),
                    key_lineage: list[str] | tuple[str, ...] = ()) -> None:
    """Nobody approves a mapping they created or proposed, nor through an account that the
    mapping's creator or proposer made, directly or through accounts they made
    (`account_lineage`: who created the approver's account, who created that one, ...): an
    admin's second account is still that admin. So the first admin, from whom every account
    descends, cannot author work that anyone may approve. `key_lineage` (who registered the
    approver's signing key, and that admin's account lineage) is held to the same rule: a key an
    admin registered is as much that admin's as an account they created."""
    if approver == proposer:
        raise PermissionDenied(f"four-eyes rule: {approver} proposed mapping {mapping_id} and cannot approve it")
    if approver == creator:
        raise PermissionDenied(f"four-eyes rule: {approver} created mapping {mapping_id} and cannot approve it")
    for ancestor in account_lineage:
        if ancestor in (creator, proposer):
            role = "created" if ancestor == creator else "proposed"
            raise PermissionDenied(f"four-eyes rule: {approver}'s account descends from {ancestor}'s, who {role} "
                                   f"mapping {mapping_id}")
    for ancestor in key_lineage:
        if ancestor in (creator, proposer):
            role = "created" if ancestor == creator else "proposed"
            raise PermissionDenied(f"four-eyes rule: {approver} signs with a key that comes from {ancestor}, who "
                                   f"{role} mapping {mapping_id}")


def require_justification(text: str | None) -> str:
    text = (text or "").strip()
    if not text:
        raise ValidationFailed("a justification is required (--justification TEXT)")
    return text
