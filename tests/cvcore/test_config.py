"""Config precedence: the user's value, else the model's default, else cvflow's (cvcore.config.resolve)."""

from __future__ import annotations

import re
import typing

import pytest

from cvcore.config import (
    CVFLOW_DEFAULTS,
    NO_SETTINGS,
    PartialRunConfig,
    RunConfig,
    load_config,
    overlay,
    partial_config,
    resolve,
)
from cvcore.models import register_model

USER = PartialRunConfig(train={"epochs": 3}, model={"name": "yolov1", "options": {"grid": 8}})
MODEL = PartialRunConfig(
    data={"img_size": 64}, train={"epochs": 12, "lr": 0.5}, model={"options": {"grid": 16, "boxes": 2}}
)


def test_each_field_comes_from_the_first_layer_that_sets_it():
    run = resolve(USER, MODEL)
    assert isinstance(run, RunConfig)
    assert run.train.epochs == 3  # the user's
    assert (run.train.lr, run.data.img_size) == (0.5, 64)  # the model's, where the user set nothing
    assert (run.train.momentum, run.augment.preset, run.eval.nms_iou) == (0.9, "default", 0.5)  # cvflow's
    assert run.model.options == {"grid": 8, "boxes": 2}  # options merge key by key, the user's keys winning
    assert (
        resolve(
            USER,
            MODEL,
            CVFLOW_DEFAULTS.model_copy(update={"eval": CVFLOW_DEFAULTS.eval.model_copy(update={"nms_iou": 0.7})}),
        ).eval.nms_iou
        == 0.7
    )


def test_nothing_set_is_cvflows_defaults_and_a_resolved_config_resolves_to_itself():
    assert resolve(NO_SETTINGS) == CVFLOW_DEFAULTS == RunConfig()
    run = resolve(USER, MODEL)
    assert resolve(PartialRunConfig.model_validate(run), PartialRunConfig(train={"epochs": 99, "lr": 9.0})) == run


def test_overlay_is_the_same_rule_between_partial_configs():
    merged = overlay(USER, MODEL)
    assert isinstance(merged, PartialRunConfig)
    assert (merged.train.epochs, merged.train.lr, merged.data.img_size, merged.train.momentum) == (3, 0.5, 64, None)
    assert merged.model.options == {"grid": 8, "boxes": 2}


def test_a_partial_config_has_every_field_of_the_full_one_unset_with_its_types_and_bounds():
    for section, info in RunConfig.model_fields.items():
        partial = getattr(NO_SETTINGS, section)
        assert set(type(partial).model_fields) == set(info.annotation.model_fields), section
        assert all(value is None for _, value in partial), section
    with pytest.raises(ValueError, match="greater than or equal to 16"):
        PartialRunConfig(data={"img_size": 8})
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        PartialRunConfig(train={"lrr": 0.1})
    with pytest.raises(ValueError, match="adamw"):
        PartialRunConfig(train={"optimizer": "adam"})


def test_checks_across_fields_run_on_the_resolved_config():
    user = PartialRunConfig(augment={"cutmix_p": 0.6})
    assert user.augment.cutmix_p == 0.6  # one field alone is fine
    with pytest.raises(ValueError, match=r"cutmix_p \+ mixup_p must be <= 1"):
        resolve(user, PartialRunConfig(augment={"mixup_p": 0.6}))


def test_a_run_config_given_as_user_settings_counts_the_fields_it_was_built_with():
    built = RunConfig.model_validate({"train": {"lr": 0.01}})
    assert PartialRunConfig.model_validate(built).model_dump(exclude_unset=True) == {"train": {"lr": 0.01}}
    assert resolve(PartialRunConfig.model_validate(built), MODEL).data.img_size == 64


def test_no_clipping_is_written_null_in_files_or_0(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  grad_clip: null\n")
    assert resolve(load_config(path)).train.grad_clip is None  # null kept its meaning: no clipping
    path.write_text("train:\n  grad_clip: 0\n")
    assert resolve(load_config(path)).train.grad_clip is None
    path.write_text("train:\n  epochs: 2\n")
    assert resolve(load_config(path)).train.grad_clip == 10.0
    clip = PartialRunConfig(train={"grad_clip": 5.0})
    assert (
        resolve(partial_config({"train": {"grad_clip": None}}), clip).train.grad_clip is None
    )  # over a model's default too
    assert resolve(partial_config({"train": {"grad_clip": None}})).train.grad_clip is None


def test_every_field_that_null_turned_off_keeps_that_meaning_in_files():
    """A nullable field with a value by default: a file's null used to set None, not leave it to
    the default, so cvcore.config must map it (a new such field fails here until it does)."""
    from cvcore.config import _NULL_IN_FILES

    nullable_with_value = {
        (section, name)
        for section, info in RunConfig.model_fields.items()
        for name, field in info.annotation.model_fields.items()
        if type(None) in typing.get_args(field.annotation) and field.get_default(call_default_factory=True) is not None
    }
    assert nullable_with_value == set(_NULL_IN_FILES)


def test_run_yaml_null_for_other_fields_is_unset_and_unknown_keys_still_fail(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  img_size: null\nmodel:\n  name: yolov1\n")
    assert resolve(load_config(path), MODEL).data.img_size == 64
    path.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(ValueError, match=rf"(?s){re.escape(str(path))}: invalid config:\n.*train.learning_rate"):
        load_config(path)
    path.write_text("augment:\n  cutmix_p: 0.7\n  mixup_p: 0.7\n")
    with pytest.raises(ValueError, match=rf"(?s){re.escape(str(path))}: invalid config:\n.*cutmix_p \+ mixup_p"):
        load_config(path)


def test_a_written_run_config_loads_back_as_the_same_run(tmp_path):
    from cvcore.engine.run import write_config

    run = resolve(PartialRunConfig(train={"grad_clip": 0, "ema_decay": 0.99}, data={"test_split": "test"}), MODEL)
    write_config(run, tmp_path / "config.yaml")
    assert (
        resolve(load_config(tmp_path / "config.yaml"), PartialRunConfig(train={"grad_clip": 3.0, "epochs": 1})) == run
    )


def test_register_model_refuses_defaults_that_are_not_a_partial_config():
    with pytest.raises(ValueError, match=r"(?s)model 'bad_defaults': invalid run defaults.*\nimg_size"):
        register_model("bad_defaults", task="detection", defaults={"img_size": 128})  # a bare (old, dotted-style) key
    with pytest.raises(ValueError, match=r"(?s)model 'bad_defaults': invalid run defaults.*cutmix_p \+ mixup_p"):
        register_model("bad_defaults", task="detection", defaults={"augment": {"cutmix_p": 0.9, "mixup_p": 0.9}})


def test_sources_name_the_layer_each_resolved_value_comes_from():
    from cvcore.config import flatten, sources

    origin = sources(USER, MODEL)
    assert set(origin) == set(flatten(resolve(USER, MODEL)))
    assert (origin["train.epochs"], origin["train.lr"], origin["train.momentum"]) == ("user", "model", "cvflow")
    assert (origin["model.options"], origin["data.img_size"], origin["eval.protocol"]) == ("user", "model", "cvflow")
    assert set(sources(NO_SETTINGS).values()) == {"cvflow"}


def test_settings_are_the_fields_set_by_section():
    assert USER.settings() == {"model": {"name": "yolov1", "options": {"grid": 8}}, "train": {"epochs": 3}}
    assert NO_SETTINGS.settings() == {}
