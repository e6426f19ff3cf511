"""An exported audit log (`saegov audit export`, format `saegov.audit-log/v1`): JSON lines, a
header line then one event per line, each with exactly the stored text that was hashed and its
actor's signature. `saegov audit verify --log FILE --trusted-keys KEYS` checks it without the
registry: the chain, every signature, the key history from the trusted roots, four-eyes by key.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from governance.common.errors import FormatError

AUDIT_LOG_FORMAT = "saegov.audit-log/v1"
_MAX_LINE = 1 << 20  # an event line longer than this is not one saegov wrote


class AuditLogHeader(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["saegov.audit-log/v1"] = AUDIT_LOG_FORMAT
    size: int = Field(ge=0)
    head_hash: str = Field(pattern=r"^[0-9a-f]{64}$")


class ExportedEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    seq: int = Field(ge=1)
    created_at: str = Field(max_length=32)
    actor: str = Field(max_length=128)
    action: str = Field(max_length=64)
    subject: str = Field(max_length=256)
    payload: str
    prev_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    signer_key: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    signature: str | None = Field(default=None, pattern=r"^[0-9a-f]{128}$")

    def row(self) -> tuple:
        return (self.seq, self.created_at, self.actor, self.action, self.subject, self.payload,
                self.prev_hash, self.hash, self.signer_key, self.signature)


_FIELDS = list(ExportedEvent.model_fields)


def write_audit_log(path: Path, header: AuditLogHeader, rows: Iterable[tuple]) -> int:
    """Write the header and `rows` (registry.audit.iter_event_rows' columns) to `path`, via a
    temporary file renamed at the end (nothing half-written stays); returns the event count."""
    tmp = Path(path).with_name(Path(path).name + ".partial")
    n = 0
    if Path(path).is_dir() or not Path(path).parent.is_dir():
        raise FormatError(f"cannot write {path}: " + ("it is a folder" if Path(path).is_dir() else
                                                      f"no folder {Path(path).parent}"))
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write(json.dumps(header.model_dump(mode="json"), sort_keys=True) + "\n")
            for row in rows:
                fh.write(json.dumps(dict(zip(_FIELDS, row)), ensure_ascii=False) + "\n")
                n += 1
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return n


def read_audit_log(path: Path) -> tuple[AuditLogHeader, Iterator[tuple]]:
    """The header, and the events as rows (streamed, each validated; a bad line is a one-line
    FormatError naming it)."""
    try:
        fh = Path(path).open("r", encoding="utf-8")
    except OSError as exc:
        raise FormatError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        header = AuditLogHeader.model_validate_json(fh.readline(_MAX_LINE))
    except (ValidationError, UnicodeDecodeError) as exc:
        fh.close()
        why = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else "not UTF-8"
        raise FormatError(f"{path}: not a saegov audit log ({why})") from None

    def rows() -> Iterator[tuple]:
        with fh:
            number = 1
            try:
                for number, line in enumerate(fh, start=2):
                    if len(line) >= _MAX_LINE:
                        raise FormatError(f"{path}:{number}: line too long for an audit event")
                    try:
                        yield ExportedEvent.model_validate_json(line).row()
                    except ValidationError as exc:
                        raise FormatError(f"{path}:{number}: not an audit event ({exc.errors()[0]['msg']})") from None
            except UnicodeDecodeError:
                raise FormatError(f"{path}:{number + 1}: not UTF-8") from None

    return header, rows()
