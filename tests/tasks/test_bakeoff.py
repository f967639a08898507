"""The bake-off's work without Prefect or MLflow (tasks/bakeoff.py): train or reuse a contender,
score it, the table's Markdown and files; the flow around it is tests/flows/test_compare_flow.py."""

from __future__ import annotations

import json
import math
import shutil

import polars as pl
import pytest
from PIL import Image

from cvcore import schema
from tasks.bakeoff import TABLE_SCHEMA, run_state, score_run, table_markdown, train_or_reuse, write_bakeoff

FAST = {
    "data": {"img_size": 64},
    "model": {"options": {"warp_size": 32, "max_proposals": 30, "small_input": False}},
    "train": {"batch_size": 8},
}


def _table():
    rows = [
        {"model": "a", "map_50": 0.8, "map": 0.5, "map_small": 0.4, "map_medium": 0.6, "map_large": math.nan, "recall_crowded": 0.7,
         "recall_isolated": 0.9, "n_crowded": 3, "n_isolated": 10, "candidates_per_image": 50.0, "proposal_recall_50": 1.0, "proposal_recall_70": 0.9, "train_s": 12.0, "train_cpu_s": 20.0, "epochs": 2,
         "infer_images_per_s": 5.0, "infer_cpu_ms_per_image": 300.0, "params_m": 11.2},
        {"model": "b", "map_50": 0.6, "map": 0.3, "map_small": 0.1, "map_medium": 0.5, "map_large": math.nan, "recall_crowded": 0.2,
         "recall_isolated": 0.8, "n_crowded": 3, "n_isolated": 10, "candidates_per_image": 98.0, "proposal_recall_50": math.nan, "proposal_recall_70": math.nan, "train_s": 30.0, "train_cpu_s": 50.0, "epochs": 4,
         "infer_images_per_s": 200.0, "infer_cpu_ms_per_image": 8.0, "params_m": 20.0},
    ]  # fmt: skip
    return pl.DataFrame(rows, schema=TABLE_SCHEMA)


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_table_markdown():
    text = table_markdown(_table())
    lines = text.strip().splitlines()
    assert lines[0].startswith("| model") and "map_50" in lines[0] and len(lines) == 4
    assert _cells(lines[0]) == list(TABLE_SCHEMA)  # every column, in the schema's order
    assert set(lines[1]) == {"|", "-"}
    assert _cells(lines[2]) == ["**a** (best trade-off)", "0.800", "0.500", "0.400", "0.600", "NaN", "0.700", "0.900", "3", "10", "50.000",
                                "1.000", "0.900", "12.000", "20.000", "2", "5.000", "300.000", "11.200"]  # fmt: skip
    assert _cells(lines[3]) == ["b", "0.600", "0.300", "0.100", "0.500", "NaN", "0.200", "0.800", "3", "10", "98.000",
                                "NaN", "NaN", "30.000", "50.000", "4", "200.000", "8.000", "20.000"]  # fmt: skip
    assert text.endswith(" |\n")  # a is the best trade-off: b is faster but 0.2 mAP@0.5 below


def test_markdown_marks_the_pick():
    rows = [("yolov1", 0.6, 20.0), ("fcos", 0.9, 25.0)]
    full = [
        {**{k: None for k in TABLE_SCHEMA}, "model": m, "map": q, "map_50": q + 0.2, "infer_cpu_ms_per_image": c}
        for m, q, c in rows
    ]
    text = table_markdown(pl.DataFrame(full, schema=TABLE_SCHEMA))
    assert "**fcos** (best trade-off)" in text and "**yolov1**" not in text


@pytest.fixture(scope="module")
def tiny_run(shapes_detection, tmp_path_factory):
    """One tiny R-CNN run (64-px images, 32-px warps, one epoch), scored on val."""
    out = tmp_path_factory.mktemp("bakeoff")
    run_dir = train_or_reuse(shapes_detection, "rcnn", out=out, epochs=1, pretrained=None, device="cpu", overrides=FAST)
    scored = score_run(
        shapes_detection, "rcnn", run_dir, out=out, split="val", protocol="coco", device="cpu", batch_size=8, grid=7
    )
    return run_dir, scored, out


def test_train_and_score_end_to_end(shapes_detection, tiny_run, tmp_path):
    run_dir, scored, out = tiny_run
    assert run_dir == out / "runs" / "rcnn"
    table = pl.DataFrame([scored.row], schema=TABLE_SCHEMA)
    assert table.schema == TABLE_SCHEMA and table.height == 1
    row = table.row(0, named=True)
    assert row["model"] == "rcnn" and row["epochs"] == 1 and row["train_s"] > 0 and row["infer_images_per_s"] > 0
    assert row["train_cpu_s"] > 0 and row["infer_cpu_ms_per_image"] > 0
    assert row["train_cpu_s"] == pytest.approx(
        json.loads((run_dir / "metrics.json").read_text())["train_cpu_time_s"]
    )  # the engine's
    assert 0 <= row["map_50"] <= 1 and 0 < row["candidates_per_image"] <= 30
    assert 0 < row["proposal_recall_70"] <= row["proposal_recall_50"] <= 1
    n_val_objects = shapes_detection.annotations.join(
        shapes_detection.split_images("val").select("image_id"), on="image_id"
    ).height
    assert row["n_crowded"] + row["n_isolated"] == n_val_objects
    preds = pl.read_parquet(scored.predictions)
    assert preds.schema == schema.DETECTIONS and preds.height > 0
    assert scored.predictions == out / "predictions" / "rcnn" / "val" / "part-00000.parquet"
    assert any((out / "cache").rglob("*.pt")), "proposals and features cached under the bake-off folder"

    # the finished run is loaded, not retrained, and scores the same
    again = score_run(
        shapes_detection,
        "rcnn",
        run_dir,
        out=tmp_path / "2",
        split="val",
        protocol="coco",
        device="cpu",
        batch_size=8,
        grid=7,
    )
    assert again.row["map_50"] == pytest.approx(row["map_50"])
    assert again.row["train_s"] == pytest.approx(row["train_s"])
    again_table = pl.DataFrame([again.row], schema=TABLE_SCHEMA)
    paths = write_bakeoff(again_table, tmp_path / "report", split="val", protocol="coco")
    assert pl.read_parquet(paths["table"]).equals(again_table)
    assert (
        paths["markdown"].read_text().count("| **rcnn** (best trade-off)") == 1
        and paths["figure"].stat().st_size > 1000
    )
    assert paths["markdown"].read_text() == (
        "Bake-off on split `val`, protocol `coco`.\n\n"
        "Best trade-off: **rcnn**, the fastest at inference among the models within 0.02 mAP@[.5:.95] of the best.\n\n"
    ) + table_markdown(again_table)
    with Image.open(paths["figure"]) as png:
        assert (png.format, png.size) == ("PNG", (1440, 540))  # 12 x 4.5 inches at 120 dpi
    assert not list((tmp_path / "report").glob(".*tmp")), "no temporary files left"


def test_a_classifier_run_is_not_scored(shapes_classification, tmp_path):
    from cvcore.config import RunConfig
    from cvcore.engine.run import train_run

    config = RunConfig.model_validate({"data": {"snapshot": str(shapes_classification.path), "img_size": 32},
                                       "model": {"name": "resnet18"}, "train": {"epochs": 1, "device": "cpu", "batch_size": 16}})  # fmt: skip
    train_run(config, tmp_path / "run")
    with pytest.raises(ValueError, match="not a detector"):
        score_run(
            shapes_classification,
            "resnet18",
            tmp_path / "run",
            out=tmp_path,
            split="val",
            protocol="coco",
            device="cpu",
            batch_size=8,
            grid=7,
        )


def test_run_state_tells_finished_from_interrupted(tiny_run, tmp_path):
    run_dir, _, _ = tiny_run
    assert run_state(run_dir) == "finished"
    assert run_state(tmp_path / "nothing") == "absent"
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    metrics = json.loads((copy / "metrics.json").read_text())
    (copy / "metrics.json").write_text(json.dumps({**metrics, "epochs_run": 0}))
    assert run_state(copy) == "interrupted"


def test_a_finished_run_is_reused_only_for_the_same_data_and_settings(shapes_detection, tiny_run, tmp_path):
    from cvcore.data.synthetic import make_shapes_detection

    _, _, out = tiny_run
    same = train_or_reuse(shapes_detection, "rcnn", out=out, epochs=1, pretrained=None, device="cpu", overrides=FAST)
    assert same == out / "runs" / "rcnn"  # reused, nothing trained
    other = make_shapes_detection(tmp_path / "other", n_train=4, n_val=2, image_size=64, seed=1)
    with pytest.raises(ValueError, match=r"was trained with data .*use another --out"):
        train_or_reuse(other, "rcnn", out=out, epochs=1, pretrained=None, device="cpu", overrides=FAST)
    with pytest.raises(ValueError, match=r"1 epochs \(asked: 3\)"):
        train_or_reuse(shapes_detection, "rcnn", out=out, epochs=3, pretrained=None, device="cpu", overrides=FAST)
    with pytest.raises(ValueError, match=r"model.options = .*warp_size"):
        train_or_reuse(shapes_detection, "rcnn", out=out, epochs=1, pretrained=None, device="cpu",
                       overrides=FAST | {"model": {"options": {"warp_size": 48}}})  # fmt: skip
