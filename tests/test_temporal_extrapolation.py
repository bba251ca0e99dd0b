"""Temporal extrapolation: training on t <= train_t_max, evaluation on the whole time span with
the metrics split into the training window (interp/) and beyond it (extrap/)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sciml.data.datamodules import SampleDataModule
from sciml.data.schema import PDEDataset, write_dataset
from sciml.errors import ConfigError
from sciml.metrics import compute_metrics
from sciml.pipeline import run_experiment, window_metrics

N, T, N_X = 8, np.linspace(0.0, 5.0, 6), 4


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    u = np.arange(N)[:, None, None] + T[None, :, None] / 10 + np.arange(N_X) / 1000  # u[i, k, j] names its own sample and time
    ds = PDEDataset(pde="burgers", u=u, params=np.zeros((N, 0)), param_names=[], generator="test",
                    grid={"t": T, "x": np.linspace(0, 1, N_X)}, u0=u[:, 0])
    return str(write_dataset(tmp_path_factory.mktemp("data") / "samples.h5", ds))


def test_training_batches_stop_at_train_t_max_and_evaluation_keeps_the_whole_span(path):
    dm = SampleDataModule(path, batch_size=3, val_fraction=0.25, test_fraction=0.25, train_t_max=3.0)
    dm.setup("fit")
    np.testing.assert_array_equal(dm.grid["t"], T)
    np.testing.assert_array_equal(dm.train_grid["t"], [0.0, 1.0, 2.0, 3.0])
    for batch in dm.train_dataloader():
        assert batch["u"].shape[1:] == (4, N_X)
        np.testing.assert_allclose(batch["u"][:, :, 0], batch["index"][:, None] + T[:4] / 10, rtol=1e-6)
        np.testing.assert_allclose(batch["u0"], batch["u"][:, 0])
    for loader in (dm.val_dataloader(), dm.test_dataloader()):
        assert next(iter(loader))["u"].shape[1:] == (len(T), N_X)
    whole = SampleDataModule(path)
    whole.setup()
    np.testing.assert_array_equal(whole.train_grid["t"], T)


@pytest.mark.parametrize("t_max, match", [
    (5.0, r"`train_t_max` \(=5.0\) covers the whole time grid \[0, 5\]"),
    (1.5, r"keeps 2 of the 6 time slices.*Raise it to >= 2"),
    ("late", r"`train_t_max` \(='late'\) must be a number"),
])
def test_bad_train_t_max_is_refused(path, t_max, match):
    with pytest.raises(ConfigError, match=match):
        SampleDataModule(path, train_t_max=t_max).setup()


def test_window_metrics_are_the_metrics_of_the_two_slices():
    rng = np.random.default_rng(0)
    true = rng.normal(size=(3, 6, 8)) + 2
    pred = true + 0.1 * rng.normal(size=true.shape) * np.arange(6)[:, None]  # the error grows in time
    m = window_metrics(pred, true, 4)
    assert m == {f"interp/{k}": v for k, v in compute_metrics(pred[:, :4], true[:, :4]).items()} | \
                {f"extrap/{k}": v for k, v in compute_metrics(pred[:, 4:], true[:, 4:]).items()}
    assert m["extrap/rel_l2"] > m["interp/rel_l2"]


def test_quick_extrapolation_experiment_trains_on_the_window_and_reports_both(tmp_path, monkeypatch):
    from sciml.models import PhysicsFNO

    seen = []  # (training?, time slices) of every forward pass
    forward = PhysicsFNO.forward
    monkeypatch.setattr(PhysicsFNO, "forward", lambda self, u0, t, x: seen.append((self.training, len(t))) or forward(self, u0, t, x))
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(tmp_path)
    shutil.copytree(root / "experiments" / "hc", tmp_path / "experiments" / "hc")
    report = run_experiment("experiments/hc/diffusion_sorption_moe_extrapolation.yaml", out=tmp_path / "run", quick=True,
                            overrides=["data.n_samples=6", "data.generator_params={nx: 16, nt: 26}", "data.path=data/ds.h5",
                                       "data.batch_size=2", "trainer.max_steps=2", "model.solver={points: 60, max_steps: 10}"])
    m = report["metrics"]
    for key in ("rel_l2", "nrmse", "interp/rel_l2", "interp/nrmse", "extrap/rel_l2", "extrap/nrmse", "extrap/max_abs_err",
                "window/rel_l2", "window/nrmse"):
        assert np.isfinite(m[key]), key
    # Training and the window/ metrics see t <= 400 (21 of the 26 times in [0, 500]); the rest the whole span.
    assert set(seen) == {(True, 21), (False, 26), (False, 21)}
    # window/: the window predicted on its own grid, which differs from the window cut from the whole span.
    from sciml.config import load_config
    from sciml.models import load_model
    from sciml.pipeline import _predict_test_split, instantiate

    model = load_model(tmp_path / "run" / "checkpoints" / "last.ckpt").eval()
    dm = instantiate(*load_config(tmp_path / "run" / "config.yaml")).data
    dm.prepare_data()
    dm.setup("test")
    _, _, true, _, _, u0 = _predict_test_split(model, dm)
    window = model.predict_samples(u0, dm.train_grid["t"], dm.grid["x"])
    assert m["window/rel_l2"] == pytest.approx(compute_metrics(window, true[:, :21])["rel_l2"], rel=1e-6)
    assert m["window/rel_l2"] != pytest.approx(m["interp/rel_l2"], rel=1e-6)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]["extrap/rel_l2"] == m["extrap/rel_l2"]
