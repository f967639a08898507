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
from cvcore.io import file_sha256
from cvcore.models import build_model
from flows.cli import app
from tasks.infer import predict_shard
from tasks.ingest import snapshot_ref

runner = CliRunner()
SORT = ["image_id", "category_id", "score", "x1", "y1", "x2", "y2"]


def _yolo_checkpoint(path, snapshot, *, nms_iou: float):
    """A yolov1 checkpoint (fixed random weights, 64 px) whose run config sets eval.nms_iou."""
    torch.manual_seed(0)
    model = build_model("yolov1", num_classes=snapshot.num_classes, img_size=64)
    config = RunConfig.model_validate(
        {"data": {"img_size": 64}, "model": {"name": "yolov1"}, "eval": {"nms_iou": nms_iou}}
    )
    meta = {
        "model_name": "yolov1", "task": "detection", "num_classes": snapshot.num_classes, "class_names": snapshot.class_names,
        "img_size": 64, "options": {}, "config": config.model_dump(mode="json"),
    }  # fmt: skip
    return save_checkpoint({"model": model.state_dict(), "ema": None, "meta": meta}, path)


def _pipeline_predictions(checkpoint, snapshot, out_dir) -> pl.DataFrame:
    ref = snapshot_ref(snapshot)
    with disable_run_logger():
        done = predict_shard.fn(
            checkpoint, ref, "val", out_dir=out_dir, checkpoint_sha256=file_sha256(checkpoint), device="cpu"
        )
    return pl.read_parquet(list(done.files)).sort(SORT)


def _cli_predictions(checkpoint, snapshot, out) -> pl.DataFrame:
    result = runner.invoke(
        app,
        [
            "predict",
            "--model",
            str(checkpoint),
            "--data",
            str(snapshot.path),
            "--split",
            "val",
            "--out",
            str(out),
            "--quiet",
            "--device",
            "cpu",
        ],
    )
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


def test_cvflow_predict_reports_an_unreadable_image_and_records_it_in_the_file(shapes_detection, tmp_path):
    import shutil

    from cvcore.engine.shards import read_unreadable_shards

    shutil.copytree(shapes_detection.path, tmp_path / "snap")
    snapshot = read_snapshot(tmp_path / "snap")
    bad = snapshot.split_images("val").sort("image_id").row(0, named=True)
    snapshot.image_path(bad["file_name"]).write_bytes(b"")  # a zero-byte file, as an interrupted copy leaves
    ckpt = _yolo_checkpoint(tmp_path / "run" / "best.pt", snapshot, nms_iou=0.5)
    out = tmp_path / "preds.parquet"
    result = runner.invoke(
        app,
        [
            "predict",
            "--model",
            str(ckpt),
            "--data",
            str(snapshot.path),
            "--split",
            "val",
            "--out",
            str(out),
            "--quiet",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "warning: 1 image(s) could not be read and have no prediction" in text and bad["file_name"] in text
    recorded = read_unreadable_shards([out])
    assert recorded["image_id"].to_list() == [bad["image_id"]] and recorded["file_name"][0].endswith(bad["file_name"])
    assert bad["image_id"] not in pl.read_parquet(out)["image_id"].to_list()
