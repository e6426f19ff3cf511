"""`saegov audit verify|export|consistency|checkpoint|log|explain`: the tamper-evident audit log,
and what a generation suppressed."""
from __future__ import annotations

from pathlib import Path

import click

from cli.common import emit, json_option, open_store, print_json, subgroup


# Who may sign a tree head: an auditor's word about the log, not an engineer's.
CHECKPOINT_ROLES = ("admin", "auditor")


def _checkpoint_signers(store, trusted_keys: Path | None) -> dict[str, str]:  # noqa: ANN001
    """Keys whose checkpoint signatures are trusted: the trust store's (`--trusted-keys`, else
    SAEGOV_TRUSTED_KEYS), and the registry's registered keys of admins and auditors."""
    from governance.enforcement.deployment import resolve_trust

    keys = resolve_trust(None, trusted_keys_file=trusted_keys)
    if store is not None:  # owners and roles as the replayed log says (the tables can be edited)
        keys.update({k: f"registry key of {owner}" for k, owner in store.checkpoint_signers().items()
                     if k in store.trusted_signing_keys()})
    return keys


def _check_checkpoint_signature(store, cp, path: Path, trusted_keys: Path | None) -> str | None:  # noqa: ANN001
    """A signed checkpoint's signature must verify, its key be trusted for checkpoints, and its
    time not lie in the future; an unsigned one is accepted with a note (its file is then only as
    safe as where it was kept)."""
    import datetime as dt

    from governance.enforcement import signing
    from registry.errors import AuditVerificationError

    if cp.signature is None:
        return f"checkpoint {path} is unsigned (audit checkpoint --sign makes a signed one)"
    if not signing.verify(cp.signature.public_key, cp.signed_message(), cp.signature.value):
        raise AuditVerificationError(f"checkpoint {path}: signature does not match its contents")
    if cp.signature.public_key not in _checkpoint_signers(store, trusted_keys):
        raise AuditVerificationError(f"checkpoint {path}: signed by key {cp.signature.public_key[:16]}..., which is "
                                     "not a trusted key of an admin or auditor")
    try:
        when = dt.datetime.fromisoformat(cp.time.replace("Z", "+00:00"))
        if when.tzinfo is None:
            raise ValueError("no time zone")
    except ValueError:
        raise AuditVerificationError(f"checkpoint {path}: unreadable time {cp.time!r}") from None
    if when > dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=5):
        raise AuditVerificationError(f"checkpoint {path}: dated {cp.time}, in the future")
    return None


def _anchors(trusted_keys: Path | None) -> frozenset[str] | None:
    """The public keys an auditor's trust store names (None without one)."""
    if trusted_keys is None:
        return None
    from governance.formats.trusted_keys import read_trusted_keys

    return frozenset(read_trusted_keys(trusted_keys).public_keys())


def _report(rep, checkpoints, notes, as_json: bool, what: str, tail: str) -> None:  # noqa: ANN001
    cp = max(checkpoints, key=lambda c: c.size) if checkpoints else None
    for note in filter(None, notes):
        click.echo(f"note: {note}", err=True)
    if as_json:
        print_json({"ok": True, "size": rep.size, "head_hash": rep.head_hash, "signed": rep.signed,
                    "checkpoint_size": cp.size if cp else None, "checked": tail})
        return
    suffix = f"; consistent with checkpoint of {cp.time} ({cp.size} events)" if cp else ""
    click.echo(f"{what} OK: {rep.size} events ({rep.signed} signed by their actors' registered keys), head "
               f"{rep.head_hash[:16]}{suffix}; {tail}")


def register(root: click.Group) -> None:
    grp = subgroup(root, "audit", "The hash-chained audit log.")

    @grp.command("verify")
    @click.option("--checkpoint", "checkpoint_files", type=click.Path(path_type=Path), multiple=True,
                  help="Also check against a checkpoint (repeatable; detects truncation and rewriting). A signed "
                       "one must be signed by a trusted key.")
    @click.option("--trusted-keys", type=click.Path(path_type=Path), default=None,
                  help="Trust store (`saegov key export`): the keys checkpoints may be signed by, and the only keys "
                       "the key history may start from (default for checkpoints: SAEGOV_TRUSTED_KEYS and the "
                       "registry's keys).")
    @click.option("--since", "since_file", type=click.Path(path_type=Path), default=None,
                  help="Verify only the events after this signed checkpoint (it must be signed by a trusted key).")
    @click.option("--log", "log_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
                  help="Verify an exported log (`saegov audit export`) instead of the registry: no registry needed.")
    @json_option
    def verify(checkpoint_files: tuple[Path, ...], trusted_keys: Path | None, since_file: Path | None,
               log_file: Path | None, as_json: bool) -> None:
        """Recompute the chain, check every actor's signature and the key history, and replay the
        log against the state tables; exit non-zero naming the first bad event or the first row
        the log does not support."""
        from governance.formats.checkpoint import read_checkpoint

        from registry.errors import AuditVerificationError

        anchors = _anchors(trusted_keys)
        if log_file is not None:
            if since_file is not None:
                raise click.UsageError("--since works on the registry, not with --log")
            from registry.audit import verify_exported

            checkpoints = [read_checkpoint(f) for f in checkpoint_files]
            notes = [_check_checkpoint_signature(None, cp, f, trusted_keys)
                     for cp, f in zip(checkpoints, checkpoint_files)]
            rep = verify_exported(log_file, checkpoints, anchors)
            _report(rep, checkpoints, notes, as_json, f"exported log {log_file}",
                    "key history from the trusted keys" if anchors is not None else
                    "key history not anchored (pass --trusted-keys)")
            return
        store = open_store()
        if since_file is not None:
            import os

            from governance.common.workspace import ENV_TRUSTED_KEYS

            if trusted_keys is None and not os.environ.get(ENV_TRUSTED_KEYS):
                raise click.UsageError("--since needs --trusted-keys FILE (or SAEGOV_TRUSTED_KEYS): the checkpoint's "
                                       "signer must be trusted independently of the registry whose past it vouches for")
            since = read_checkpoint(since_file)
            if since.signature is None:
                raise AuditVerificationError(f"--since needs a signed checkpoint; {since_file} is unsigned")
            _check_checkpoint_signature(None, since, since_file, trusted_keys)  # the trust store alone
            rep = store.verify_audit_since(since, anchors=anchors)
            if as_json:
                print_json({"ok": True, "size": rep.size, "head_hash": rep.head_hash, "since": since.size,
                            "signed": rep.signed})
            else:
                after = f"events {since.size + 1}..{rep.size}" if rep.size > since.size else "no events since"
                click.echo(f"audit chain OK after the checkpoint of {since.time}: {after}, "
                           f"head {rep.head_hash[:16]}, {rep.signed} signed (state tables not replayed: run without "
                           "--since for that)")
            return
        checkpoints = [read_checkpoint(f) for f in checkpoint_files]
        notes = [_check_checkpoint_signature(store, cp, f, trusted_keys) for cp, f in zip(checkpoints, checkpoint_files)]
        rep = store.verify_audit(checkpoints, anchors=anchors)  # one pass, whatever the number of checkpoints
        wrong = store.verify_state()
        if wrong:
            raise AuditVerificationError(f"the chain verifies but the state does not agree with it: {wrong[0]}"
                                         + (f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""))
        _report(rep, checkpoints, notes, as_json, "audit chain", "state tables agree with the log")

    @grp.command("export")
    @click.option("--out", "out", type=click.Path(path_type=Path, dir_okay=False), required=True,
                  help="File to write (JSON lines, saegov.audit-log/v1).")
    @json_option
    def export(out: Path, as_json: bool) -> None:
        """Verify the log, then write it with every signature: an auditor checks it with
        `saegov audit verify --log FILE --trusted-keys KEYS`, without the registry."""
        n = open_store().export_audit(out)
        if as_json:
            print_json({"path": str(out), "events": n})
        else:
            click.echo(f"exported {n} audit events -> {out}")

    @grp.command("consistency")
    @click.argument("old_file", type=click.Path(path_type=Path, dir_okay=False))
    @click.argument("new_file", type=click.Path(path_type=Path, dir_okay=False))
    @click.option("--out", "out", type=click.Path(path_type=Path, dir_okay=False), default=None,
                  help="Write the proof computed from the registry's log here.")
    @click.option("--proof", "proof_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
                  help="Check this proof instead (no registry needed).")
    @click.option("--trusted-keys", type=click.Path(path_type=Path), default=None,
                  help="Trust store for the checkpoints' signatures.")
    @json_option
    def consistency(old_file: Path, new_file: Path, out: Path | None, proof_file: Path | None,
                    trusted_keys: Path | None, as_json: bool) -> None:
        """RFC 6962 consistency proof: the log of checkpoint OLD is a prefix of the log of checkpoint NEW
        (nothing in it was rewritten or cut before NEW was taken)."""
        from governance.common.jsonio import pretty_json
        from governance.formats.checkpoint import ConsistencyProof, read_checkpoint, read_consistency_proof

        from registry.audit import consistency_holds
        from registry.errors import AuditVerificationError

        if (out is None) == (proof_file is None):
            raise click.UsageError("give exactly one of --out (compute from the registry) or --proof (check a proof)")
        old, new = read_checkpoint(old_file), read_checkpoint(new_file)
        store = open_store() if out is not None else None
        notes = [_check_checkpoint_signature(store, cp, f, trusted_keys) for cp, f in ((old, old_file), (new, new_file))]
        if proof_file is not None:
            proof = read_consistency_proof(proof_file)
            if (proof.old_size, proof.new_size, proof.old_root, proof.new_root) != (
                    old.size, new.size, old.merkle_root, new.merkle_root):
                raise AuditVerificationError(f"{proof_file} is a proof between other checkpoints")
        else:
            assert store is not None
            proof = ConsistencyProof(old_size=old.size, new_size=new.size, old_root=old.merkle_root,
                                     new_root=new.merkle_root, hashes=store.consistency_proof(old, new))
        if not consistency_holds(proof.old_size, proof.new_size, proof.old_root, proof.new_root, proof.hashes):
            raise AuditVerificationError(f"the log of {old_file} ({old.size} events) is not a prefix of the log of "
                                         f"{new_file} ({new.size} events): history was rewritten between them")
        if out is not None:
            out.write_text(pretty_json(proof.model_dump(mode="json")))
        for note in filter(None, notes):
            click.echo(f"note: {note}", err=True)
        if as_json:
            print_json({"ok": True, "old_size": old.size, "new_size": new.size, "hashes": len(proof.hashes),
                        "proof": str(out or proof_file)})
        else:
            click.echo(f"consistent: the {old.size} events of {old_file} are the first {old.size} of {new_file} "
                       f"({new.size}); proof of {len(proof.hashes)} hashes" + (f" -> {out}" if out else ""))

    @grp.command("checkpoint")
    @click.option("--out", "out", type=click.Path(path_type=Path), required=True)
    @click.option("--sign", is_flag=True, help="Sign it with your registered key (a signed tree head).")
    @json_option
    def checkpoint(out: Path, sign: bool, as_json: bool) -> None:
        """Verify, then write {size, head_hash, merkle_root, time} (and a signature) to FILE."""
        from governance.formats.checkpoint import CheckpointSignature, write_checkpoint

        store = open_store()
        from governance.enforcement import signing

        key = signing.registered_own_key(store) if sign else None
        if key is not None:
            owner = store.trusted_signing_keys()[signing.public_hex(key)].actor
            role = next((a.role for a in store.list_actors() if a.name == owner), None)
            if role not in CHECKPOINT_ROLES:
                from registry.errors import PermissionDenied

                raise PermissionDenied(f"{owner} ({role}) may not sign checkpoints; needs role admin or auditor")
        cp = store.audit_checkpoint()
        if key is not None:
            cp = cp.model_copy(update={"signature": CheckpointSignature(
                public_key=signing.public_hex(key), value=signing.sign(key, cp.signed_message()))})
        write_checkpoint(out, cp)
        if as_json:
            print_json({"path": str(out), **cp.model_dump()})
            return
        click.echo(f"checkpoint: {cp.size} events, root {cp.merkle_root[:16]} -> {out}")

    @grp.command("log")
    @click.option("--actor", "who", help="Only events by this actor (not an identity).")
    @click.option("--subject", help="e.g. mapping:3 (a trailing * matches a prefix).")
    @click.option("--action", help="e.g. mapping.approve (a trailing * matches a prefix).")
    @click.option("--since", "since_seq", type=click.IntRange(min=1), help="From this sequence number.")
    @click.option("--limit", type=click.IntRange(min=1), help="At most this many events.")
    @json_option
    def log(who: str | None, subject: str | None, action: str | None, since_seq: int | None,
            limit: int | None, as_json: bool) -> None:
        """Show audit events."""
        events = open_store().audit_events(actor=who, subject=subject, action=action,
                                           since_seq=since_seq, limit=limit)
        emit(events, as_json, ["seq", "created_at", "actor", "action", "subject", "payload", "hash"])

    @grp.command("explain")
    @click.argument("target")
    @json_option
    def explain(target: str, as_json: bool) -> None:
        """Which concepts a generation suppressed, by which features, approved by whom (IMG, TRACE or GENERATION_ID)."""
        from governance.enforcement.explain import explain_target, render_text

        report = explain_target(target)
        if as_json:
            print_json(report)
        else:
            click.echo(render_text(report))
