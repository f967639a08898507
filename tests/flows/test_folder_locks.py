"""Folders two runs could share: a predictions folder another evaluation holds is refused at once."""

from __future__ import annotations

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from cvcore.config import RunConfig
from cvcore.data.synthetic import SHAPES
from cvcore.engine.checkpoint import save_checkpoint
from cvcore.engine.locks import FolderInUse, folder_lock, sibling_lock_file
from cvcore.models import build_model
from flows.evaluate import evaluate_pipeline
from flows.params import DataSource, EvaluatePipelineParams


@pytest.fixture
def env(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("CVFLOW_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    yield home
    mlflow.set_tracking_uri(None)


@pytest.fixture
def checkpoint(tmp_path):
    """A resnet18 classifier checkpoint (random weights, the 4 shape classes, 32 px)."""
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=len(SHAPES), img_size=32)
    meta = {
        "model_name": "resnet18", "task": "classification", "num_classes": len(SHAPES), "class_names": list(SHAPES),
        "img_size": 32, "options": {}, "config": RunConfig.model_validate({"data": {"img_size": 32}}).model_dump(mode="json"),
    }  # fmt: skip
    return save_checkpoint({"model": model.state_dict(), "ema": None, "meta": meta}, tmp_path / "run" / "best.pt")


def test_an_evaluation_into_a_predictions_folder_in_use_fails_at_once(env, checkpoint, shapes_classification, tmp_path):
    preds = tmp_path / "preds"
    params = EvaluatePipelineParams(
        model=str(checkpoint), data=DataSource(path=shapes_classification.path), split="val", predictions=str(preds)
    )
    with folder_lock(
        preds, what="evaluation", lock_file=sibling_lock_file(preds)
    ):  # another evaluation, writing there now
        with pytest.raises(
            FolderInUse, match=f"{preds} is in use by another run .*one evaluation per folder at a time"
        ):
            evaluate_pipeline(params)
    assert not list(preds.iterdir())  # nothing predicted into the other run's folder
    [run] = MlflowClient().search_runs([e.experiment_id for e in MlflowClient().search_experiments()])
    assert run.info.status == "FAILED" and "is in use" in run.data.tags["cvflow.failure"]

    result = evaluate_pipeline(params)  # once it is free, the same evaluation runs
    assert sorted(p.name for p in preds.iterdir()) == [
        "part-00000.parquet"
    ]  # the lock file is beside the folder, not in it
    assert str(result.predictions) == str(preds)
