"""The `sciml` command as a user meets it: bad input of any kind ends in one short paragraph on
stderr that names the offending value and the fix, a non-zero exit code and no traceback
(unless --debug); a run folder's config.yaml reproduces its run.

Most cases call `sciml.cli.main` in-process (the imports cost seconds per subprocess); a few
run the installed console script end to end.
"""

from __future__ import annotations

import io
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from sciml import _io, cli
from sciml.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "experiments" / "quickstart.yaml"
SCIML = Path(sys.executable).with_name("sciml")
# A quick run smaller still than --quick: a few L-BFGS steps on a coarse reference grid.
TINY = ["model.optimizer.lbfgs_steps=5", "data.nx=32", "data.nt=16", "data.n_collocation=100"]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Generated data and default run folders go to a temp dir (even if a check below broke),
    and `main` leaves the test process's env as it was."""
    monkeypatch.setenv("SCIML_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PYTHONWARNINGS", raising=False)  # restored after main's setdefault


def sciml(capsys, *argv: str | Path) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `sciml ARGV` run in-process."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean_error(code: int, err: str, *needles: str) -> None:
    """A user-facing failure: non-zero exit, one short `error:` paragraph naming `needles`."""
    assert code not in (0, None), err
    assert "Traceback" not in err
    message = err.strip()
    assert message.startswith("error: "), err
    assert "\n" not in message and len(message) < 600, err
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


def run_sciml(*argv: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SCIML_DATA_DIR": str(cwd / "data")}
    return subprocess.run([str(SCIML), *map(str, argv)], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def write_experiment(path: Path, replace: tuple[str, str] = ("", "")) -> Path:
    path.write_text(QUICKSTART.read_text().replace(*replace))
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A small valid dataset file written by `sciml data generate`."""
    path = tmp_path_factory.mktemp("datasets") / "convection.h5"
    assert cli.main(["data", "generate", "convection", "--out", str(path), "nx=32", "nt=8"]) == 0
    return path


# -- a missing or unreadable experiment file ------------------------------------------------
def test_missing_experiment_file_is_named(capsys):
    code, _, err = sciml(capsys, "run", "missing.yaml")
    assert code == ConfigError.exit_code
    assert_clean_error(code, err, "'missing.yaml'", "does not exist")
    assert "Did you mean" not in err


def test_missing_experiment_file_suggests_a_similar_one(capsys, tmp_path):
    write_experiment(tmp_path / "convection.yaml")
    code, _, err = sciml(capsys, "run", "convection.yml")
    assert_clean_error(code, err, "'convection.yml'", "Did you mean `convection.yaml`?")


def test_missing_shipped_experiment_suggests_the_shipped_one(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    code, _, err = sciml(capsys, "run", "experiments/quickstrat.yaml")
    assert_clean_error(code, err, "Did you mean `experiments/quickstart.yaml`?")


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        ("name: [1\n", ["not valid YAML", "line 2"]),
        ("- a list\n", ["must hold a mapping", "list"]),
        (b"\x89HDF\r\n\x1a\n\xff\xfe", ["cannot read"]),
    ],
    ids=["syntax", "not-a-mapping", "binary"],
)
def test_malformed_experiment_file(capsys, tmp_path, content, needles):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    code, _, err = sciml(capsys, "run", path, "--out", tmp_path / "run")
    assert_clean_error(code, err, str(path), *needles)


def test_folder_given_as_experiment(capsys, tmp_path):
    code, _, err = sciml(capsys, "run", tmp_path)
    assert_clean_error(code, err, str(tmp_path), "is a folder")


# -- unknown keys: did-you-mean names the right key ---------------------------------------------
@pytest.mark.parametrize(
    ("replace", "overrides", "needles"),
    [
        (("trainer:", "trainr:"), [], ["`trainr`", "Did you mean `trainer`?"]),
        (("hidden:", "hiden:"), [], ["`model.hiden`", "Did you mean `model.hidden`?"]),
        (("", ""), ["model.init_args.hiden=[3]"], ["`model.hiden`", "Did you mean `model.hidden`?"]),
        (("", ""), ["trainr.max_epochs=3"], ["`trainr`", "Did you mean `trainer`?"]),
        (("", ""), ["trainer.max_epocs=3"], ["`trainer.max_epocs`", "Did you mean `trainer.max_epochs`?"]),
        (("", ""), ["model.optimizer.lbfgs_stepz=3"], ["Did you mean `model.optimizer.lbfgs_steps`?"]),
        (("", ""), ["pde.bet=3"], ["`pde.bet`", "Did you mean `pde.beta`?"]),
        (("accelerator: cpu", "acelerator: cpu"), [], ["Did you mean `trainer.accelerator`?"]),
        (("sciml.models.PINN", "sciml.models.PIN"), [], ["'sciml.models.PIN'", "Did you mean `sciml.models.PINN`?"]),
    ],
    ids=["top-level-in-file", "init-arg-in-file", "init-arg-override", "top-level-override", "trainer-override",
         "nested-dataclass", "pde", "trainer-in-file", "class_path"],
)
def test_unknown_key_suggests_the_right_one(capsys, tmp_path, replace, overrides, needles):
    config = write_experiment(tmp_path / "exp.yaml", replace)
    code, _, err = sciml(capsys, "run", config, *overrides, "--out", tmp_path / "run")
    assert code == ConfigError.exit_code
    assert_clean_error(code, err, *needles)
    assert not (tmp_path / "run").exists(), "a config that does not parse must not touch the run folder"


# -- wrong types -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ("trainer.max_epochs=abc", ["`trainer.max_epochs`", "expected an integer", "'abc'"]),
        ("seed=1.5", ["`seed`", "expected an integer", "'1.5'"]),
        ("pde.beta=fast", ["`pde.beta`", "expected a number", "'fast'"]),
        ("model.hidden=abc", ["`model.hidden`", "expected a list", "'abc'"]),
        ("model.normalize_inputs=maybe", ["`model.normalize_inputs`", "true or false", "'maybe'"]),
        ("model.optimizer.lbfgs_steps=many", ["`model.optimizer.lbfgs_steps`", "expected an integer", "'many'"]),
    ],
)
def test_wrong_type_names_key_value_and_expected_type(capsys, tmp_path, override, needles):
    code, _, err = sciml(capsys, "run", QUICKSTART, override, "--out", tmp_path / "run")
    assert_clean_error(code, err, *needles, f"{override.split('=')[0]}=VALUE")


def test_mapping_override_without_spaces_gets_the_yaml_hint(capsys, tmp_path):
    hc = Path(__file__).resolve().parents[1] / "experiments" / "hc" / "diffusion_sorption_hc.yaml"
    code, _, err = sciml(capsys, "run", hc, "data.generator_params={nx:256}", "--out", tmp_path / "run")
    assert_clean_error(code, err, "`data.generator_params`", "expected a mapping", "got '{nx:256}'", "space after each colon")
    assert "NestedArg" not in err


def test_override_without_equals_sign(capsys, tmp_path):
    code, _, err = sciml(capsys, "run", QUICKSTART, "--out", tmp_path / "run", "max_steps")
    assert_clean_error(code, err, "'max_steps'", "key=value")


# -- sizes out of range: checked by the constructors ------------------------------------------
@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ("data.n_collocation=-5", ["`data`", "data.n_collocation (=-5)", ">= 2"]),
        ("data.nx=-1", ["`data`", "data.nx (=-1)", ">= 4"]),
        ("model.hidden=[-3]", ["`model`", "`hidden` (=[-3])", "positive integer layer widths"]),
        ("model.hidden=[]", ["`model`", "`hidden` (=[])", "positive integer layer widths"]),
        ("model.hidden=[32,0]", ["`model`", "`hidden` (=[32, 0])"]),
        ("model.optimizer.lbfgs_steps=-1", ["`model`", "lbfgs_steps (=-1)", ">= 0"]),
        ("model.activation=tanhh", ["`model`", "'tanhh'", "'tanh'"]),
    ],
)
def test_size_out_of_range_names_key_and_value(capsys, tmp_path, override, needles):
    code, _, err = sciml(capsys, "run", QUICKSTART, override, "--out", tmp_path / "run")
    assert code == ConfigError.exit_code
    assert_clean_error(code, err, *needles)
    assert "Namespace(" not in err  # jsonargparse's dump of the whole section is noise


@pytest.mark.parametrize("name", ["", "a/b", ".."])
def test_name_must_be_a_folder_name(capsys, tmp_path, name):
    code, _, err = sciml(capsys, "run", QUICKSTART, f"name={name}", *TINY)
    assert_clean_error(code, err, f"`name` (={name!r})", "runs/NAME")
    assert list(tmp_path.iterdir()) == []


def test_bad_value_leaves_a_finished_run_folder_alone(capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text('{"metrics": {}}')
    code, _, err = sciml(capsys, "run", QUICKSTART, "data.nx=-1", "--out", out)
    assert_clean_error(code, err, "data.nx (=-1)")
    assert (out / "metrics.json").exists() and not (out / "config.yaml").exists()


def test_a_value_only_the_data_shows_bad_leaves_a_finished_run_folder_alone(capsys, tmp_path):
    """Modes the quick diffusion-sorption grid (26 x 64) cannot hold fail at the first step, after
    the run folder was claimed: the previous run's files come back, and the error is the config's."""
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    files = {"metrics.json": '{"metrics": {}}', "config.yaml": "name: before\n", "checkpoints/last.ckpt": "weights"}
    for name, text in files.items():
        (out / name).write_text(text)
    code, _, err = sciml(capsys, "run", REPO / "experiments/hc/diffusion_sorption_hc.yaml", "--quick", "model.modes=[20, 20]",
                         "--out", out)
    assert_clean_error(code, err, "model.modes", "Use fewer modes")
    assert {name: (out / name).read_text() for name in files} == files
    assert not (out / ".previous").exists() and not (out / "logs").exists()


def test_a_failed_rerun_of_a_finished_run_gives_it_back_whole(capsys, tmp_path):
    """A rerun that diverges at its first step (before any checkpoint of its own), or whose
    trainer cannot be built here, leaves the finished run as it was: checkpoints, metrics, plots."""
    out = tmp_path / "run"
    assert sciml(capsys, "run", QUICKSTART, *TINY, "--out", out)[0] == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert Path("solution.png") in before and Path("checkpoints/last.ckpt") in before
    code, _, err = sciml(capsys, "run", QUICKSTART, *TINY, "model.optimizer.adam_steps=5", "model.optimizer.adam_lr=1e30",
                         "--out", out)
    assert code == 3 and "loss became" in err
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    code, _, err = sciml(capsys, "run", QUICKSTART, *TINY, "trainer.accelerator=tpu", "--out", out)
    assert_clean_error(code, err, "trainer cannot be built here", "trainer.accelerator='tpu'")
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_rerun_touches_only_the_runs_own_files(capsys, tmp_path):
    """--out may be a folder with other things in it (a project, a parent of other runs): a rerun
    there sets aside and replaces the run's own files only, whether it finishes or fails."""
    out = tmp_path / "project"
    (out / "other_run" / "checkpoints").mkdir(parents=True)
    (out / "other_run" / "metrics.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    assert sciml(capsys, "run", QUICKSTART, *TINY, "--out", out)[0] == 0
    assert sciml(capsys, "run", QUICKSTART, *TINY, "model.hidden=[8]", "--out", out)[0] == 0  # another config: replaced
    code, _, _ = sciml(capsys, "run", QUICKSTART, *TINY, "model.optimizer.adam_steps=5", "model.optimizer.adam_lr=1e30", "--out", out)
    assert code == 3  # diverged: the [8] run comes back
    assert (out / "notes.txt").read_text() == "mine" and (out / "other_run" / "metrics.json").exists()
    assert "hidden:\n    - 8\n" in (out / "config.yaml").read_text() and not (out / ".previous").exists()


def test_training_without_its_evaluation_is_evaluated_by_the_next_run(capsys, tmp_path):
    """`sciml train` (or Ctrl-C in the evaluation) leaves a trained run without metrics.json: the
    next `sciml run` of that config evaluates it, it does not train again."""
    out = tmp_path / "run"
    assert sciml(capsys, "train", QUICKSTART, *TINY, "--out", out)[0] == 0
    weights = (out / "checkpoints" / "last.ckpt").read_bytes()
    code, printed, _ = sciml(capsys, "run", QUICKSTART, *TINY, "--out", out)
    assert code == 0 and "resuming" in printed and (out / "metrics.json").exists()
    assert json.loads((out / "metrics.json").read_text())["steps"] == 5
    import torch

    from sciml.models import load_model

    before = torch.load(io.BytesIO(weights), weights_only=True)["state_dict"]
    after = load_model(out / "checkpoints" / "last.ckpt").state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the same weights: evaluated, not retrained


def test_a_finished_run_set_aside_survives_further_interrupted_reruns(tmp_path):
    """.previous holds the finished run while a rerun that got past its first checkpoint was
    interrupted; another rerun with yet another config replaces the interrupted one's files, not
    the finished run, which comes back when that rerun fails too."""
    from sciml.pipeline import _restore, _set_aside

    out = tmp_path / "run"
    (out / ".previous" / "checkpoints").mkdir(parents=True)
    (out / ".previous" / "metrics.json").write_text("finished")
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "last.ckpt").write_text("interrupted rerun")
    (out / "config.yaml").write_text("interrupted rerun")
    aside = _set_aside(out)
    assert (aside / "metrics.json").read_text() == "finished" and not (out / "config.yaml").exists()
    (out / "config.yaml").write_text("the newest rerun, failing early")
    _restore(aside, out)
    assert (out / "metrics.json").read_text() == "finished" and not (out / "config.yaml").exists()


def test_paths_that_cannot_be_written_are_the_users_to_fix(capsys, tmp_path):
    """An --out under a file, or a file where a folder goes: a clean message naming the path and
    exit 2, not an "unexpected" error."""
    (tmp_path / "afile").write_text("")
    code, _, err = sciml(capsys, "run", QUICKSTART, *TINY, "--out", tmp_path / "afile" / "run")
    assert_clean_error(code, err, "cannot use", "afile", "Not a directory", "Check the paths given")
    assert code == ConfigError.exit_code
    code, _, err = sciml(capsys, "bench", "fields", "--quick", "--out", tmp_path / "afile")
    assert code == ConfigError.exit_code and "cannot use" in err and "unexpected" not in err
    code, _, err = sciml(capsys, "run", REPO / "experiments/lpinn/sweep.yaml", "speeds=[5", "--out", tmp_path / "s")
    assert_clean_error(code, err, "'speeds=[5' is not a YAML value", "args.speeds=[5,30]")
    assert code == ConfigError.exit_code


def test_a_run_set_aside_by_a_killed_rerun_is_put_back(tmp_path):
    """A rerun killed (SIGKILL) after setting the finished run aside and before a checkpoint of
    its own: the next command puts the finished run back before deciding anything."""
    from sciml.pipeline import _recover

    out = tmp_path / "run"
    (out / ".previous" / "checkpoints").mkdir(parents=True)
    (out / ".previous" / "checkpoints" / "last.ckpt").write_text("weights")
    (out / ".previous" / "metrics.json").write_text("{}")
    (out / "config.yaml").write_text("the killed rerun's")
    (out / "logs").mkdir()
    _recover(out)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["checkpoints", "checkpoints/last.ckpt", "metrics.json"]
    (out / "config.yaml").write_text("a rerun that got as far as a checkpoint of its own keeps it")
    (out / ".previous").mkdir()
    _recover(out)
    assert (out / ".previous").exists() and (out / "config.yaml").exists()


# -- dataset files -----------------------------------------------------------------------------
def test_data_info_summarises_a_good_file(capsys, dataset):
    code, out, err = sciml(capsys, "data", "info", dataset)
    assert code == 0, err
    assert str(dataset) in out
    rows = dict(line.split(None, 1) for line in out.splitlines() if line and not line.startswith(("grid", "param", "common", "config")))
    assert rows["pde"].startswith("convection")
    assert rows["samples"] == "1"
    assert rows["u"].startswith("float64 [1, 8, 32]")


def test_data_info_refuses_a_truncated_file(capsys, dataset, tmp_path):
    truncated = tmp_path / "truncated.h5"
    data = dataset.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    code, _, err = sciml(capsys, "data", "info", truncated)
    assert code == DataError.exit_code
    assert_clean_error(code, err, str(truncated), "truncated", "sciml data generate")


def test_data_info_refuses_a_file_that_is_not_hdf5(capsys, tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("u, t, x\n1, 2, 3\n")
    code, _, err = sciml(capsys, "data", "info", text)
    assert_clean_error(code, err, str(text), "not a readable HDF5 file")


def test_data_info_on_a_missing_file(capsys, tmp_path):
    missing = tmp_path / "nowhere.h5"
    code, _, err = sciml(capsys, "data", "info", missing)
    assert_clean_error(code, err, str(missing), "does not exist", "sciml data generate")


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["nosuch"], ["'nosuch'", "convection"]),
        (["convection", "bet=3"], ["'bet'", "beta"]),
        (["convection", "beta=[1"], ["`beta`", "'[1'"]),
        (["convection", "beta"], ["'beta'", "key=value", "beta=30"]),
        (["convection", "nx=-1"], ["`nx` (=-1)"]),
    ],
)
def test_data_generate_bad_input(capsys, tmp_path, argv, needles):
    code, _, err = sciml(capsys, "data", "generate", *argv, "--out", tmp_path / "x.h5")
    assert_clean_error(code, err, *needles)
    assert not (tmp_path / "x.h5").exists()


# -- --debug, interrupts and unexpected errors ------------------------------------------------
@pytest.mark.parametrize("argv", [["--debug", "run", "missing.yaml"], ["run", "--debug", "missing.yaml"], ["run", "missing.yaml", "--debug"]])
def test_debug_lets_the_error_through_wherever_the_flag_is(argv):
    with pytest.raises(ConfigError, match="missing.yaml"):
        cli.main(argv)


def test_interrupt_exits_130_without_traceback(capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_dispatch", interrupted)
    code, _, err = sciml(capsys, "data", "info", "x.h5")
    assert code == cli.EXIT_INTERRUPTED
    assert "interrupted" in err and "Traceback" not in err


def test_unexpected_error_is_short_and_points_to_debug(capsys, monkeypatch):
    def broken(args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli, "_dispatch", broken)
    code, _, err = sciml(capsys, "data", "info", "x.h5")
    assert_clean_error(code, err, "ZeroDivisionError", "--debug")
    with pytest.raises(ZeroDivisionError):
        cli.main(["--debug", "data", "info", "x.h5"])


def test_console_script_end_to_end(tmp_path):
    """The installed `sciml`: clean message and exit 2 by default, the traceback with --debug."""
    missing = tmp_path / "missing.yaml"
    plain = run_sciml("run", missing, cwd=tmp_path)
    assert plain.returncode == 2
    assert "Traceback" not in plain.stderr
    assert plain.stderr.startswith(f"error: experiment file '{missing}' does not exist")
    debug = run_sciml("--debug", "run", missing, cwd=tmp_path)
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr and "ConfigError" in debug.stderr


def test_console_script_on_a_corrupt_dataset(tmp_path):
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(200))
    result = run_sciml("data", "info", corrupt, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: {corrupt} is not a readable HDF5 file")


# -- a run folder reproduces its run -----------------------------------------------------------
def test_resolved_config_reruns_to_the_same_metrics(capsys, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    # Options before and after the overrides: both orders must parse.
    code, out, err = sciml(capsys, "run", QUICKSTART, "--quick", *TINY[:2], "--out", first, *TINY[2:])
    assert code == 0, err
    assert out.strip().splitlines()[-1].startswith("quickstart: rel_l2=")
    config = (first / "config.yaml").read_text()
    assert "lbfgs_steps: 5" in config  # the override beats the file's `quick` (30 steps)

    code, _, err = sciml(capsys, "run", first / "config.yaml", "--quick", "--out", second)
    assert code == 0, err
    assert (second / "config.yaml").read_text() == config
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (first, second))
    assert a["metrics"] == b["metrics"]
    assert a["steps"] == b["steps"] == 5
    assert not [p.name for p in first.iterdir() if p.name.endswith(".tmp")]


def test_metrics_are_written_atomically(tmp_path, monkeypatch):
    """A process killed while writing leaves the previous complete file and no temp files."""
    path = tmp_path / "metrics.json"
    _io.atomic_write_json(path, {"metrics": {"rel_l2": 0.5}})

    def killed(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(_io.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        _io.atomic_write_json(path, {"metrics": {"rel_l2": 0.1}})
    assert json.loads(path.read_text()) == {"metrics": {"rel_l2": 0.5}}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_out_must_be_a_folder(capsys, tmp_path):
    target = tmp_path / "afile"
    target.write_text("x")
    code, _, err = sciml(capsys, "run", QUICKSTART, *TINY, "--out", target)
    assert_clean_error(code, err, str(target), "give --out a folder")
    assert target.read_text() == "x"


def test_negative_threads_is_refused(capsys, tmp_path):
    code, _, err = sciml(capsys, "run", QUICKSTART, "threads=-2", *TINY, "--out", tmp_path / "r")
    assert_clean_error(code, err, "`threads` (=-2)")


def test_xdmf_export_never_overwrites_the_dataset(capsys, tmp_path):
    pytest.importorskip("mpi4py.MPI")
    pytest.importorskip("dolfinx")
    data = tmp_path / "pme.h5"
    assert cli.main(["data", "generate", "pme_fem", "dim=2", "nx=6", "nt=3", "--out", str(data)]) == 0
    before = data.read_bytes()
    code, _, err = sciml(capsys, "data", "xdmf", data, "--out", tmp_path / "pme.xdmf")
    assert_clean_error(code, err, "would overwrite the dataset")
    assert data.read_bytes() == before
    assert cli.main(["data", "xdmf", str(data)]) == 0
    assert (tmp_path / "pme-sample0.xdmf").exists() and (tmp_path / "pme-sample0.h5").exists()


def test_killed_generation_resumes_to_a_complete_valid_file(tmp_path):
    """SIGKILL in the middle of `sciml data generate`: the rerun finishes the .partial file."""
    import signal
    import time

    import h5py
    import numpy as np

    out = tmp_path / "b.h5"
    argv = [sys.executable, "-m", "sciml.cli", "data", "generate", "burgers", "nx=512", "nt=50", "nu=0.01", "--n", "40", "--out", str(out)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = tmp_path / "b.h5.partial"
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        if partial.exists():
            try:
                with h5py.File(partial, "r", locking=False) as f:
                    done = int(f["samples/done"][()].sum())
            except (OSError, KeyError):
                continue
            if done >= 2:
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and partial.exists() and 2 <= done < 40
    rerun = subprocess.run(argv, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    from sciml.data.schema import validate_dataset

    assert validate_dataset(out).n_samples == 40 and not partial.exists()
    assert "damaged" not in rerun.stderr  # resumed, not started over
    from sciml.data.generators import generate

    once = generate("burgers", tmp_path / "once.h5", n=40, params={"nx": 512, "nt": 50, "nu": 0.01}, progress=False)
    with h5py.File(out) as f, h5py.File(once) as g:
        assert np.array_equal(f["samples/u"][()], g["samples/u"][()])


def test_evaluate_on_a_study_folder_names_its_runs(capsys, tmp_path):
    study = tmp_path / "study"
    (study / "c30").mkdir(parents=True)
    (study / "config.yaml").write_text("name: s\nstudy: sciml.studies.lpinn.sweep\nargs: {speeds: [30]}\n")
    (study / "c30" / "config.yaml").write_text("name: a\n")
    code, _, err = sciml(capsys, "evaluate", study)
    assert code == ConfigError.exit_code
    assert_clean_error(code, err, "is the folder of a study", "cannot be evaluated as a whole", str(study / "c30"))


def test_evaluate_on_a_comparison_without_a_trained_run_names_it(capsys, tmp_path):
    study = tmp_path / "study"
    (study / "anp").mkdir(parents=True)
    (study / "config.yaml").write_text("name: s\nstudy: sciml.studies.probconserv.compare\n"
                                       "args: {models: {anp: experiments/probconserv/anp_diffusion.yaml}}\n")
    (study / "metrics.json").write_text("{}")
    code, _, err = sciml(capsys, "evaluate", study)
    assert_clean_error(code, err, "has no trained run of 'anp'", str(study / "anp" / "checkpoints" / "last.ckpt"), "sciml run")
    assert (study / "metrics.json").read_text() == "{}"  # nothing lost on a refusal
    code, _, err = sciml(capsys, "evaluate", study, "--checkpoint", study / "x.ckpt")
    assert_clean_error(code, err, "drop --checkpoint")
    (study / "config.yaml").write_text("name: s\nstudy: sciml.studies.probconserv.compare\nargs: {models: {anp: a.yaml}, seeds: 3}\n")
    code, _, err = sciml(capsys, "evaluate", study)
    assert_clean_error(code, err, "its `args` do not fit sciml.studies.probconserv.compare", "seeds")


def test_bench_help_names_every_benchmark(capsys):
    from sciml.bench import BENCHMARKS

    code, out, _ = sciml(capsys, "bench", "--help")
    assert code == 0
    text = " ".join(out.split())
    for name in BENCHMARKS:
        assert f"{name} (" in text, name


_MAPPED = """
import ctypes, torch
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                                                "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
def mapped_mb():
    before = libc.mallinfo2().hblkhd
    big = torch.ones(8 * 2**20, dtype=torch.float64)  # 64 MB
    return (libc.mallinfo2().hblkhd - before) // 2**20
"""
_MAPPED_FOR_A_LARGE_TENSOR = _MAPPED + """
import subprocess, sys
from sciml.cli import keep_large_allocations
applied = keep_large_allocations()
child = subprocess.run([sys.executable, "-c", sys.argv[1] + "print(mapped_mb())"], capture_output=True, text=True, check=True).stdout.split()
print(applied, mapped_mb(), *child)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")
@pytest.mark.parametrize("env, applied, mapped_mb", [({}, "True", 0), ({"SCIML_MALLOC": "system"}, "False", 64),
                                                     ({"MALLOC_MMAP_MAX_": "65536"}, "False", 64)])
def test_the_command_keeps_large_allocations_on_the_heap_unless_told_not_to(env, applied, mapped_mb):
    """`sciml` serves large tensors from glibc's reused heap (no fresh kernel mapping, and its page
    faults, per allocation), and so do the processes it starts (a benchmark's subprocesses);
    SCIML_MALLOC=system or the user's own MALLOC_MMAP_MAX_ leave glibc's default, which maps a
    64 MB tensor fresh."""
    clean = {k: v for k, v in os.environ.items() if k not in ("SCIML_MALLOC", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")}
    out = subprocess.run([sys.executable, "-c", _MAPPED_FOR_A_LARGE_TENSOR, _MAPPED], env={**clean, **env}, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == [applied, str(mapped_mb), str(mapped_mb)]


def test_parameters_in_exponent_notation_are_numbers():
    """YAML 1.1 reads 1e-3 (no dot) as a string; `sciml data generate ... nu=1e-3` means the number."""
    from sciml.cli import _parse_params

    assert _parse_params(["nu=1e-3", "k=2e0", "beta=30", "ic=sine", "modes=[1, 2]"]) == \
        {"nu": 0.001, "k": 2.0, "beta": 30, "ic": "sine", "modes": [1, 2]}
