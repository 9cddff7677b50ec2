"""The paper's recipes (PAPER.md "Training recipes") and how they are overridden."""

from __future__ import annotations

import json

import pytest
from helpers import cli, one_line_error

from wideresnet.config import Config, read_config_file
from wideresnet.errors import ConfigError
from wideresnet.recipes import make_config
from wideresnet.train.optim import lr_at


def test_cifar_preset_is_the_papers_recipe():
    c = make_config("cifar")
    r, d = c.optim, c.data
    assert (r.momentum, r.nesterov, r.weight_decay, r.batch_size) == (0.9, True, 5e-4, 128)
    assert (r.epochs, r.lr, r.lr_decay, r.milestones) == (200, 0.1, 0.2, (60, 120, 160))
    assert (d.augment, d.preprocess, r.reset_momentum) == (True, "meanstd", True)
    assert c.model.dropout is None  # not given: the model's own default (0 for WRNs)


def test_cifar_learning_rate_at_every_epoch():
    r = make_config("cifar").optim
    for epoch in range(1, 201):
        expected = 0.1 if epoch < 60 else 0.02 if epoch < 120 else 0.004 if epoch < 160 else 0.0008
        assert lr_at(r, epoch) == pytest.approx(expected, rel=1e-12), epoch


def test_svhn_preset_and_learning_rate_at_every_epoch():
    c = make_config("svhn")
    r = c.optim
    assert (r.epochs, c.model.dropout, c.data.augment, c.data.preprocess) == (
        160,
        0.4,
        False,
        "div255",
    )
    assert (c.data.train_split, r.nesterov, r.weight_decay) == ("train+extra", True, 5e-4)
    for epoch in range(1, 161):
        expected = 0.01 if epoch < 80 else 0.001 if epoch < 120 else 0.0001
        assert lr_at(r, epoch) == pytest.approx(expected, rel=1e-12), epoch


def test_short_schedule_of_the_readme_run():
    r = make_config("cifar", {"epochs": 3, "milestones": "2,3"}).optim
    assert [lr_at(r, e) for e in (1, 2, 3)] == pytest.approx([0.1, 0.02, 0.004])


def test_recipes_are_frozen_and_validated():
    r = Config()
    with pytest.raises(AttributeError):
        r.optim.lr = 1.0  # type: ignore[misc]
    with pytest.raises(ConfigError, match="milestones must be increasing"):
        make_config("cifar", {"milestones": [120, 60]})
    with pytest.raises(ConfigError, match="dropout"):
        make_config("cifar", {"dropout": 1.5})
    with pytest.raises(ConfigError, match="precision"):
        make_config("cifar", {"precision": "fp8"})


def test_unknown_key_has_a_did_you_mean_hint():
    hint = "unknown option 'weight_decy'; did you mean 'weight_decay'"
    with pytest.raises(ConfigError, match=hint):
        make_config("cifar", {"weight_decy": 1e-4})
    with pytest.raises(ConfigError, match="unknown preset 'imagenet-21k'"):
        make_config("imagenet-21k")


def test_values_are_coerced_or_refused():
    c = make_config("svhn", {"epochs": "7", "lr": "0.05", "nesterov": "false", "block": "3,1,3"})
    r = c.optim
    assert (r.epochs, r.lr, r.nesterov, c.model.block) == (7, 0.05, False, (3, 1, 3))
    with pytest.raises(ConfigError, match="epochs: 'many' is not a valid int"):
        make_config("cifar", {"epochs": "many"})
    with pytest.raises(ConfigError, match="nesterov"):
        make_config("cifar", {"nesterov": "perhaps"})


def test_json_and_toml_config_files(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"preset": "svhn", "lr": 0.02, "epochs": 5}))
    (tmp_path / "b.toml").write_text('model = "wrn-40-4"\nmilestones = [10, 20]\ndropout = 0.3\n')
    a = read_config_file(tmp_path / "a.json")
    assert a == {"preset": "svhn", "lr": 0.02, "epochs": 5}
    b = make_config("cifar", read_config_file(tmp_path / "b.toml"))
    assert (b.model.model, b.optim.milestones, b.model.dropout) == ("wrn-40-4", (10, 20), 0.3)
    (tmp_path / "bad.toml").write_text("model = \n")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        read_config_file(tmp_path / "bad.toml")
    with pytest.raises(ConfigError, match="missing.json: cannot read config"):
        read_config_file(tmp_path / "missing.json")


def test_config_round_trips_through_json():
    r = make_config("svhn", {"block": (1, 3, 1), "train_limit": 100})
    again = Config.from_dict(json.loads(json.dumps(r.to_dict())))
    assert again == r


def test_a_float_option_that_is_not_finite_is_one_line(tmp_path):
    for key, value in (("kd_temperature", "inf"), ("lr", "nan"), ("weight_decay", float("inf"))):
        with pytest.raises(ConfigError, match=f"{key}: .* is not a finite number"):
            Config.from_dict({key: value})
    line = one_line_error(cli("train", "--model", "wrn-10-1", "--lr", "nan", "--out", tmp_path))
    assert "lr: 'nan' is not a finite number" in line
