"""cvflow's packages set a passive OpenMP wait policy before torch loads, keeping a user's choice."""

from __future__ import annotations

import os
import subprocess
import sys


def _policy(env_extra: dict[str, str], module: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | env_extra
    code = f"import {module}, os; print(os.environ.get('OMP_WAIT_POLICY'))"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_each_package_sets_passive_before_torch():
    for module in ("cvcore", "tasks", "flows.cli"):
        assert _policy({}, module) == "PASSIVE", module


def test_a_users_policy_is_kept():
    assert _policy({"OMP_WAIT_POLICY": "ACTIVE"}, "cvcore") == "ACTIVE"
