"""JSON as saegov writes it: canonical (hashed, signed) and pretty (for people), atomically."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 (not ASCII-escaped), no NaN: the bytes that are hashed
    and signed (audit events, blocklist content, deployment manifests, traces)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True,
                      allow_nan=False, default=str)


def pretty_json(value: Any) -> str:
    """Indented, sorted keys, with a final newline: files meant to be read."""
    return json.dumps(value, indent=2, sort_keys=True) + "\n"


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, fsync, then rename (atomic on POSIX)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, pretty_json(data))
