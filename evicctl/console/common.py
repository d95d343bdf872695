"""What every CLI command shares: options, opening the store, validating names, and the
one place where errors become one line on stderr and an exit code."""

from __future__ import annotations

import importlib
import sqlite3
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

from evicctl.console.output import OutputFormat
from evicctl.errors import (
    EXIT_ERROR,
    EXIT_USAGE,
    EvicctlError,
    StoreError,
    UnknownNameError,
    UsageError,
)

DbOpt = Annotated[
    Path | None,
    typer.Option(
        "--db",
        envvar="EVICCTL_DB",
        help="Database file (default: $XDG_STATE_HOME/evicctl/evicctl.db).",
        show_default=False,
        readable=False,  # the store checks access and says what is wrong in one line
    ),
]
OutputOpt = Annotated[
    OutputFormat,
    typer.Option("--output", "-o", help="table on a terminal; json, jsonl or csv for scripts.", case_sensitive=False),
]
TimeoutOpt = Annotated[float, typer.Option("--timeout", min=0.0, help="Seconds to wait for the manager.")]
NoWaitOpt = Annotated[bool, typer.Option("--no-wait", help="Queue the command and return its id at once.")]

_current_db: list[Path] = []  # the database the running command opened, for error messages


def db_path(db: Path | None) -> Path:
    from evicctl.config import default_db_path

    path = Path(db).expanduser() if db is not None else default_db_path()
    _current_db[:] = [path]
    return path


def open_reader(db: Path | None):
    """A read-only store: never writes, never blocks the manager."""
    from evicctl.store.database import Store

    return Store.open(db_path(db), readonly=True)


def tier_names(store) -> list[str]:
    return [r["name"] for r in store.query("SELECT name FROM tiers ORDER BY rank, name")]


def validate_tier(store, name: str, *, extra: tuple[str, ...] = ()) -> str:
    valid = tier_names(store) + list(extra)
    if name not in valid:
        if not valid:
            raise UsageError(f"unknown tier {name!r}; the database lists no tiers yet (no manager has started)")
        raise UnknownNameError("tier", name, valid)
    return name


def validate_codec(name: str) -> str:
    """The canonical spelling of a codec name, or UnknownNameError listing the valid forms.

    Torch-free: the name is parsed, no codec is built (importing the codecs costs seconds)."""
    from evicctl.manager.codecs.names import validate_codec_name

    return validate_codec_name(name)


def validate_sort(sort: str) -> str:
    from evicctl.snapshot.read import SORT_KEYS

    if sort not in SORT_KEYS:
        raise UnknownNameError("sort key", sort, tuple(SORT_KEYS))
    return sort


def lazy_attr(module: str, attr: str, what: str) -> Any:
    """Import an optional part on use; absent -> one clear line, not a traceback."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = exc.name or module
        if module == missing or module.startswith(missing + "."):
            raise EvicctlError(f"{what} is not available in this installation (module {module} is missing)") from None
        raise EvicctlError(f"{what} needs the Python package {missing!r}; install it with pip") from None
    try:
        return getattr(mod, attr)
    except AttributeError:
        raise EvicctlError(f"{what} is not available in this installation ({module}.{attr} is missing)") from None


def err(message: str) -> None:
    sys.stderr.write(f"evicctl: {message}\n")
    sys.stderr.flush()


def _one_line(text: str) -> str:
    return " ".join(text.split())


class EvicctlGroup(TyperGroup):
    """Runs a command and turns every error into one stderr line and its exit code."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        code = self._run(args, prog_name or "evicctl", complete_var, **extra)
        if standalone_mode:
            sys.exit(code)
        return code

    def _run(self, args, prog_name, complete_var, **extra) -> int:
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False, **extra)
        except TyperException as exc:
            # Typer's public base class of its (vendored click) usage errors; which one it is
            # shows in the exit code (2 for usage) and in the class name, not a private import.
            ctx = getattr(exc, "ctx", None)
            if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
                sys.stdout.write(ctx.get_help() + "\n")
                return EXIT_USAGE
            hint = ""
            if exc.exit_code == EXIT_USAGE and ctx is not None:
                hint = f" (see '{ctx.command_path} --help')"
            err(_one_line(exc.format_message()) + hint)
            return exc.exit_code
        except typer.Abort:
            err("aborted")
            return EXIT_ERROR
        except EvicctlError as exc:
            err(_one_line(str(exc)))
            return exc.exit_code
        except sqlite3.Error as exc:
            from evicctl.store.database import translate_error

            error: StoreError = translate_error(exc, _current_db[0] if _current_db else "(database)")
            err(_one_line(str(error)))
            return error.exit_code
        return rv if isinstance(rv, int) else 0
