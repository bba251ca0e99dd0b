"""The Lagrangian PINN: its ansatz, its residuals, the Eulerian mapping, training and the studies."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from sciml.data import CollocationDataModule
from sciml.models import LPINN, load_model
from sciml.models.lpinn import lagrangian_wxx, to_eulerian
from sciml.models.pinn import OptimizerConfig
from sciml.pdes import Burgers, Convection, ConvectionDiffusion, DiffusionSorption, Reaction

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SCIML_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def _fit(model, dm):
    trainer = L.Trainer(max_steps=model.total_steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)


def test_pure_convection_learns_straight_characteristics(data_dir):
    """u_t + 40 u_x = 0: X = x0 + 40 t and w = sin x0, and the Eulerian field sin(x - 40 t)."""
    L.seed_everything(0, verbose=False)
    pde = Convection(beta=40.0)
    dm = CollocationDataModule(pde, nx=64, nt=20, n_collocation=300)
    model = LPINN(pde, hidden=[16], characteristic_hidden=[16], optimizer=OptimizerConfig(adam_steps=100, adam_lr=0.02, lbfgs_steps=100))
    _fit(model, dm)
    x0, t = np.linspace(0, 2 * np.pi, 9), np.linspace(0, 1, 7)
    X, w = model.predict_lagrangian(x0, t)
    np.testing.assert_allclose(X, x0[None] + 40 * t[:, None], atol=2e-3)
    np.testing.assert_allclose(w, np.broadcast_to(np.sin(x0), w.shape), atol=2e-3)
    dm.setup()
    assert np.linalg.norm(model.predict_grid(dm.x, dm.t) - dm.u) / np.linalg.norm(dm.u) < 5e-3


def test_chain_rule_diffusion_matches_an_analytic_map():
    """X = x0 + a sin(x0) (X_x0 = 1 + a cos x0 != 1) and w = sin(X): w_XX = -sin(X) exactly, while the
    label-derivative shortcut w_x0x0 is a different function."""
    x0 = torch.linspace(0, 2 * math.pi, 41, dtype=torch.float64).requires_grad_(True)
    X = x0 + 0.5 * torch.sin(x0)
    w = torch.sin(X)
    w_XX = lagrangian_wxx(w, X, x0)
    torch.testing.assert_close(w_XX, -torch.sin(X), rtol=0, atol=1e-12)
    (w_x0,) = torch.autograd.grad(w.sum(), x0, create_graph=True)
    (w_x0x0,) = torch.autograd.grad(w_x0.sum(), x0)
    assert float((w_x0x0 - w_XX).detach().abs().max()) > 0.5
    # with X_x0 = 1 (uniform translation) the two agree
    shifted = x0 + 3.0
    torch.testing.assert_close(lagrangian_wxx(torch.sin(shifted), shifted, x0), -torch.sin(shifted), rtol=0, atol=1e-12)


def test_eulerian_mapping_round_trips_a_known_field():
    """Labels carried by a non-uniform map that wraps the period several times, with w the known
    field F(X, t): mapped back, the grid holds F(x, t)."""
    F = lambda x, t: np.sin(x - 2 * t) + 0.5 * np.cos(2 * x)  # noqa: E731
    x0 = 2 * np.pi * np.arange(4096) / 4096
    t = np.linspace(0, 1, 5)[:, None]
    X = x0 + 30 * t + 0.4 * t * np.sin(x0)  # X_x0 = 1 + 0.4 t cos x0 > 0
    x = 2 * np.pi * np.arange(64) / 64
    u = to_eulerian(X, F(X, t), x, (0.0, 2 * np.pi))
    np.testing.assert_allclose(u, F(x[None], t), atol=2e-5)
    with pytest.raises(ValueError, match="n_t, n_labels"):
        to_eulerian(X[0], X[0], x, (0.0, 2 * np.pi))


@pytest.mark.parametrize("pde, ic_error", [
    (Convection(beta=30.0), 1e-12),
    (Burgers(nu=0.01, ic="sine_offset", offset=2.0), 1e-12),
    # the Gaussian bump is not periodic (3e-4 at the ends): its trigonometric interpolant is close, not equal
    (ConvectionDiffusion(beta=5.0, nu=0.1, ic="gaussian"), 1e-6),
])
def test_initial_conditions_are_exact(pde, ic_error):
    torch.manual_seed(0)
    model = LPINN(pde, hidden=[8], characteristic_hidden=[8]).double()
    x0 = torch.rand(50, dtype=torch.float64) * 2 * math.pi  # off any grid
    X, w = model(x0, torch.zeros_like(x0))
    assert torch.equal(X, x0) and torch.equal(w, model.u0(x0))
    np.testing.assert_allclose(w.detach().numpy(), pde.initial_condition(x0.numpy()), rtol=0, atol=ic_error)
    X, w = model(x0, torch.full_like(x0, 0.5))
    assert torch.all(X != x0) and torch.all(w != model.u0(x0))  # the networks do act for t > 0


def test_loss_vanishes_for_the_exact_lagrangian_solution(data_dir):
    """Convection-diffusion along X = x0 + c t: w = exp(-nu t) sin x0. A wrong speed or
    viscosity shows in the characteristic and state terms."""
    c, nu = 3.0, 0.2
    pde = ConvectionDiffusion(beta=c, nu=nu)
    dm = CollocationDataModule(pde, nx=64, nt=20, n_collocation=200)
    dm.prepare_data()
    dm.setup()
    batch = {k: v.double() for k, v in dm.batch().items()}
    model = LPINN(pde, hidden=[4], characteristic_hidden=[4], ic_exact=False).double()
    model.forward = lambda x0, t: (x0 + c * t, torch.exp(-nu * t) * torch.sin(x0))  # type: ignore[method-assign]
    terms = model.loss_terms(batch)
    assert set(terms) == {"loss", "ic", "characteristic", "state"}
    assert float(terms["characteristic"]) < 1e-24 and float(terms["state"]) < 1e-24
    assert float(terms["ic"]) < 1e-13  # u_ic comes as float32 data
    model.forward = lambda x0, t: (x0 + 2 * c * t, torch.exp(-2 * nu * t) * torch.sin(x0))  # type: ignore[method-assign]
    terms = model.loss_terms(batch)
    assert float(terms["characteristic"]) == pytest.approx(c**2) and float(terms["state"]) > 1e-3


def test_speed_comes_from_the_residual():
    w = torch.tensor([-1.0, 0.5, 2.5])
    assert torch.equal(LPINN(Burgers(nu=0.01), hidden=[4], characteristic_hidden=[4]).speed(w), w)
    assert torch.equal(LPINN(Convection(beta=7.0), hidden=[4], characteristic_hidden=[4]).speed(w), torch.full_like(w, 7.0))
    assert torch.equal(LPINN(Reaction(rho=2.0), hidden=[4], characteristic_hidden=[4]).speed(w), torch.zeros_like(w))


def test_pde_without_characteristics_is_rejected():
    from sciml.errors import ConfigError

    with pytest.raises(ConfigError, match="periodic 1D PDE"):
        LPINN(DiffusionSorption())


def test_run_resumes_across_the_optimizer_switch_and_reloads(tmp_path, data_dir, interrupt_at):
    """A run killed just after the checkpoint saved at the last Adam step resumes into L-BFGS (the
    checkpoint holds Adam's state, which L-BFGS cannot load) and ends where an uninterrupted run
    ends; the last checkpoint holds the final weights (the budget is not a multiple of the
    checkpoint interval) and rebuilds the model."""
    import sciml.pipeline as pipeline
    from sciml.data.schema import read_dataset

    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        "name: small\nseed: 0\n"
        "pde: {class_path: sciml.pdes.Convection, init_args: {beta: 20.0}}\n"
        "data: {class_path: sciml.data.CollocationDataModule, init_args: {nx: 32, nt: 10, n_collocation: 100}}\n"
        "model: {class_path: sciml.models.LPINN, init_args: {hidden: [8], characteristic_hidden: [8], "
        f"optimizer: {{adam_steps: {pipeline.CHECKPOINT_EVERY}, adam_lr: 0.02, lbfgs_steps: 10, stall_patience: 0}}}}}}\n"
        "trainer: {accelerator: cpu}\n"
    )
    full = pipeline.run_experiment(cfg, out=tmp_path / "full")
    model = load_model(tmp_path / "full" / "checkpoints" / "last.ckpt")
    assert isinstance(model, LPINN)
    truth = read_dataset(next(data_dir.glob("convection-*.h5"))).u[0]
    x, t = np.linspace(0, 2 * np.pi, 32, endpoint=False), np.linspace(0, 1, 10)
    error = np.linalg.norm(model.predict_grid(x, t) - truth) / np.linalg.norm(truth)
    assert error == pytest.approx(full["metrics"]["rel_l2"], rel=1e-6)

    out = tmp_path / "run"
    interrupt_at(pipeline.CHECKPOINT_EVERY + 3)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_experiment(cfg, out=out)
    interrupt_at(None)
    resumed = pipeline.run_experiment(cfg, out=out)
    assert resumed["model"] == "lpinn" and resumed["steps"] == pipeline.CHECKPOINT_EVERY + 10
    assert resumed["metrics"]["rel_l2"] == pytest.approx(full["metrics"]["rel_l2"], rel=1e-3)


def test_sweep_study_writes_its_table_plot_and_metrics(tmp_path, data_dir, monkeypatch):
    from sciml.pipeline import run_experiment

    monkeypatch.chdir(REPO)
    tiny = "[model.optimizer.adam_steps=2, model.optimizer.lbfgs_steps=2, data.nx=32, data.nt=10, data.n_collocation=50]"
    out = tmp_path / "sweep"
    report = run_experiment(REPO / "experiments/lpinn/sweep.yaml", quick=True, out=out, overrides=["speeds=[5]", f"overrides={tiny}"])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert set(saved["metrics"]) >= {"pinn/rel_l2_c5", "lpinn/rel_l2_c5", "lpinn/rel_l2_max"}
    for name in ("errors.md", "errors.json", "error_vs_c.png", "lpinn/c5/metrics.json", "pinn/c5/solution.png"):
        assert (out / name).is_file(), name
    table = json.loads((out / "errors.json").read_text())
    assert table["speeds"] == [5.0] and table["budget"]["lpinn"]["optimizer"]["adam_steps"] == 2
    runs = [json.loads((out / name / "c5" / "metrics.json").read_text())["seconds"] for name in ("pinn", "pinn_scaled", "lpinn")]
    assert saved["seconds"] == pytest.approx({k: sum(r[k] for r in runs) for k in ("train", "eval")})

    # a rerun the study refuses for a bad argument leaves the finished study's files as they were
    before = {name: (out / name).read_bytes() for name in ("metrics.json", "config.yaml")}
    from sciml.errors import ConfigError

    with pytest.raises(ConfigError, match="speeds"):
        run_experiment(REPO / "experiments/lpinn/sweep.yaml", quick=True, out=out, overrides=["speeds=[abc]"])
    assert {name: (out / name).read_bytes() for name in before} == before

    # rerun (an interrupted study, say): its finished runs are reused, not trained again
    runs_before = {p: p.read_bytes() for p in out.glob("*/c5/metrics.json")}
    again = run_experiment(REPO / "experiments/lpinn/sweep.yaml", quick=True, out=out, overrides=["speeds=[5]", f"overrides={tiny}"])
    assert again["metrics"] == saved["metrics"] and {p: p.read_bytes() for p in runs_before} == runs_before


@pytest.mark.parametrize("override, message", [
    ("speeds=5", "speeds"),
    ("speeds=[fast]", "numbers"),
    ("models={lpinn: 3}", "models.lpinn"),
    ("models={lpinn: experiments/lpinn/nope.yaml}", "does not exist"),
])
def test_bad_study_arguments_are_rejected(tmp_path, override, message, monkeypatch):
    from sciml.errors import ConfigError
    from sciml.pipeline import run_experiment

    monkeypatch.chdir(REPO)
    with pytest.raises(ConfigError, match=message):
        run_experiment(REPO / "experiments/lpinn/sweep.yaml", out=tmp_path / "sweep", overrides=[override])


def test_a_studys_model_files_are_found_from_any_working_directory(tmp_path, monkeypatch):
    """The shipped studies name their models from the project root (experiments/lpinn/...): run
    from elsewhere, they are found from the study file's folder's parents; a path that exists as
    given, or a mapping with overrides, is kept."""
    from sciml.studies import _resolve_models

    root = tmp_path / "project"
    (root / "experiments" / "lpinn").mkdir(parents=True)
    study = root / "experiments" / "lpinn" / "study.yaml"
    model = root / "experiments" / "lpinn" / "pinn.yaml"
    study.write_text("")
    model.write_text("")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    got = _resolve_models({"pinn": "experiments/lpinn/pinn.yaml", "lpinn": {"config": "experiments/lpinn/pinn.yaml", "overrides": ["a=1"]},
                           "missing": "experiments/lpinn/none.yaml"}, study)
    assert got == {"pinn": str(model), "lpinn": {"config": str(model), "overrides": ["a=1"]}, "missing": "experiments/lpinn/none.yaml"}
    monkeypatch.chdir(root)  # from the project root the path exists as given
    assert _resolve_models({"pinn": "experiments/lpinn/pinn.yaml"}, study) == {"pinn": "experiments/lpinn/pinn.yaml"}
