"""`saegov audit verify|checkpoint|log|explain`: the tamper-evident audit log, and what a
generation suppressed."""
from __future__ import annotations

from pathlib import Path

import click

from cli.common import emit, json_option, open_store, print_json, subgroup


def register(root: click.Group) -> None:
    grp = subgroup(root, "audit", "The hash-chained audit log.")

    @grp.command("verify")
    @click.option("--checkpoint", "checkpoint_file", type=click.Path(path_type=Path),
                  help="Also check against a checkpoint (detects truncation and rewriting).")
    @json_option
    def verify(checkpoint_file: Path | None, as_json: bool) -> None:
        """Recompute the chain and replay it against the state tables; exit non-zero naming the
        first bad event or the first row the log does not support."""
        from governance.formats.checkpoint import read_checkpoint

        from registry.errors import AuditVerificationError

        cp = read_checkpoint(checkpoint_file) if checkpoint_file is not None else None
        store = open_store()
        rep = store.verify_audit(cp)
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
    @json_option
    def checkpoint(out: Path, as_json: bool) -> None:
        """Verify, then write {size, head_hash, merkle_root, time} to FILE."""
        from governance.formats.checkpoint import write_checkpoint

        cp = open_store().audit_checkpoint()
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
