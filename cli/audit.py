"""`saegov audit verify|checkpoint|log`: the tamper-evident audit log."""
from __future__ import annotations

from pathlib import Path

import click

from cli.common import emit, json_option, open_store, print_json, registry_command, subgroup


def register(root: click.Group) -> None:
    grp = subgroup(root, "audit", "The hash-chained audit log.")

    @grp.command("verify")
    @click.option("--checkpoint", "checkpoint_file", type=click.Path(path_type=Path),
                  help="Also check against a checkpoint (detects truncation and rewriting).")
    @json_option
    @registry_command
    def verify(checkpoint_file: Path | None, as_json: bool) -> None:
        """Recompute the chain; exit non-zero naming the first bad event."""
        from registry.errors import ValidationFailed
        from registry.schemas import Checkpoint, parse_json_model

        cp = None
        if checkpoint_file is not None:
            try:
                raw = checkpoint_file.read_bytes()
            except OSError as exc:
                raise ValidationFailed(f"{checkpoint_file}: cannot read ({exc.strerror})") from None
            cp = parse_json_model(Checkpoint, raw, str(checkpoint_file))
        rep = open_store().verify_audit(cp)
        if as_json:
            print_json({"ok": True, "size": rep.size, "head_hash": rep.head_hash,
                        "checkpoint_size": cp.size if cp else None})
        else:
            suffix = f"; consistent with checkpoint of {cp.time} ({cp.size} events)" if cp else ""
            click.echo(f"audit chain OK: {rep.size} events, head {rep.head_hash[:16]}{suffix}")

    @grp.command("checkpoint")
    @click.option("--out", "out", type=click.Path(path_type=Path), required=True)
    @json_option
    @registry_command
    def checkpoint(out: Path, as_json: bool) -> None:
        """Verify, then write {size, head_hash, merkle_root, time} to FILE."""
        import json

        from registry.errors import ValidationFailed

        cp = open_store().audit_checkpoint()
        try:
            out.write_text(json.dumps(cp.model_dump(), indent=2) + "\n")
        except OSError as exc:
            raise ValidationFailed(f"{out}: cannot write ({exc.strerror})") from None
        if as_json:
            print_json({"path": str(out), **cp.model_dump()})
            return
        click.echo(f"checkpoint: {cp.size} events, root {cp.merkle_root[:16]} -> {out}")

    @grp.command("log")
    @click.option("--actor", "who", help="Only events by this actor (not an identity).")
    @click.option("--subject", help="e.g. mapping:3 (a trailing * matches a prefix).")
    @click.option("--action", help="e.g. mapping.approve (a trailing * matches a prefix).")
    @click.option("--since", "since_seq", type=int, help="From this sequence number.")
    @click.option("--limit", type=int)
    @json_option
    @registry_command
    def log(who: str | None, subject: str | None, action: str | None, since_seq: int | None,
            limit: int | None, as_json: bool) -> None:
        """Show audit events."""
        events = open_store().audit_events(actor=who, subject=subject, action=action,
                                           since_seq=since_seq, limit=limit)
        emit(events, as_json, ["seq", "created_at", "actor", "action", "subject", "payload", "hash"])
