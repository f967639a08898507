"""Shared helpers of the command line: clean errors (UserError, one line, exit 2) and the console."""

from __future__ import annotations

import functools
import logging
from typing import Callable, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable)


class UserError(Exception):
    """An error the user caused and can fix (an option, a path, an input file, the environment).

    Its message names the input and says what is wrong, in one line. The checks that run before
    any flow starts (flows.commands._pipeline) raise it.
    """


# Errors a user can cause, reported as one clear line and exit code 2. The library's convention
# (docs/ARCHITECTURE.md §6) is a ValueError naming the input (SnapshotError, CheckpointError, pydantic's
# ValidationError are ValueErrors); the OS errors are those of a path the user gave. Anything
# else is a bug and keeps its traceback: KeyError, TypeError, RecursionError... are converted to
# a ValueError where they are known to mean bad input (cvcore.config, cvcore.models), never here.
USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError, ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError,
)  # fmt: skip


def cli_errors(fn: F) -> F:
    """Turn user errors raised by a command into ``error: <message>`` on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            fail(str(exc))

    return wrapper  # type: ignore[return-value]


def fail(message: str, *, code: int = 2) -> NoReturn:
    """Print ``error: <message>`` on stderr (markup off: messages hold user data) and exit."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True, emoji=False)
    raise typer.Exit(code=code) from None


def setup_logging(verbose: bool = False) -> None:
    """Library logs (cvcore uses `logging`) to stderr: warnings by default, info with --verbose."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
