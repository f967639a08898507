"""`cvflow compare`'s own parsing (flows/commands/compare.py); the flow is in test_compare_flow.py."""

from __future__ import annotations

import pytest

from flows.commands.compare import parse_epochs


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
