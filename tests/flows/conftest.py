"""Fixtures of the flow and command-line tests: a Prefect test server and an isolated CVFLOW_HOME.

Commands such as ``cvflow train`` run Prefect flows that log to MLflow: every test here runs
with a temporary CVFLOW_HOME (unless it sets its own) so nothing lands in the
checkout's ``.cvflow``, and one temporary Prefect server per test process instead of Prefect's
own database in ``~/.prefect``.
"""

from __future__ import annotations

import mlflow
import pytest


@pytest.fixture(scope="session", autouse=True)
def prefect_server(tmp_path_factory):
    """Prefect's test harness (a temporary server and database) for the whole session."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    results = tmp_path_factory.mktemp("prefect-results")
    settings = {PREFECT_SERVER_ANALYTICS_ENABLED: False, PREFECT_LOCAL_STORAGE_PATH: results}
    with temporary_settings(updates=settings), prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory):
    """A temporary CVFLOW_HOME (embedded MLflow store inside) for the session, set before any
    module fixture runs; tests that need their own home set it themselves."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CVFLOW_HOME", str(tmp_path_factory.mktemp("cvflow-home")))
        # mlflow.set_tracking_uri exports the URI it is given; the context undoes that at the end.
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield
    mlflow.set_tracking_uri(None)
