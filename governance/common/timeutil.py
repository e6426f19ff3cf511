"""UTC time: every timestamp saegov writes is UTC."""
from __future__ import annotations

import datetime as dt


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def iso_utc(value: dt.datetime) -> str:
    """Fixed-width ISO 8601 with microseconds and a `Z` suffix (the audit chain hashes it)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def iso_seconds(value: dt.datetime | None = None) -> str:
    """ISO 8601 to the second with a `Z` suffix (deployment manifests): `2026-12-02T05:24:06Z`."""
    value = value or utcnow()
    return value.astimezone(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def stamp(value: dt.datetime | None = None) -> str:
    """A timestamp for file names: `20261202-052406`."""
    return (value or utcnow()).astimezone(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
