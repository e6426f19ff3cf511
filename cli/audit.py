"""`saegov audit verify|checkpoint|log|explain`: the tamper-evident audit log, and what a
generation suppressed."""
from __future__ import annotations

from pathlib import Path

import click

from cli.common import emit, json_option, open_store, print_json, subgroup


def _check_checkpoint_signature(store, cp, path: Path, trusted_keys: Path | None) -> str | None:  # noqa: ANN001
    """A signed checkpoint's signature must verify and its key be trusted; an unsigned one is
    accepted with a note (its file is then only as safe as where it was kept)."""
    from governance.enforcement import signing
    from governance.enforcement.deployment import resolve_trust
    from registry.errors import AuditVerificationError

    if cp.signature is None:
        return f"checkpoint {path} is unsigned (audit checkpoint --sign makes a signed one)"
    if not signing.verify(cp.signature.public_key, cp.signed_message(), cp.signature.value):
        raise AuditVerificationError(f"checkpoint {path}: signature does not match its contents")
    if cp.signature.public_key not in resolve_trust(store, trusted_keys_file=trusted_keys):
        raise AuditVerificationError(f"checkpoint {path}: signed by key {cp.signature.public_key[:16]}..., which is "
                                     "not a trusted key")
    return None


def register(root: click.Group) -> None:
    grp = subgroup(root, "audit", "The hash-chained audit log.")

    @grp.command("verify")
    @click.option("--checkpoint", "checkpoint_files", type=click.Path(path_type=Path), multiple=True,
                  help="Also check against a checkpoint (repeatable; detects truncation and rewriting). A signed "
                       "one must be signed by a trusted key.")
    @click.option("--trusted-keys", type=click.Path(path_type=Path), default=None,
                  help="Trust store for checkpoint signatures (default: SAEGOV_TRUSTED_KEYS and the registry's keys).")
    @click.option("--since", "since_file", type=click.Path(path_type=Path), default=None,
                  help="Verify only the events after this signed checkpoint (it must be signed by a trusted key).")
    @json_option
    def verify(checkpoint_files: tuple[Path, ...], trusted_keys: Path | None, since_file: Path | None,
               as_json: bool) -> None:
        """Recompute the chain and replay it against the state tables; exit non-zero naming the
        first bad event or the first row the log does not support."""
        from governance.formats.checkpoint import read_checkpoint

        from registry.errors import AuditVerificationError

        store = open_store()
        if since_file is not None:
            since = read_checkpoint(since_file)
            if since.signature is None:
                raise AuditVerificationError(f"--since needs a signed checkpoint; {since_file} is unsigned")
            _check_checkpoint_signature(store, since, since_file, trusted_keys)
            rep = store.verify_audit_since(since)
            if as_json:
                print_json({"ok": True, "size": rep.size, "head_hash": rep.head_hash, "since": since.size})
            else:
                click.echo(f"audit chain OK after the checkpoint of {since.time}: events {since.size + 1}..{rep.size}, "
                           f"head {rep.head_hash[:16]} (state tables not replayed: run without --since for that)")
            return
        checkpoints = [read_checkpoint(f) for f in checkpoint_files]
        notes = [_check_checkpoint_signature(store, cp, f, trusted_keys) for cp, f in zip(checkpoints, checkpoint_files)]
        # One pass per checkpoint: each proves the chain's first `size` events are the ones it saw.
        reports = [store.verify_audit(c) for c in sorted(checkpoints, key=lambda c: c.size)] or [store.verify_audit()]
        rep = reports[-1]
        cp = max(checkpoints, key=lambda c: c.size) if checkpoints else None
        for note in filter(None, notes):
            click.echo(f"note: {note}", err=True)
        wrong = store.verify_state()
        if wrong:
            raise AuditVerificationError(f"the chain verifies but the state does not agree with it: {wrong[0]}"
                                         + (f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""))
        if as_json:
            print_json({"ok": True, "size": rep.size, "head_hash": rep.head_hash,
                        "checkpoint_size": cp.size if cp else None, "state_agrees": True})
        else:
            suffix = f"; consistent with checkpoint of {cp.time} ({cp.size} events)" if cp else ""
            click.echo(f"audit chain OK: {rep.size} events, head {rep.head_hash[:16]}{suffix}; "
                       "state tables agree with the log")

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
