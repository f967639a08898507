"""Flow parameters as the dashboard's run form sees and sends them."""

from __future__ import annotations

import jsonschema
import pytest
from prefect.utilities.callables import parameter_schema

from cvcore.config import RunConfig
from cvcore.engine.run import resolve_run_config
from cvcore.models import model_spec
from flows.params import TrainPipelineParams
from flows.train import train_pipeline


def _config_schema() -> dict:
    return parameter_schema(train_pipeline.fn).model_dump()["definitions"]["TrainPipelineParams"]["properties"][
        "config"
    ]


def test_the_run_form_starts_blank_so_model_defaults_apply():
    sections = _config_schema()["properties"]
    assert set(sections) == set(RunConfig.model_fields)
    fields = [(s, f, spec) for s, section in sections.items() for f, spec in section["properties"].items()]
    assert fields and not [(s, f) for s, f, spec in fields if "default" in spec]  # nothing pre-filled
    img_size = sections["data"]["properties"]["img_size"]
    assert "else 128" in img_size["description"] and {"type": "null"} in img_size["anyOf"]


def test_the_form_says_what_each_model_puts_in_a_blank_field():
    described = _config_schema()["properties"]["data"]["properties"]["img_size"]["description"]
    detectors = f"{model_spec('yolov1').defaults.data.img_size} for "
    assert detectors in described and "yolov1" in described.split(detectors, 1)[1].split(";")[0]
    assert f"{model_spec('resnet18').defaults.data.img_size} for resnet18" in described


def test_a_form_with_blank_fields_leaves_them_to_the_model(shapes_classification):
    sent = {
        "data": {"path": "x"},
        "config": {
            "model": {"name": "resnet18", "pretrained": None},
            "data": {"img_size": None},
            "train": {"epochs": 3, "lr": None},
        },
    }
    jsonschema.validate(
        {"params": sent}, parameter_schema(train_pipeline.fn).model_dump()
    )  # what Prefect's server checks
    params = TrainPipelineParams.model_validate(sent)
    resolved = resolve_run_config(params.config, snapshot=shapes_classification)
    defaults = model_spec("resnet18").defaults
    assert resolved.train.epochs == 3  # the one value the user gave
    assert resolved.data.img_size == defaults.data.img_size and resolved.train.lr == defaults.train.lr


def test_the_form_schema_still_rejects_bad_values():
    schema = parameter_schema(train_pipeline.fn).model_dump()
    with pytest.raises(jsonschema.ValidationError, match="'big'"):
        jsonschema.validate({"params": {"data": {"path": "x"}, "config": {"data": {"img_size": "big"}}}}, schema)


def test_a_run_config_object_keeps_what_was_set():
    config = RunConfig.model_validate({"model": {"name": "yolov1"}, "train": {"epochs": 2}})
    params = TrainPipelineParams.model_validate({"data": {"path": "x"}, "config": config})
    assert params.config.model_dump(exclude_unset=True) == {"model": {"name": "yolov1"}, "train": {"epochs": 2}}


def test_bakeoff_overrides_are_partial_run_configs():
    from flows.params import ComparePipelineParams

    params = ComparePipelineParams.model_validate(
        {"data": {"path": "x"}, "overrides": {"rcnn": {"train": {"lr": 0.01}}}}
    )
    assert params.overrides["rcnn"].settings() == {"train": {"lr": 0.01}}
    with pytest.raises(ValueError, match="rcnn.train.learning_rate"):
        ComparePipelineParams.model_validate(
            {"data": {"path": "x"}, "overrides": {"rcnn": {"train": {"learning_rate": 0.01}}}}
        )


def test_train_data_may_be_a_snapshot_uri_kept_as_given(shapes_classification, tmp_path):
    from flows.train import load_data

    assert (
        TrainPipelineParams.model_validate({"data": "s3://bucket/snapshots/shapes"}).data
        == "s3://bucket/snapshots/shapes"
    )
    ref = load_data(str(shapes_classification.path), home=tmp_path)  # a plain folder given as a string
    assert ref.path == shapes_classification.path and ref.uri is None
