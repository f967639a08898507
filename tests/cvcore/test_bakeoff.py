"""The bake-off: contenders, crowded cells, per-object recall, candidate counts, the table."""

from __future__ import annotations

import math

import polars as pl
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image
from torch import nn

from cvcore import schema
from cvcore.bakeoff import (
    TABLE_SCHEMA,
    CandidateCounter,
    Contender,
    bakeoff_figure,
    crowded_objects,
    object_recall,
    parse_contenders,
    run_bakeoff,
    table_markdown,
    write_bakeoff,
)


def _ann(rows):
    return pl.DataFrame(
        rows, schema=["ann_id", "image_id", "category_id", "x1", "y1", "x2", "y2"], orient="row"
    ).with_columns(pl.col("category_id").cast(pl.Int32), area=pl.lit(1.0), iscrowd=pl.lit(False))


def _preds(rows):
    return pl.DataFrame(rows, schema=["image_id", "category_id", "score", "x1", "y1", "x2", "y2"], orient="row").with_columns(
        pl.col("category_id").cast(pl.Int32), pl.col("score").cast(pl.Float64)
    )


def test_parse_contenders():
    got = parse_contenders("rcnn, fast_rcnn=runs/f ,yolov1")
    assert [c.name for c in got] == ["rcnn", "fast_rcnn", "yolov1"]
    assert got[1].run_dir is not None and got[1].run_dir.as_posix() == "runs/f" and got[0].run_dir is None
    with pytest.raises(ValueError, match="no models"):
        parse_contenders(" , ")
    with pytest.raises(ValueError, match="twice"):
        parse_contenders("rcnn,rcnn")


def test_crowded_objects_share_a_grid_cell():
    images = pl.DataFrame({"image_id": [1, 2], "width": [70, 70], "height": [70, 70]})
    # 7x7 grid of 10 px cells: centres (5, 5) and (8, 8) share cell (0, 0); (25, 5) is alone
    anns = _ann([(1, 1, 0, 0.0, 0.0, 10.0, 10.0), (2, 1, 1, 6.0, 6.0, 10.0, 10.0), (3, 1, 0, 20.0, 0.0, 30.0, 10.0), (4, 2, 0, 0.0, 0.0, 10.0, 10.0)])
    got = crowded_objects(anns, images, grid=7).sort("ann_id")
    assert got.get_column("crowded").to_list() == [True, True, False, False]


def test_object_recall_is_greedy_by_score_and_class_aware():
    anns = _ann([(1, 1, 0, 0.0, 0.0, 10.0, 10.0), (2, 1, 0, 2.0, 0.0, 12.0, 10.0), (3, 1, 1, 50.0, 50.0, 60.0, 60.0), (4, 2, 0, 0.0, 0.0, 10.0, 10.0)])
    preds = _preds(
        [
            (1, 0, 0.9, 1.0, 0.0, 11.0, 10.0),  # IoU 0.82 with both 1 and 2: takes 1 (first in ties by IoU order)
            (1, 0, 0.8, 1.0, 0.0, 11.0, 10.0),  # the same box again: takes the other one
            (1, 0, 0.7, 50.0, 50.0, 60.0, 60.0),  # right place, wrong class: finds nothing
            (2, 0, 0.5, 30.0, 30.0, 40.0, 40.0),  # misses
        ]
    )
    got = object_recall(anns, preds, iou=0.5).sort("ann_id")
    assert got.get_column("found").to_list() == [True, True, False, False]
    one = object_recall(anns, preds.filter(pl.col("score") > 0.85), iou=0.5).sort("ann_id")
    assert one.get_column("found").to_list() == [True, False, False, False]
    assert object_recall(anns, preds.head(0), iou=0.5).get_column("found").sum() == 0


def test_candidate_counter():
    class Recording(nn.Module):
        def __init__(self):
            super().__init__()
            self.proposals_seen = [99]

    rec = Recording()
    counter = CandidateCounter(rec)
    assert rec.proposals_seen == [] and math.isnan(counter.per_image())
    rec.proposals_seen.extend([10, 20])
    assert counter.per_image() == 15.0

    grid = nn.Module()
    grid.grid, grid.boxes_per_cell = 7, 2
    assert CandidateCounter(grid).per_image() == 98.0


def test_candidate_counter_hooks_torchvision_rpn():
    from cvcore.models import build_model

    torch.manual_seed(0)
    model = build_model("faster_rcnn", num_classes=2, img_size=64).eval()
    counter = CandidateCounter(model)
    with torch.no_grad():
        model([torch.rand(3, 64, 64), torch.rand(3, 64, 64)])
    counter.close()
    n = counter.per_image()
    assert 0 < n <= 1000 and n == int(n)


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


def test_table_markdown_and_figure():
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

    fig = bakeoff_figure(_table(), title="t")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    bars, speed = fig.axes
    assert fig.get_suptitle() == "t"
    assert (bars.get_title(), bars.get_ylabel()) == ("accuracy (one protocol)", "score")
    assert [t.get_text() for t in bars.get_xticklabels()] == ["a", "b"]
    legend = ["mAP@0.5", "mAP", "AP small", "AP medium", "recall crowded", "recall isolated"]
    assert [t.get_text() for t in bars.get_legend().get_texts()] == legend
    # six bars per model, grouped by metric: heights are the table's values (map_large is not drawn)
    assert [round(bar.get_height(), 6) for bar in bars.patches] == [0.8, 0.6, 0.5, 0.3, 0.4, 0.1, 0.6, 0.5, 0.7, 0.2, 0.9, 0.8]
    assert (speed.get_title(), speed.get_ylabel(), speed.get_xscale()) == ("accuracy vs speed", "mAP@0.5", "log")
    assert speed.get_xlabel() == "inference CPU ms / image (log; left is faster)"
    points, ring = speed.collections
    assert points.get_offsets().tolist() == [[300.0, 0.8], [8.0, 0.6]]  # (CPU ms per image, mAP@0.5)
    assert ring.get_offsets().tolist() == [[300.0, 0.8]]  # the best trade-off, circled
    assert [t.get_text() for t in speed.get_legend().get_texts()] == ["best trade-off: a"]
    assert [(t.get_text(), t.xy) for t in speed.texts] == [("a", (300.0, 0.8)), ("b", (8.0, 0.6))]
    nan_row = bakeoff_figure(_table().with_columns(recall_crowded=pl.lit(math.nan)))
    assert [bar.get_height() for bar in nan_row.axes[0].patches][8:10] == [0.0, 0.0]  # NaN drawn as no bar


@pytest.fixture(scope="module")
def tiny_bakeoff(shapes_detection, tmp_path_factory):
    """One tiny R-CNN run through the whole bake-off (64-px images, 32-px warps, one epoch)."""
    fast = {"data": {"img_size": 64}, "model": {"options": {"warp_size": 32, "max_proposals": 30, "small_input": False}}, "train": {"batch_size": 8}}
    out = tmp_path_factory.mktemp("bakeoff")
    result = run_bakeoff(shapes_detection, contenders=[Contender("rcnn")], out=out, epochs=1, device="cpu", overrides={"rcnn": fast})
    return result, out


def test_run_bakeoff_end_to_end(shapes_detection, tiny_bakeoff, tmp_path):
    result, out = tiny_bakeoff
    assert result.table.schema == TABLE_SCHEMA and result.table.height == 1 and result.split == "val"
    row = result.table.row(0, named=True)
    assert row["model"] == "rcnn" and row["epochs"] == 1 and row["train_s"] > 0 and row["infer_images_per_s"] > 0
    assert row["train_cpu_s"] > 0 and row["infer_cpu_ms_per_image"] > 0
    assert 0 <= row["map_50"] <= 1 and 0 < row["candidates_per_image"] <= 30
    assert 0 < row["proposal_recall_70"] <= row["proposal_recall_50"] <= 1
    n_val_objects = shapes_detection.annotations.join(shapes_detection.split_images("val").select("image_id"), on="image_id").height
    assert row["n_crowded"] + row["n_isolated"] == n_val_objects
    preds = pl.read_parquet(result.predictions["rcnn"])
    assert preds.schema == schema.DETECTIONS and preds.height > 0
    assert any((out / "cache").rglob("*.pt")), "proposals and features cached under the bake-off folder"

    # the finished run is loaded, not retrained, and scores the same
    again = run_bakeoff(shapes_detection, contenders=[Contender("rcnn", run_dir=result.runs["rcnn"])], out=tmp_path / "2", device="cpu")
    assert again.table.get_column("map_50").item() == pytest.approx(row["map_50"])
    assert again.table.get_column("train_s").item() == pytest.approx(row["train_s"])
    paths = write_bakeoff(again, tmp_path / "report")
    assert pl.read_parquet(paths["table"]).equals(again.table)
    assert paths["markdown"].read_text().count("| **rcnn** (best trade-off)") == 1 and paths["figure"].stat().st_size > 1000
    assert paths["markdown"].read_text() == (
        "Bake-off on split `val`, protocol `coco`.\n\n"
        "Best trade-off: **rcnn**, the fastest at inference among the models within 0.02 mAP@[.5:.95] of the best.\n\n"
    ) + table_markdown(again.table)
    with Image.open(paths["figure"]) as png:
        assert (png.format, png.size) == ("PNG", (1440, 540))  # 12 x 4.5 inches at 120 dpi
    assert not list((tmp_path / "report").glob(".*tmp")), "no temporary files left"


def test_run_state_tells_finished_from_interrupted(tiny_bakeoff, tmp_path):
    import json
    import shutil

    from cvcore.bakeoff import run_state

    result, _ = tiny_bakeoff
    assert run_state(result.runs["rcnn"]) == "finished"
    assert run_state(tmp_path / "nothing") == "absent"
    copy = tmp_path / "copy"
    shutil.copytree(result.runs["rcnn"], copy)
    metrics = json.loads((copy / "metrics.json").read_text())
    (copy / "metrics.json").write_text(json.dumps({**metrics, "epochs_run": 0}))
    assert run_state(copy) == "interrupted"


def test_a_finished_run_is_reused_only_for_the_same_data_and_settings(shapes_detection, tiny_bakeoff, tmp_path):
    from cvcore.bakeoff import train_contender
    from cvcore.data.synthetic import make_shapes_detection

    _, out = tiny_bakeoff
    fast = {"data": {"img_size": 64}, "model": {"options": {"warp_size": 32, "max_proposals": 30, "small_input": False}}, "train": {"batch_size": 8}}
    same = train_contender(shapes_detection, "rcnn", out=out, epochs=1, pretrained=None, device="cpu", overrides=fast)
    assert same == out / "runs" / "rcnn"  # reused, nothing trained
    other = make_shapes_detection(tmp_path / "other", n_train=4, n_val=2, image_size=64, seed=1)
    with pytest.raises(ValueError, match=r"was trained with data .*use another --out"):
        train_contender(other, "rcnn", out=out, epochs=1, pretrained=None, device="cpu", overrides=fast)
    with pytest.raises(ValueError, match=r"1 epochs \(asked: 3\)"):
        train_contender(shapes_detection, "rcnn", out=out, epochs=3, pretrained=None, device="cpu", overrides=fast)
    with pytest.raises(ValueError, match=r"model.options = .*warp_size"):
        train_contender(shapes_detection, "rcnn", out=out, epochs=1, pretrained=None, device="cpu",
                        overrides=fast | {"model": {"options": {"warp_size": 48}}})  # fmt: skip


def test_run_bakeoff_rejects_classifiers(shapes_detection, tmp_path):
    with pytest.raises(ValueError, match="not a detector"):
        run_bakeoff(shapes_detection, contenders=[Contender("resnet18")], out=tmp_path)
