"""One path from a checkpoint to predictions: the pipeline's predict task decodes as `cvflow predict`
does, with the run's EvalConfig (score threshold, NMS IoU, detections per image)."""

from __future__ import annotations

import polars as pl
import torch
from prefect.logging.loggers import disable_run_logger
from typer.testing import CliRunner

from cvcore.config import RunConfig
from cvcore.data.snapshot import read_snapshot
from cvcore.engine.checkpoint import save_checkpoint
from cvcore.models import build_model
from flows.cli import app
from tasks.infer import predict_shard
from tasks.ingest import snapshot_ref
from tasks.storage import file_sha256

runner = CliRunner()
SORT = ["image_id", "category_id", "score", "x1", "y1", "x2", "y2"]


def _yolo_checkpoint(path, snapshot, *, nms_iou: float):
    """A yolov1 checkpoint (fixed random weights, 64 px) whose run config sets eval.nms_iou."""
    torch.manual_seed(0)
    model = build_model("yolov1", num_classes=snapshot.num_classes, img_size=64)
    config = RunConfig.model_validate({"data": {"img_size": 64}, "model": {"name": "yolov1"}, "eval": {"nms_iou": nms_iou}})
    meta = {
        "model_name": "yolov1", "task": "detection", "num_classes": snapshot.num_classes, "class_names": snapshot.class_names,
        "img_size": 64, "options": {}, "config": config.model_dump(mode="json"),
    }  # fmt: skip
    return save_checkpoint({"model": model.state_dict(), "ema": None, "meta": meta}, path)


def _pipeline_predictions(checkpoint, snapshot, out_dir) -> pl.DataFrame:
    ref = snapshot_ref(snapshot)
    with disable_run_logger():
        done = predict_shard.fn(checkpoint, ref, "val", out_dir=out_dir, checkpoint_sha256=file_sha256(checkpoint), device="cpu")
    return pl.read_parquet(list(done.files)).sort(SORT)


def _cli_predictions(checkpoint, snapshot, out) -> pl.DataFrame:
    result = runner.invoke(app, ["predict", "--model", str(checkpoint), "--data", str(snapshot.path), "--split", "val", "--out", str(out), "--quiet", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return pl.read_parquet(out).sort(SORT)


def test_the_configured_nms_iou_changes_pipeline_predictions_as_it_changes_cvflow_predict(shapes_detection, tmp_path):
    snapshot = read_snapshot(shapes_detection.path)
    frames = {}
    for nms in (0.2, 0.9):
        ckpt = _yolo_checkpoint(tmp_path / f"nms-{nms}" / "best.pt", snapshot, nms_iou=nms)
        pipeline = _pipeline_predictions(ckpt, snapshot, tmp_path / f"nms-{nms}" / "preds")
        cli = _cli_predictions(ckpt, snapshot, tmp_path / f"nms-{nms}" / "cli.parquet")
        assert pipeline.equals(cli), f"nms_iou={nms}: the pipeline's predictions differ from cvflow predict's"
        frames[nms] = pipeline
    # The same weights: only the NMS IoU differs, and a looser NMS keeps more overlapping boxes.
    assert frames[0.2].height < frames[0.9].height
