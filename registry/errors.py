"""Domain errors of the registry, under saegov's one hierarchy (governance.common.errors): each
carries the exit code of its category; the CLI turns any of them into a one-line error."""
from __future__ import annotations

from governance.common.errors import (
    EXIT_AUDIT, EXIT_PERMISSION, EXIT_SCHEMA, EXIT_USAGE, SaegovError, UnreachableError,
)


class RegistryError(SaegovError):
    """Base class: a refusal or failure the user can act on (exit 1 unless a subclass says)."""


class ConfigError(RegistryError):
    """A bad database URL or workspace setting."""

    exit_code = EXIT_USAGE


class DatabaseUnreachable(RegistryError, UnreachableError):
    """The database cannot be opened or stopped answering."""


class SchemaOutOfDate(RegistryError):
    """The database is unmigrated or at another revision than this code expects."""

    exit_code = EXIT_SCHEMA


class NotFound(RegistryError):
    """An actor, concept, SAE, mapping, blocklist ... that does not exist."""


class AlreadyExists(RegistryError):
    """A unique name or version is already taken."""


class PermissionDenied(RegistryError):
    """Unknown actor, wrong role, or a four-eyes violation."""

    exit_code = EXIT_PERMISSION


class InvalidTransition(RegistryError):
    """A review action not allowed from the mapping's current state."""


class ValidationFailed(RegistryError):
    """A request the registry's rules refuse (an unapproved mapping, an empty blocklist ...)."""


class AuditVerificationError(RegistryError):
    """The audit chain does not verify; `seq` names the first bad event (None: not per-event)."""

    exit_code = EXIT_AUDIT

    def __init__(self, message: str, seq: int | None = None) -> None:
        super().__init__(message)
        self.seq = seq
