"""Domain exceptions of the registry. The CLI turns each into a one-line error."""
from __future__ import annotations


class RegistryError(Exception):
    """Base class: a refusal or failure the user can act on. The message is one line."""

    exit_code = 1


class ConfigError(RegistryError):
    """Bad database URL, unreachable database, bad workspace."""

    exit_code = 2


class SchemaOutOfDate(RegistryError):
    """The database is unmigrated or at another revision than this code expects."""

    exit_code = 3


class NotFound(RegistryError):
    """An actor, concept, SAE, mapping, blocklist ... that does not exist."""


class AlreadyExists(RegistryError):
    """A unique name or version is already taken."""


class PermissionDenied(RegistryError):
    """Unknown actor, wrong role, or a four-eyes violation."""

    exit_code = 4


class InvalidTransition(RegistryError):
    """A review action not allowed from the mapping's current state."""


class ValidationFailed(RegistryError):
    """Malformed input: JSON, config, safetensors, mapping, prompts ..."""


class AuditVerificationError(RegistryError):
    """The audit chain does not verify; `seq` names the first bad event (None: not per-event)."""

    exit_code = 5

    def __init__(self, message: str, seq: int | None = None) -> None:
        super().__init__(message)
        self.seq = seq
