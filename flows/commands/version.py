"""`cvflow version`: versions of cvflow and the libraries it runs on."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version as _version

from flows.commands._common import console


def version() -> None:
    """Print the versions of cvflow, torch, torchvision, prefect, mlflow and polars."""
    for pkg in ("cvflow", "torch", "torchvision", "prefect", "mlflow", "polars"):
        try:
            console.print(f"{pkg} {_version(pkg)}")
        except PackageNotFoundError:
            console.print(f"{pkg} (not installed)")
