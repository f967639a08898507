"""The team stack deletes only the ``postgres/`` folder it made itself (no server is started here).

``stack.py up`` starts a new cluster when ``<CVFLOW_STACK_DIR>/postgres`` has no
``databases-created`` marker; a folder of the user's there (CVFLOW_STACK_DIR pointed at an
existing folder) must be refused, not deleted, while the stack's own half-made cluster (a first
``up`` that did not finish) is still started afresh.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_stack import _stack_module


@pytest.fixture(scope="module")
def stack_py():
    return _stack_module()  # deploy/stack/stack.py, loaded from its file (deploy/ is no package)


def _settings(stack_py, root: Path):
    return stack_py.Settings(root=root, home=root / "home", postgres_port=1, prefect_port=2, mlflow_port=3, mlflow_workers=1,
                             gpu_slots=1, password=None, pg_bin=root / "no-such-bin")  # fmt: skip


def test_up_refuses_a_postgres_folder_the_stack_did_not_make_and_keeps_it(stack_py, tmp_path, monkeypatch):
    monkeypatch.setattr(stack_py, "_postgres_account", lambda: None)  # as a non-root user: no chown
    users = tmp_path / "projects" / "postgres"
    (users / "base").mkdir(parents=True)
    (users / "base" / "thesis.sql").write_text("-- a user's work\n")
    with pytest.raises(stack_py.StackError, match=r"postgres holds files the stack did not make .*CVFLOW_STACK_DIR"):
        stack_py.start_postgres(_settings(stack_py, tmp_path / "projects"))
    assert (users / "base" / "thesis.sql").read_text() == "-- a user's work\n"
    link = tmp_path / "linked" / "postgres"
    link.parent.mkdir()
    link.symlink_to(users)
    with pytest.raises(stack_py.StackError, match="not a folder the stack made"):
        stack_py.start_postgres(_settings(stack_py, link.parent))
    assert (users / "base" / "thesis.sql").is_file()


def test_the_stacks_own_unfinished_cluster_and_an_empty_folder_start_afresh(stack_py, tmp_path):
    own = tmp_path / "own" / "postgres"
    stack_py._fresh_postgres_dir(own)  # a first `up` made it, then initdb died half-way
    (own / "data").mkdir()
    (own / "data" / "PG_VERSION").write_text("17\n")
    stack_py._fresh_postgres_dir(own)
    assert sorted(p.name for p in own.iterdir()) == [stack_py.OWNED_MARKER]
    assert own.stat().st_mode & 0o777 == 0o700
    empty = tmp_path / "empty" / "postgres"
    empty.mkdir(parents=True)
    stack_py._fresh_postgres_dir(empty)
    assert sorted(p.name for p in empty.iterdir()) == [stack_py.OWNED_MARKER]
