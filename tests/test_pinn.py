"""The PINN module: its loss, its optimisers (Adam -> L-BFGS), training, resume and the pipeline."""

from __future__ import annotations

import csv
import json

import lightning as L
import numpy as np
import pytest
import torch

from sciml.data import CollocationDataModule
from sciml.models import PINN, load_model
from sciml.errors import ConfigError
from sciml.models.pinn import LossWeights, OptimizerConfig
from sciml.pdes import Burgers, Convection, DiffusionSorption, Reaction


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SCIML_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def _fit(model, dm, steps, **trainer_kwargs):
    trainer = L.Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, **trainer_kwargs,
    )
    trainer.fit(model, datamodule=dm)
    return trainer


def test_loss_is_zero_for_the_exact_solution(data_dir):
    """Every loss term vanishes when the network is replaced by the exact solution sin(x - beta t)."""
    pde = Convection(beta=3.0)
    dm = CollocationDataModule(pde, nx=64, nt=20, n_collocation=200)
    dm.prepare_data()
    dm.setup()
    batch = {k: v.double() for k, v in dm.batch().items()}
    model = PINN(pde, hidden=[4]).double()
    model.forward = lambda x, t: torch.sin(x - 3.0 * t)  # type: ignore[method-assign]
    terms = model.loss_terms(batch)
    for name in ("ic", "bc", "pde"):
        assert float(terms[name]) < 1e-10, (name, float(terms[name]))
    model.forward = lambda x, t: torch.sin(x - 2.0 * t)  # wrong speed: the residual says so
    assert float(model.loss_terms(batch)["pde"]) > 0.1


def _hand_batch(n: int = 9) -> dict[str, torch.Tensor]:
    """A float64 batch on [0, 2 pi] x [0, 1] without a dataset: collocation points, the IC row
    (target 0) and the boundary times."""
    x = torch.linspace(0, 2 * np.pi, n, dtype=torch.float64)
    t = torch.linspace(0, 1, n, dtype=torch.float64)
    return {"x_f": x, "t_f": t.flip(0), "x_ic": x, "u_ic": torch.zeros_like(x), "t_b": t}


def _bump(x, t):
    """x (2 pi - x): equal at both walls (0), but u_x is 2 pi at x = 0 and -2 pi at x = 2 pi."""
    return x * (2 * np.pi - x) + 0 * t


def test_second_order_pdes_also_need_u_x_periodic():
    """A field periodic in u but not in u_x: its BC term is (2 pi - (-2 pi))^2 = 16 pi^2 for
    Burgers (u_xx in its residual: u_x must match across the wall too), 0 for first-order
    convection, where u alone is matched."""
    batch = _hand_batch()
    burgers = PINN(Burgers(nu=0.1), hidden=[4]).double()
    burgers.forward = _bump  # type: ignore[method-assign]
    assert float(burgers.loss_terms(batch)["bc"].detach()) == pytest.approx(16 * np.pi**2, rel=1e-12)
    convection = PINN(Convection(beta=1.0), hidden=[4]).double()
    convection.forward = _bump  # type: ignore[method-assign]
    assert float(convection.loss_terms(batch)["bc"].detach()) == 0.0


def test_the_total_loss_is_the_sum_of_the_weighted_terms():
    """With LossWeights(ic=2, bc=3, pde=5) and every term nonzero, loss = 2 ic + 3 bc + 5 pde
    (each weight on its own term: distinct weights tell a swapped one)."""
    batch = _hand_batch()
    model = PINN(Burgers(nu=0.1), hidden=[4], weights=LossWeights(ic=2.0, bc=3.0, pde=5.0)).double()
    model.forward = _bump  # type: ignore[method-assign]
    terms = {k: v.detach() for k, v in model.loss_terms(batch).items()}
    assert float(terms["bc"]) == pytest.approx(16 * np.pi**2, rel=1e-12)
    assert min(float(terms[name]) for name in ("ic", "pde")) > 1.0
    torch.testing.assert_close(terms["loss"], 2 * terms["ic"] + 3 * terms["bc"] + 5 * terms["pde"], rtol=1e-14, atol=0)


@pytest.mark.parametrize("decrease, steps", [(0.0, 4), (1e-13, 4), (1e-9, 20)])
def test_lbfgs_stops_once_the_loss_stalls_and_not_before(decrease, steps):
    """With stall_patience=3, L-BFGS training stops once the loss has changed by <= 1e-12
    (relative) for 3 steps in a row: after 4 steps for a frozen loss or one
    falling 1e-13 per step, while a loss still falling 1e-9 per step runs all 20 steps. The loss is
    (1 - decrease)^step, independent of the weights (their gradient is zero: L-BFGS takes no step)."""
    model = PINN(Convection(beta=1.0), hidden=[4], optimizer=OptimizerConfig(lbfgs_steps=20, stall_patience=3)).double()

    def loss_terms(batch):
        zero = sum(p.sum() for p in model.parameters()) * 0
        loss = zero + (1 - decrease) ** model.global_step
        return {"loss": loss, "ic": loss.detach(), "bc": zero.detach(), "pde": zero.detach()}

    model.loss_terms = loss_terms  # type: ignore[method-assign]
    loader = torch.utils.data.DataLoader([{"x": torch.zeros(1)}] * 20, batch_size=None)
    L.Trainer(max_steps=model.total_steps, accelerator="cpu", logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False).fit(model, loader)
    assert len(model.history["loss"]) == steps


def test_a_non_periodic_pde_is_refused():
    """The PINN's BC terms are periodic ones: a PDE on a bounded domain with its own BCs is refused."""
    with pytest.raises(ConfigError, match="DiffusionSorption is not a periodic PDE"):
        PINN(DiffusionSorption())


def test_lbfgs_keeps_making_progress(data_dir):
    """Regression: with max_iter=1 per step torch's default max_eval left the line search no
    evaluation, so every step returned t = 0 and the loss froze after a few dozen steps."""
    L.seed_everything(0, verbose=False)
    pde = Convection(beta=1.0)
    dm = CollocationDataModule(pde, nx=64, nt=20, n_collocation=300)
    model = PINN(pde, hidden=[20, 20], optimizer=OptimizerConfig(lbfgs_steps=150, stall_patience=0))
    _fit(model, dm, model.total_steps)
    loss = np.asarray(model.history["loss"])
    assert len(loss) == 150
    assert loss[-1] < 1e-3 * loss[0]
    assert loss[-1] < loss[100]  # still improving late in training, not frozen
    dm.setup()
    pred = model.predict_grid(dm.x, dm.t)
    assert np.linalg.norm(pred - dm.u) / np.linalg.norm(dm.u) < 0.05


def test_adam_then_lbfgs_switches_optimizer(data_dir):
    L.seed_everything(0, verbose=False)
    pde = Reaction(rho=1.0)
    dm = CollocationDataModule(pde, nx=32, nt=10, n_collocation=100)
    model = PINN(pde, hidden=[8], optimizer=OptimizerConfig(adam_steps=5, lbfgs_steps=4, stall_patience=0))
    seen = []

    class Spy(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            seen.append(type(trainer.optimizers[0]).__name__)

    _fit(model, dm, model.total_steps, callbacks=[Spy()])
    assert seen == ["Adam"] * 5 + ["LBFGS"] * 4
    assert len(model.history["loss"]) == 9


def test_nonfinite_loss_stops_with_a_clear_error(data_dir):
    from sciml.errors import TrainingError

    pde = Convection(beta=1.0)
    dm = CollocationDataModule(pde, nx=32, nt=10, n_collocation=100)
    model = PINN(pde, hidden=[8], optimizer=OptimizerConfig(adam_steps=3, adam_lr=1e30, lbfgs_steps=0))
    with pytest.raises(TrainingError, match="adam_lr"):
        _fit(model, dm, model.total_steps)


@pytest.mark.parametrize("bad, message", [
    ({"adam_steps": -1}, "adam_steps"),
    ({"adam_steps": 0, "lbfgs_steps": 0}, "at least one"),
    ({"lbfgs_lr": 0.0}, "lbfgs_lr"),
])
def test_bad_optimizer_settings_are_rejected(bad, message):
    with pytest.raises(ValueError, match=message):
        OptimizerConfig(**bad)


def test_periodic_embedding_is_exactly_periodic():
    pde = Convection(beta=1.0)
    model = PINN(pde, hidden=[8], periodic_embedding=True).double()
    t = torch.linspace(0, 1, 7, dtype=torch.float64)
    lo = model(torch.zeros_like(t), t)
    hi = model(torch.full_like(t, 2 * np.pi), t)
    assert torch.allclose(lo, hi, atol=1e-12)


def test_raw_inputs_feed_the_coordinates_unscaled():
    pde = Convection(beta=1.0)
    model = PINN(pde, hidden=[4], normalize_inputs=False).double()
    seen = {}
    model.net.register_forward_hook(lambda m, args, out: seen.update(x=args[0]))
    model(torch.tensor([np.pi], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64))
    assert seen["x"].tolist() == [[np.pi, 0.5]]
    scaled = PINN(pde, hidden=[4]).double()
    scaled.net.register_forward_hook(lambda m, args, out: seen.update(x=args[0]))
    scaled(torch.tensor([np.pi], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64))
    assert np.allclose(seen["x"].tolist(), [[0.0, 0.0]])


def _write_config(tmp_path, steps):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        "name: small\nseed: 0\n"
        "pde: {class_path: sciml.pdes.Convection, init_args: {beta: 1.0}}\n"
        "data: {class_path: sciml.data.CollocationDataModule, init_args: {nx: 64, nt: 20, n_collocation: 200}}\n"
        f"model: {{class_path: sciml.models.PINN, init_args: {{hidden: [16, 16], optimizer: {{lbfgs_steps: {steps}, stall_patience: 0}}}}}}\n"
        "trainer: {accelerator: cpu}\n"
    )
    return cfg


def test_pipeline_writes_the_run_folder_and_predicts(tmp_path, data_dir):
    from sciml.data.schema import read_dataset
    from sciml.pipeline import predict_to_file, run_experiment

    out = tmp_path / "run"
    report = run_experiment(_write_config(tmp_path, 40), out=out)
    for name in ("config.yaml", "metrics.json", "solution.png", "snapshots.png", "loss.png", "checkpoints/last.ckpt"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["metrics"]["rel_l2"] == pytest.approx(report["metrics"]["rel_l2"])
    assert saved["steps"] == 40 and saved["model"] == "pinn"
    assert set(saved) >= {"experiment", "model", "metrics", "per_case", "seconds", "device", "versions"}

    # predict from the checkpoint on the reference grid: same numbers as the evaluation
    reference = next(data_dir.glob("convection-*.h5"))
    pred_file = predict_to_file(out / "checkpoints" / "last.ckpt", reference, tmp_path / "pred.h5")
    pred, true = read_dataset(pred_file).u[0], read_dataset(reference).u[0]
    assert np.linalg.norm(pred - true) / np.linalg.norm(true) == pytest.approx(report["metrics"]["rel_l2"], rel=1e-5)
    assert isinstance(load_model(out / "checkpoints" / "last.ckpt"), PINN)

    # the dataset itself is never the output, and a 2D grid is not a (t, x) grid
    import shutil

    from sciml.data.schema import PDEDataset, write_dataset
    from sciml.errors import ConfigError, DataError

    copy = shutil.copy(reference, tmp_path / "reference.h5")
    with pytest.raises(ConfigError, match="is the dataset predicted on"):
        predict_to_file(out / "checkpoints" / "last.ckpt", copy, copy)
    assert read_dataset(copy).u.shape == read_dataset(reference).u.shape
    grid = {"x": np.linspace(0, 1, 4), "y": np.linspace(0, 1, 4), "t": np.linspace(0, 1, 3)}
    flat = write_dataset(tmp_path / "2d.h5", PDEDataset(pde="heat", u=np.zeros((1, 3, 4, 4)), grid=grid, generator="test",
                                                                params=np.zeros((1, 0)), param_names=[]))
    with pytest.raises(DataError, match=r"/grid/t alone; it has t, x, y"):
        predict_to_file(out / "checkpoints" / "last.ckpt", flat, tmp_path / "p2.h5")


def test_evaluate_refuses_a_checkpoint_of_another_experiment(tmp_path):
    from sciml.errors import ConfigError
    from sciml.models.lpinn import LPINN
    from sciml.pipeline import _check_same_model

    run = PINN(Convection(beta=5.0), hidden=[8, 8])
    _check_same_model(PINN(Convection(beta=5.0), hidden=[8, 8]), run, tmp_path / "a.ckpt", tmp_path)  # same experiment
    with pytest.raises(ConfigError, match=r"a.ckpt is not a checkpoint of the run in .*: its model differs in hidden, pde"):
        _check_same_model(PINN(Convection(beta=30.0), hidden=[16]), run, tmp_path / "a.ckpt", tmp_path)
    with pytest.raises(ConfigError, match="is a LPINN, the run's model a PINN"):
        _check_same_model(LPINN(Convection(beta=5.0)), run, tmp_path / "a.ckpt", tmp_path)


def test_interrupted_run_resumes_to_the_same_result(tmp_path, data_dir, capsys, interrupt_at):
    """A run killed after its step-100 checkpoint (and after logging step 149) leaves no
    metrics.json; rerunning resumes from the checkpoint (not from scratch) and ends where an
    uninterrupted run ends, with one log row per logged step."""
    import sciml.pipeline as pipeline

    cfg = _write_config(tmp_path, 160)
    full = pipeline.run_experiment(cfg, out=tmp_path / "full")

    interrupt_at(155)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_experiment(cfg, out=out)
    assert not (out / "metrics.json").exists()
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 100
    before = ckpt["callbacks"]["TrainTime"]["seconds"]  # the first session's training time travels in the checkpoint
    assert before > 0

    # evaluating the interrupted run (its metrics so far) leaves it resumable, with its training time
    interim = pipeline.evaluate_run(out)
    assert interim["seconds"]["train"] == pytest.approx(before)

    interrupt_at(None)
    capsys.readouterr()
    resumed = pipeline.run_experiment(cfg, out=out)
    assert "resuming the interrupted run" in capsys.readouterr().out
    assert resumed["steps"] == 160
    assert resumed["seconds"]["train"] > before  # both sessions, not the 60 steps after the resumption alone
    assert resumed["metrics"]["rel_l2"] == pytest.approx(full["metrics"]["rel_l2"], rel=1e-4)
    # the CSV log holds both sessions' rows (Lightning's logger deletes its file when a resumed session starts)
    def steps(run):
        with open(tmp_path / run / "logs" / "metrics.csv") as f:
            return [int(row["step"]) for row in csv.DictReader(f)]

    assert steps("killed") == steps("full") and min(steps("full")) < 100 < max(steps("full"))
    assert not (out / ".log-before-resume.csv").exists() and (out / "checkpoints" / "complete").exists()
