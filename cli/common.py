"""Shared helpers for `saegov` command modules: the one error handler, identity, store, output.

A command module looks like:

    from cli.common import actor_option, emit, json_option, open_store, subgroup

    def register(root):
        sae = subgroup(root, "sae", "SAE versions.")   # shared with other modules

        @sae.command("list")
        @json_option
        def list_(as_json):
            emit(open_store().list_saes(), as_json, columns=["id", "ref", "hook_point"])

Errors: every command runs inside `one_line_errors` (the root group applies it), which turns any
`SaegovError` (registry and governance alike), a pydantic validation error, a database or MLflow
failure and an OS error into `error: MESSAGE` on stderr and the documented exit code
(governance.common.errors). Commands raise; they never catch library errors themselves.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from governance.common.errors import EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE, SaegovError, UsageError, first_line
from governance.common.workspace import ENV_ACTOR

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = EXIT_REFUSED) -> None:
    """Print `error: MESSAGE` (one line) to stderr and exit non-zero."""
    click.echo(f"error: {' '.join(str(message).split())}", err=True)
    raise SystemExit(code)


def error_line(exc: BaseException) -> tuple[str, int] | None:
    """(message, exit code) for an error the user can act on; None for a bug (kept as a traceback)."""
    if isinstance(exc, SaegovError):
        return str(exc), exc.exit_code
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(exc, pydantic.ValidationError):
        from governance.formats.validation import validation_message

        return validation_message(exc), EXIT_USAGE
    sa_exc = sys.modules.get("sqlalchemy.exc")
    if sa_exc is not None and isinstance(exc, sa_exc.OperationalError):
        return f"database error: {first_line(exc)}", EXIT_UNREACHABLE
    if sa_exc is not None and isinstance(exc, sa_exc.SQLAlchemyError):
        return f"database error: {first_line(exc)}", EXIT_REFUSED
    ml_exc = sys.modules.get("mlflow.exceptions")
    if ml_exc is not None and isinstance(exc, ml_exc.MlflowException):
        return f"MLflow: {first_line(exc)}", EXIT_REFUSED
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or first_line(exc)}", EXIT_REFUSED
    return None


def one_line_errors(fn: F) -> F:
    """The CLI's one error decorator (see the module docstring)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.ClickException, click.exceptions.Abort, click.exceptions.Exit, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - classified below; bugs re-raised
            line = error_line(exc)
            if line is None:
                raise
            fail(*line)

    return wrapper  # type: ignore[return-value]


def quiet_output() -> None:
    """A command's stderr is its progress, its MLflow links and its one-line error: no library
    progress bars, hints or warnings (torchvision, accelerate, transformers, diffusers, hub
    downloads, MLflow). Environment defaults only, so that `--help` still imports no torch; the
    library loggers are set where the libraries are loaded (governance.basemodel.loading)."""
    for name, value in (("TRANSFORMERS_VERBOSITY", "error"), ("DIFFUSERS_VERBOSITY", "error"),
                        ("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")):
        os.environ.setdefault(name, value)
    from governance.tracking.runs import quiet_mlflow

    quiet_mlflow()


@contextlib.contextmanager
def announce_runs() -> Any:
    """Print, on stderr, a link to every MLflow run the command finished (its UI page on a
    tracking server, else its id), once the command has succeeded: stdout stays clean for
    `--json`, and a failure stays one line."""
    from governance.tracking.runs import collect_finished_runs

    with collect_finished_runs() as runs:
        try:
            yield
        except SystemExit as exc:
            if exc.code in (0, None):
                _echo_runs(runs)
            raise
        _echo_runs(runs)


def _echo_runs(runs: Sequence[Any]) -> None:
    for run in runs:
        click.echo(f"MLflow run: {run.link}", err=True)


class SaegovGroup(click.Group):
    """The root group: every sub-command it invokes runs inside `one_line_errors`, and click's own
    usage errors are one line too (`error: saegov deploy build: Missing option '--out'.`)."""

    @one_line_errors
    def invoke(self, ctx: click.Context) -> Any:
        return super().invoke(ctx)

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        quiet_output()
        with announce_runs():
            return self._main(args, prog_name, complete_var, standalone_mode, **extra)

    def _main(self, args: Any, prog_name: str | None, complete_var: str | None, standalone_mode: bool,
              **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.ClickException as exc:
            where = f"{exc.ctx.command_path}: " if getattr(exc, "ctx", None) is not None else ""
            hint = " (see --help)" if isinstance(exc, click.exceptions.UsageError) else ""
            fail(f"{where}{exc.format_message()}{hint}", exc.exit_code)
        except click.exceptions.Abort:
            fail("aborted", EXIT_REFUSED)
        raise SystemExit(rv if isinstance(rv, int) else 0)


def actor_option(fn: F) -> F:
    """`--actor NAME` (default: $SAEGOV_ACTOR), passed to the command as `actor`."""
    return click.option("--actor", "actor", envvar=ENV_ACTOR, default=None, metavar="NAME",
                        help=f"Who is acting (default: ${ENV_ACTOR}).")(fn)


def resolve_actor(actor: str | None) -> str | None:
    return actor or os.environ.get(ENV_ACTOR) or None


# Seeds become torch generator seeds and BigInteger columns (prompt i of a run uses seed + i, so
# leave room); step counts divide the scheduler's 1000 training timesteps; guidance is a finite scale.
MAX_SEED = 2**62
SEED = click.IntRange(0, MAX_SEED)
STEPS = click.IntRange(1, 1000)
GUIDANCE = click.FloatRange(-100.0, 100.0)


def number_list(value: str | None, name: str, cast: Callable[[str], Any] = float) -> list[Any]:
    """`1,2,4` -> [1, 2, 4]; a bad item is a usage error naming the option (integers are seeds:
    in [0, 2**62]; floats must be finite)."""
    if not value:
        return []
    try:
        out = [cast(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}", param_hint=name) from None
    for v in out:
        if (cast is int and not 0 <= v <= MAX_SEED) or (isinstance(v, float) and not math.isfinite(v)):
            raise click.BadParameter(f"{v} is out of range", param_hint=name)
    return out


def parse_ref(ref: str, what: str = "blocklist") -> tuple[str, int | None]:
    """`NAME` or `NAME@VERSION`."""
    name, sep, version = ref.partition("@")
    if not sep:
        return name, None
    if not version.isdigit():
        raise UsageError(f"bad {what} reference {ref!r} (use NAME or NAME@VERSION)")
    return name, int(version)


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(fn)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A `--device` callback: the device must exist here (refused before any work starts)."""
    if value is None:
        return None
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise click.BadParameter(f"unknown device {value!r} (cpu, cuda, cuda:N)", param=param) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise click.BadParameter(f"{value}: no CUDA device here (torch {torch.__version__})", param=param)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise click.BadParameter(f"{value}: only {torch.cuda.device_count()} CUDA device(s)", param=param)
    elif device.type != "cpu":
        raise click.BadParameter(f"unsupported device {value!r} (cpu, cuda, cuda:N)", param=param)
    return value


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
