"""Helpers every stage shares, torch-free (registry/ imports them too): the error hierarchy,
canonical JSON, sha256, UTC time, the workspace and URIs."""
from __future__ import annotations

from governance.common.errors import (
    FormatError, GovernanceError, SaegovError, UnreachableError, UsageError, first_line,
)
from governance.common.hashing import sha256_bytes, sha256_file, sha256_text
from governance.common.jsonio import canonical_json, pretty_json, write_json_atomic, write_text_atomic
from governance.common.timeutil import iso_seconds, iso_utc, stamp, utcnow
from governance.common.workspace import uri_to_path, workspace_home

__all__ = [
    "FormatError", "GovernanceError", "SaegovError", "UnreachableError", "UsageError", "canonical_json",
    "first_line", "iso_seconds", "iso_utc", "pretty_json", "sha256_bytes", "sha256_file", "sha256_text", "stamp",
    "uri_to_path", "utcnow", "workspace_home", "write_json_atomic", "write_text_atomic",
]
