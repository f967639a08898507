"""Fixtures of the task tests: a temporary MLflow store and a tiny real checkpoint.

Task bodies are called through ``.fn`` (no Prefect server) with Prefect's run logger disabled.
"""

from __future__ import annotations

import shutil

import mlflow
import pytest


@pytest.fixture(scope="session")
def _empty_store(tmp_path_factory):
    """An empty MLflow SQLite store, made once: creating the schema takes seconds, copying it none."""
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    mlflow.set_tracking_uri(None)
    return db


@pytest.fixture
def home(tmp_path, monkeypatch, _empty_store):
    """A fresh CVFLOW_HOME whose embedded SQLite MLflow store is the tracking URI."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(_empty_store, home / "mlflow.db")
    monkeypatch.setenv("CVFLOW_HOME", str(home))
    # mlflow.set_tracking_uri exports the URI to the environment; monkeypatch restores it after.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    yield home
    mlflow.set_tracking_uri(None)


@pytest.fixture(autouse=True)
def _quiet_run_logger():
    from prefect.logging.loggers import disable_run_logger

    with disable_run_logger():
        yield


@pytest.fixture
def checkpoint(tmp_path):
    """A resnet18 classifier checkpoint (random weights, 4 shape classes, 32 px) as the engine writes it."""
    import torch

    from cvcore.config import RunConfig
    from cvcore.data.synthetic import SHAPES
    from cvcore.engine.checkpoint import save_checkpoint
    from cvcore.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=len(SHAPES), img_size=32)
    meta = {
        "model_name": "resnet18", "task": "classification", "num_classes": len(SHAPES), "class_names": list(SHAPES),
        "img_size": 32, "options": {}, "config": RunConfig.model_validate({"data": {"img_size": 32}}).model_dump(mode="json"),
    }  # fmt: skip
    return save_checkpoint({"model": model.state_dict(), "ema": None, "meta": meta}, tmp_path / "run" / "best.pt")
