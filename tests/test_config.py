"""Experiment configs: every shipped experiment parses, its resolved dump parses back to itself,
and --quick is applied once (command-line overrides win over the file's `quick`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sciml.config import dump_config, load_config, read_yaml
from sciml.errors import ConfigError

ALL = sorted((Path(__file__).resolve().parents[1] / "experiments").rglob("*.yaml"))
EXPERIMENTS = [p for p in ALL if "study" not in read_yaml(p)]  # studies are checked below
STUDIES = [p for p in ALL if "study" in read_yaml(p)]


@pytest.mark.parametrize("quick", [False, True], ids=["full", "quick"])
@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=lambda p: p.stem)
def test_resolved_config_parses_back_to_itself(tmp_path, experiment, quick):
    parser, cfg = load_config(experiment, quick=quick)
    resolved = tmp_path / "config.yaml"
    resolved.write_text(dump_config(parser, cfg))
    # `sciml run DIR/config.yaml` reproduces the run; so does adding --quick to a quick run's.
    for again in (False, True) if quick else (False,):
        parser2, cfg2 = load_config(resolved, quick=again)
        assert dump_config(parser2, cfg2) == resolved.read_text()


def test_quick_overrides_apply_and_command_line_wins(tmp_path):
    experiment = tmp_path / "exp.yaml"
    source = EXPERIMENTS[0].read_text()
    experiment.write_text(source.rsplit("quick:", 1)[0] + "quick:\n  trainer.max_steps: 7\n  seed: 3\n")
    _, cfg = load_config(experiment, overrides=["seed=5"], quick=True)
    assert (cfg.trainer.max_steps, cfg.seed) == (7, 5)
    assert cfg.quick == {}
    _, full = load_config(experiment)
    assert full.trainer.max_steps != 7 and full.quick == {"trainer.max_steps": 7, "seed": 3}


def test_quick_must_be_a_mapping(tmp_path):
    experiment = tmp_path / "exp.yaml"
    experiment.write_text(EXPERIMENTS[0].read_text().rsplit("quick:", 1)[0] + "quick: 20\n")
    for quick in (False, True):
        with pytest.raises(ConfigError, match=r"`quick`.*exp.yaml.*mapping.*20"):
            load_config(experiment, quick=quick)


@pytest.mark.parametrize("study", STUDIES, ids=lambda p: p.stem)
def test_study_configs_name_a_function_whose_arguments_they_give(study):
    import importlib
    import inspect

    raw = read_yaml(study)
    module, _, name = raw["study"].rpartition(".")
    params = inspect.signature(getattr(importlib.import_module(module), name)).parameters
    for section in ("args", "quick"):
        unknown = set(raw.get(section) or {}) - set(params)
        assert not unknown, f"{study.name}: {section} has {unknown}, not arguments of {raw['study']}"


def test_a_misspelt_class_path_suggests_the_lazily_imported_class():
    """sciml.data imports its data modules on first use; the suggestion for a typo still finds
    them (it lists the module's __all__), and the submodules stay reachable as attributes."""
    import sciml.data
    from sciml.config import _bad_class

    message = _bad_class("data", "sciml.data.CollocationDataModul", "")
    assert "Did you mean `sciml.data.CollocationDataModule`" in message
    assert sciml.data.datamodules.SampleDataModule is sciml.data.SampleDataModule
    assert {"SampleDataModule", "datamodules", "read_dataset"} <= set(dir(sciml.data))

