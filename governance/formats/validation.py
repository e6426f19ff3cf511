"""Reading JSON into a pydantic model with one-line errors (FormatError), and the one-line
form of any pydantic ValidationError."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from governance.common.errors import FormatError

M = TypeVar("M", bound=BaseModel)


def validation_message(exc: ValidationError) -> str:
    """`loc: msg (+N more)` of the first error, without pydantic's `Value error, ` prefix."""
    err = exc.errors()[0]
    msg = str(err["msg"]).removeprefix("Value error, ")
    loc = ".".join(str(p) for p in err["loc"])
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{loc}: {msg}{more}" if loc else f"{msg}{more}"


def validate_model(model: type[M], data: Any, what: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        msg = validation_message(exc)
        if not exc.errors()[0]["loc"]:
            msg = f"(root): {msg}"
        raise FormatError(f"{what}: {msg}") from None


def parse_json_model(model: type[M], raw: str | bytes, what: str) -> M:
    """Parse and validate JSON; any problem becomes a one-line `FormatError`."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"{what}: malformed JSON ({exc})") from None
    except RecursionError:
        raise FormatError(f"{what}: JSON nested too deeply") from None
    return validate_model(model, data, what)


# Names of registered things (concepts, SAEs, blocklists): they appear in MLflow model names,
# folder names, subjects of audit events and terminal tables, so plain ASCII with no separators.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_DESCRIPTION = 4000


def check_name(name: str, what: str) -> str:
    """`name` if it is 1-128 ASCII letters, digits, '.', '_' or '-' (starting with a letter or
    digit); else a one-line FormatError."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        shown = repr(name[:40] + ("..." if len(name) > 40 else "")) if isinstance(name, str) else repr(name)
        raise FormatError(f"invalid {what} name {shown}: 1-128 ASCII letters, digits, '.', '_' or '-', starting "
                          "with a letter or digit")
    return name


def read_json_model(model: type[M], path: Path, what: str | None = None) -> M:
    """A JSON file into `model`; a missing or unreadable file is a `FormatError` too."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise FormatError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return parse_json_model(model, raw, what or str(path))
