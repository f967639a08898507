"""``replace=True`` deletes a folder: only a cvflow snapshot, never one holding or inside the source."""

from __future__ import annotations

import json

import pytest
from data_formats_helpers import tiny_coco

from cvcore.data.ingest import ingest
from cvcore.data.snapshot import SnapshotError, check_replaceable, read_snapshot, write_snapshot
from cvcore.data.synthetic import make_shapes_classification


def _source(root):
    images = [{"id": 1, "file_name": "a.png", "width": 16, "height": 12}]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4], "area": 16.0}]
    return tiny_coco(root, images=images, annotations=anns, sizes={"a.png": (16, 12)})


def _files(folder) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_replace_refuses_the_source_its_parent_and_a_snapshot_inside_it(tmp_path):
    src = _source(tmp_path / "work" / "mydata")
    before = _files(tmp_path / "work")
    with pytest.raises(SnapshotError, match=r"refusing to replace .*mydata: it is .*mydata itself"):
        ingest(src, fmt="coco", out=src, replace=True)
    with pytest.raises(SnapshotError, match=r"refusing to replace .*work: it holds .*mydata"):
        ingest(src, fmt="coco", out=tmp_path / "work", replace=True)
    one_file = src / "annotations" / "instances_train.json"
    with pytest.raises(SnapshotError, match="it holds"):  # a COCO file as SOURCE: its folder holds it
        ingest(one_file, fmt="coco", out=src / "annotations", images=src / "images" / "train", replace=True)
    assert _files(tmp_path / "work") == before

    inner = ingest(src, fmt="coco", out=src / "snap").snapshot  # a new snapshot may go anywhere
    with pytest.raises(SnapshotError, match=r"it is inside .*mydata"):
        ingest(src, fmt="coco", out=inner.path, replace=True)
    assert read_snapshot(inner.path).digest == inner.digest


def test_replace_refuses_a_user_folder_and_a_foreign_manifest(tmp_path):
    src = _source(tmp_path / "mydata")
    thesis = tmp_path / "thesis"
    (thesis / "chapter1.tex").parent.mkdir()
    (thesis / "chapter1.tex").write_text("\\chapter{One}\n")
    with pytest.raises(
        SnapshotError, match=r"refusing to replace .*thesis: it is not a cvflow snapshot \(no manifest.json\)"
    ):
        ingest(src, fmt="coco", out=thesis, replace=True)
    (thesis / "manifest.json").write_text(json.dumps({"name": "my web app", "start_url": "/"}))
    with pytest.raises(SnapshotError, match="its manifest.json is not a snapshot manifest"):
        ingest(src, fmt="coco", out=thesis, replace=True)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    with pytest.raises(SnapshotError, match="it is not a folder"):
        ingest(src, fmt="coco", out=a_file, replace=True)
    assert (thesis / "chapter1.tex").read_text() == "\\chapter{One}\n" and a_file.read_text() == "keep me"


def test_replace_swaps_a_snapshot_and_touches_nothing_beside_it(tmp_path):
    src = _source(tmp_path / "mydata")
    first = ingest(src, fmt="coco", out=tmp_path / "out" / "snap").snapshot
    neighbour = tmp_path / "out" / ".snap.old"  # the old fixed trash name: a user's folder must survive
    neighbour.mkdir()
    (neighbour / "keep.txt").write_text("mine")
    again = ingest(src, fmt="coco", out=first.path, replace=True).snapshot
    assert again.digest == first.digest
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".snap.old", "snap"]
    assert (neighbour / "keep.txt").read_text() == "mine"


def test_write_snapshot_refuses_to_replace_the_folder_holding_its_image_root(tmp_path):
    snap = make_shapes_classification(tmp_path / "snap", n_train=4, n_val=0)
    with pytest.raises(SnapshotError, match="it holds"):
        write_snapshot(
            snap.path,
            name="x",
            task="classification",
            source_format="imagefolder",
            image_root=snap.image_root.resolve(),
            images=snap.images,
            categories=snap.categories,
            labels=snap.labels,
            replace=True,
        )
    assert read_snapshot(snap.path).digest == snap.digest
    # The synthetic writers follow the same rule.
    (tmp_path / "user").mkdir()
    with pytest.raises(SnapshotError, match="not a cvflow snapshot"):
        make_shapes_classification(tmp_path / "user", n_train=4, n_val=0, replace=True)
    assert make_shapes_classification(snap.path, n_train=4, n_val=0, seed=1, replace=True).digest != snap.digest


def test_check_replaceable_resolves_symlinks(tmp_path):
    src = _source(tmp_path / "mydata")
    link = tmp_path / "alias"
    link.symlink_to(src)
    with pytest.raises(SnapshotError, match="itself"):
        check_replaceable(link, protected=[src])
