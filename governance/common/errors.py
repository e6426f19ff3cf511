"""The one error hierarchy of saegov. Every error the user can act on is a `SaegovError`: a
one-line message and the exit code its category carries. The CLI turns any of them into
`error: MESSAGE` on stderr and that exit code (docs/architecture.md, "Errors").

Exit codes:
    1  refused or impossible (the request is well formed but cannot be honoured)
    2  usage: a bad option, setting or input file
    3  the registry database's schema is not the one this saegov needs
    4  permission denied (identity, role, four-eyes)
    5  the audit log does not verify
    6  the database or a server (MLflow, a model hub) is unreachable
"""
from __future__ import annotations

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_SCHEMA = 3
EXIT_PERMISSION = 4
EXIT_AUDIT = 5
EXIT_UNREACHABLE = 6


class SaegovError(Exception):
    """Base class: a refusal or failure the user can act on. The message is one line."""

    exit_code = EXIT_REFUSED


class UsageError(SaegovError):
    """A bad option, setting or input the user gave."""

    exit_code = EXIT_USAGE


class FormatError(UsageError):
    """A file or JSON document that is not the saegov format it claims to be."""


class UnreachableError(SaegovError):
    """The database, the MLflow server or a model hub could not be reached."""

    exit_code = EXIT_UNREACHABLE


class GovernanceError(SaegovError):
    """Base of the errors raised by governance/ (models, SAEs, scoring, enforcement, evaluation)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its class name when it has none)."""
    msg = str(getattr(exc, "orig", None) or exc).strip()
    return msg.splitlines()[0] if msg else type(exc).__name__
