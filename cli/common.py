"""Shared helpers for `saegov` command modules: error handling, identity, store, output.

A command module looks like:

    from cli.common import actor_option, json_option, emit, open_store, registry_command, subgroup

    def register(root):
        sae = subgroup(root, "sae", "SAE versions.")   # shared with other modules

        @sae.command("list")
        @json_option
        @registry_command
        def list_(as_json):
            emit(open_store().list_saes(), as_json, columns=["id", "ref", "hook_point"])
"""
from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])
ENV_ACTOR = "SAEGOV_ACTOR"


def registry_command(fn: F) -> F:
    """Turn registry errors (and database errors) into a one-line message and exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from sqlalchemy.exc import SQLAlchemyError

        from registry.errors import RegistryError

        try:
            return fn(*args, **kwargs)
        except RegistryError as exc:
            fail(str(exc), exc.exit_code)
        except SQLAlchemyError as exc:
            msg = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            fail(f"database error: {msg[0] if msg else type(exc).__name__}", 2)

    return wrapper  # type: ignore[return-value]


def fail(message: str, code: int = 1) -> None:
    """Print `error: MESSAGE` (one line) to stderr and exit non-zero."""
    click.echo(f"error: {' '.join(str(message).split())}", err=True)
    raise SystemExit(code)


def actor_option(fn: F) -> F:
    """`--actor NAME` (default: $SAEGOV_ACTOR), passed to the command as `actor`."""
    return click.option("--actor", "actor", envvar=ENV_ACTOR, default=None, metavar="NAME",
                        help=f"Who is acting (default: ${ENV_ACTOR}).")(fn)


def number_list(value: str | None, name: str, cast: Callable[[str], Any] = float) -> list[Any]:
    """`1,2,4` -> [1, 2, 4]; a bad item is a usage error naming the option."""
    if not value:
        return []
    try:
        return [cast(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}", param_hint=name) from None


def resolve_actor(actor: str | None) -> str | None:
    return actor or os.environ.get(ENV_ACTOR) or None


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(fn)



def open_store(check: bool = True) -> Any:
    """The store for SAEGOV_DATABASE_URL / SAEGOV_HOME; refuses a stale schema."""
    from registry.store import Store

    return Store.open(check=check)


def subgroup(root: click.Group, name: str, help: str) -> click.Group:
    """Get or create the sub-group `name` so several modules can add commands to it."""
    existing = root.commands.get(name)
    if isinstance(existing, click.Group):
        return existing
    group = click.Group(name=name, help=help, context_settings={"help_option_names": ["-h", "--help"]})
    root.add_command(group)
    return group


def to_jsonable(obj: Any) -> Any:
    if hasattr(obj, "to_json"):
        return obj.to_json()
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    return obj


def print_json(obj: Any) -> None:
    click.echo(json.dumps(to_jsonable(obj), indent=2, sort_keys=True, ensure_ascii=False, default=str))


def emit(obj: Any, as_json: bool, columns: Sequence[str] | None = None, title: str | None = None) -> None:
    """Print a record or a list of records: JSON with --json, else a rich table."""
    if as_json:
        print_json(obj)
        return
    rows = obj if isinstance(obj, list) else [obj]
    data = [to_jsonable(r) for r in rows]
    if not columns:
        columns = list(data[0].keys()) if data else []
    print_table(data, columns, title)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*[_cell(r.get(c)) for c in columns])
    Console(width=max(120, len(columns) * 16)).print(table)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v):
        return v[:12]
    if isinstance(v, (dict, list)):
        return json.dumps(v, ensure_ascii=False)[:60]
    if isinstance(v, str) and len(v) >= 26 and v[4] == "-" and "T" in v:
        return v[:19].replace("T", " ")
    return str(v)
