"""`cvflow compare`'s own parsing (flows/commands/compare.py) and the compare flow's input checks
(flows/compare.py: contenders, the scored split); the flow itself is in test_compare_flow.py."""

from __future__ import annotations

import pytest

from flows.commands.compare import parse_epochs
from flows.compare import check_contenders, parse_contenders, scored_split


def test_parse_epochs():
    names = ["rcnn", "yolov1"]
    assert parse_epochs(None, names) is None
    assert parse_epochs("5", names) == {"rcnn": 5, "yolov1": 5}
    assert parse_epochs("yolov1=40", names) == {"yolov1": 40}
    assert parse_epochs("yolov1=40,5", names) == {"rcnn": 5, "yolov1": 40}
    with pytest.raises(ValueError, match="not among"):
        parse_epochs("fast_rcnn=3", names)
    with pytest.raises(ValueError, match="at least 1"):
        parse_epochs("0", names)


def test_parse_contenders():
    got = parse_contenders("rcnn, fast_rcnn=runs/f ,yolov1")
    assert [c.name for c in got] == ["rcnn", "fast_rcnn", "yolov1"]
    assert got[1].run_dir is not None and got[1].run_dir.as_posix() == "runs/f" and got[0].run_dir is None
    assert parse_contenders(["rcnn", "yolov1=/r/y"]) == parse_contenders(
        "rcnn,yolov1=/r/y"
    )  # the flow's models entries
    with pytest.raises(ValueError, match="no models"):
        parse_contenders(" , ")
    with pytest.raises(ValueError, match="twice"):
        parse_contenders("rcnn,rcnn")


def test_check_contenders_rejects_classifiers():
    with pytest.raises(ValueError, match="not a detector"):
        check_contenders("detection", ["resnet18"], epochs={}, overrides={})


def test_scored_split_is_test_else_val():
    assert scored_split("snap", ["train", "val"], None) == "val"
    assert scored_split("snap", ["train", "val", "test"], None) == "test"
    assert scored_split("snap", ["train", "val", "test"], "val") == "val"
    with pytest.raises(ValueError, match=r"snapshot snap has no split 'test'; splits: \['train', 'val'\]"):
        scored_split("snap", ["train", "val"], "test")
