"""`cvflow promote`: move a registry alias (champion by default) to a model version by hand."""

from __future__ import annotations

from typing import Annotated

import typer

from flows.commands._common import cli_errors, console
from flows.commands._pipeline import tracking_errors


@cli_errors
@tracking_errors
def promote(
    name: Annotated[str, typer.Argument(help="Registered model name (see `cvflow runs`).")],
    version: Annotated[str, typer.Argument(help="Version to promote.")],
    alias: Annotated[str, typer.Option(help="Alias to move.")] = "champion",
) -> None:
    """Point ALIAS (default champion) of registered model NAME at VERSION.

    The nightly flow promotes on evidence; this is the manual override (e.g. a rollback).
    """
    from tasks.registry import alias_version, set_alias

    before = alias_version(name, alias)
    ref = set_alias(name, alias, version)
    moved = f"from version {before} " if before and before != ref.version else ""
    console.print(
        f"{name}@{alias} moved {moved}to version {ref.version} (aliases now: {', '.join(ref.aliases)})", highlight=False
    )
