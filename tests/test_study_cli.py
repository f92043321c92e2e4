"""The options of ``steerable-sr compare`` / ``discover`` (steerable_sr.cli.study): the YAML of ``fit``
sets them, the command line wins, and the defaults are those of training. Parsing only: nothing trains."""
import inspect
import re
from pathlib import Path

import pytest
import yaml

from steerable_sr.cli import main, parser
from steerable_sr.cli.discover import discover_defaults
from steerable_sr.cli.study import study_defaults, study_settings
from steerable_sr.training import SuperResolutionModule

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "default.yaml")


def _settings(command, *argv):
    defaults = study_defaults() if command == "compare" else discover_defaults()
    return study_settings(parser(command).parse_args([command, *argv]), defaults)


def test_the_config_of_fit_sets_the_study_and_the_command_line_wins():
    fit = yaml.safe_load(Path(CONFIG).read_text())
    settings = _settings("compare", "--config", CONFIG, "--lr", "0.01", "--seeds", "4")
    assert settings["lr"] == 0.01 and settings["seeds"] == [4]  # given: the command line
    for section, key, field in [("model", "preset", "preset"), ("model", "penalty_weight", "penalty_weight"),
                                ("data", "path", "data"), ("data", "crop", "crop"),
                                ("data", "batch_size", "batch_size"), ("trainer", "max_epochs", "max_epochs"),
                                ("trainer", "precision", "precision")]:
        assert settings[field] == fit[section][key], field  # not given: the config file
    assert settings["kinds"] == study_defaults()["kinds"]  # fit's model.kind is not the study's subject


def test_discover_takes_its_datasets_from_the_config_when_none_are_given(tmp_path):
    (tmp_path / "a.yaml").write_text("data:\n  path: [one.h5, two.h5]\ntrainer:\n  max_epochs: 2\n")
    settings = _settings("discover", "--config", str(tmp_path / "a.yaml"))
    assert settings["data"] == ["one.h5", "two.h5"] and settings["max_epochs"] == 2
    assert settings["model_overrides"] == discover_defaults()["model_overrides"]


def test_the_studies_train_with_the_defaults_of_training():
    module = inspect.signature(SuperResolutionModule).parameters
    for defaults in (study_defaults(), discover_defaults()):
        assert defaults["lr"] == module["lr"].default
        assert defaults["weight_decay"] == module["weight_decay"].default
        assert defaults["gamma"] == module["gamma"].default


@pytest.mark.parametrize("content, message", [
    ("model:\n  lrr: 0.1\n", r"model.lrr: not an option of `steerable-sr fit` \(did you mean model.lr\?\)"),
    ("trainer:\n  max_epoch: 3\n", r"trainer.max_epoch: not an option of `steerable-sr fit` \(did you mean "
                                   r"trainer.max_epochs\?\)"),
    ("- a list\n", "expected a mapping with sections model, data, trainer"),
    ("model: [\n", "not valid YAML"),
])
@pytest.mark.parametrize("command", ["compare", "discover"])
def test_a_bad_config_file_is_one_line_naming_the_file_and_the_key(tmp_path, capsys, command, content, message):
    (tmp_path / "typo.yaml").write_text(content)
    assert main([command, "--config", str(tmp_path / "typo.yaml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert re.search(r"steerable-sr: error: \S*typo.yaml: " + message, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["typo.yaml"]
