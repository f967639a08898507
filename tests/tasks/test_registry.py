"""Registry tasks: a checkpoint logged as an MLflow 3 pyfunc, versions and aliases, download back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cvcore.engine.checkpoint import load_model
from tasks import registry, tracking


@pytest.fixture
def run_id(home):
    client = tracking.mlflow_client()
    return tracking.open_run(client, tracking.ensure_experiment(client), run_name="r", tags={})


def test_first_version_is_champion_later_ones_only_challenger(home, run_id, checkpoint):
    uri = registry.log_model.fn(run_id, checkpoint)
    first = registry.register_model.fn(uri, name="m", run_id=run_id)
    second = registry.register_model.fn(uri, name="m", run_id=run_id)
    assert (first.version, set(first.aliases)) == ("1", {"champion", "challenger"})
    assert (second.version, second.aliases) == ("2", ("challenger",))
    assert registry.champion_version("m") == "1" and registry.alias_version("m", "challenger") == "2"
    assert registry.champion_version("no-such-model") is None


def test_the_logged_model_is_filed_under_the_runs_experiment_and_home(home, run_id, checkpoint):
    client = tracking.mlflow_client()
    uri = registry.log_model.fn(run_id, checkpoint)
    model = client.get_logged_model(uri.removeprefix("models:/"))
    assert model.experiment_id == client.get_run(run_id).info.experiment_id
    assert model.artifact_location.startswith((home / "mlartifacts").as_uri())
    assert model.source_run_id == run_id


def test_resolve_checkpoint_downloads_the_champion_once_and_pins_the_alias(home, run_id, checkpoint):
    uri = registry.log_model.fn(run_id, checkpoint)
    registry.register_model.fn(uri, name="m", run_id=run_id)
    local = registry.resolve_checkpoint.fn("models:/m@champion")
    assert local.read_bytes() == checkpoint.read_bytes()
    assert "models__m_1" in str(local)  # @champion was pinned to version 1
    assert registry.resolve_checkpoint.fn("models:/m/1") == local
    assert registry.resolve_checkpoint.fn(str(checkpoint.parent)) == checkpoint  # a run folder → its best.pt


def test_unknown_models_and_versions_are_clear_errors(home, run_id):
    with pytest.raises(ValueError, match="has no @champion"):
        registry.resolve_checkpoint.fn("models:/nothing@champion")
    with pytest.raises(ValueError, match="no version 7 of registered model 'nothing'"):
        registry.set_alias("nothing", "champion", "7")
    with pytest.raises(ValueError, match="does not exist"):
        registry.resolve_checkpoint.fn("/no/such/best.pt")


def test_set_alias_moves_champion(home, run_id, checkpoint):
    uri = registry.log_model.fn(run_id, checkpoint)
    registry.register_model.fn(uri, name="m", run_id=run_id)
    registry.register_model.fn(uri, name="m", run_id=run_id)
    ref = registry.set_alias("m", "champion", "2")
    assert set(ref.aliases) == {"champion", "challenger"} and registry.champion_version("m") == "2"


def test_pyfunc_model_predicts_like_the_checkpoint(home, run_id, checkpoint):
    import mlflow

    uri = registry.log_model.fn(run_id, checkpoint)
    pyfunc = mlflow.pyfunc.load_model(uri)
    assert pyfunc.metadata.signature.inputs.inputs[0].shape == (-1, 3, 32, 32)
    x = np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)
    out = pyfunc.predict(x)
    model, meta = load_model(checkpoint)
    with torch.inference_mode():
        probs = torch.softmax(model(torch.from_numpy(x)), dim=1)
    assert out["image_index"].tolist() == [0, 1, 2]
    assert out["category_id"].tolist() == probs.argmax(1).tolist()
    assert out["category"].tolist() == [meta["class_names"][i] for i in probs.argmax(1).tolist()]
    np.testing.assert_allclose(out["score"], probs.max(1).values.numpy(), rtol=1e-5)
