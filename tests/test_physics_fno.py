"""PI-SC / PI-HC / PI-HC-MoE models on diffusion-sorption: constraints hold, training runs, checkpoints load."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from sciml.data import SampleDataModule
from sciml.models import PhysicsFNO, load_model
from sciml.pdes import DiffusionSorption

SMALL = {"width": 8, "layers": 2, "modes": (4, 4), "basis": 6}
SOLVER = {"points": 120, "ridge": 1e-8, "tol": 1e-6, "max_steps": 30}


def grid(nt=11, nx=16):
    return np.linspace(0, 500, nt), (np.arange(nx) + 0.5) / nx


def test_rows_and_loss_vanish_on_the_reference_solution(tmp_path):
    """The IC/BC rows the constraint enforces (and the loss's IC/BC terms) hold for the
    finite-volume solution: right signs, half-cell extrapolation, no BC at t = 0."""
    from sciml.data import read_dataset
    from sciml.data.generators import generate

    ds = read_dataset(generate("diffusion_sorption_fv", tmp_path / "ds.h5", n=2, params={"nx": 256, "nt": 11}, progress=False))
    t, x = ds.grid["t"], ds.grid["x"]
    u, u0 = torch.as_tensor(ds.u), torch.as_tensor(ds.u0)
    model = PhysicsFNO(DiffusionSorption(), constraint="hard", solver=SOLVER, **SMALL).double()
    fields = {k: v[..., 0].reshape(2, -1) for k, v in model._fields(u[..., None], t, x).full().items()}
    assert model._half_cell(x) == x[0] == 0.5 / 256  # the grid's cell centres: half a cell from the wall
    rows = model._rows(u0, len(t), len(x), model._half_cell(x))
    lhs = sum(torch.as_tensor(c, dtype=torch.float64) * fields[name][:, rows.points] for name, c in rows.coefficients.items())
    mismatch = (lhs - rows.target) / rows.scale
    assert mismatch[:, : len(x)].abs().max() < 1e-12  # IC rows
    # BC rows, up to the one-sided differences at the wall (2.7e-6; a whole cell's extrapolation: 1.1e-2)
    assert mismatch[:, len(x):].abs().max() < 1e-5
    terms = model.loss_terms(u, u0, t, x)
    assert float(terms["ic"]) < 1e-20 and float(terms["bc"]) < 1e-11  # 8.8e-13; a whole cell's: 3.7e-5
    z = u0[:, None, :].expand_as(u)  # a solution that ignores the boundary is penalised
    assert float(model.loss_terms(z, u0, t, x)["bc"]) > 0.1


def test_the_loss_extrapolates_half_a_cell_and_leaves_the_wall_columns_out_of_the_pde_term():
    """u = 1 - x / (1 + D), constant in time, solves the PDE (u_t = u_xx = 0) and both BCs at the
    walls: u(0) = 1 and u(1) + D u_x(1) = 0, with u extrapolated half a cell (1/32 on 16 cells)
    from the first and last cell centres; finite differences of a linear field are exact, so the
    loss's terms and the constraint's IC/BC rows vanish to rounding (extrapolating a whole cell
    leaves a BC error of 1 / (32 (1 + D))). A residual wrong only in the wall columns (u_t set
    to 1 there) leaves the PDE term at 0: the loss takes it on the interior columns, as the
    one-sided differences at the wall are not the PDE's."""
    t, x = grid(nt=11, nx=16)
    pde = DiffusionSorption()
    model = PhysicsFNO(pde, constraint="hard", solver=SOLVER, **SMALL).double()
    assert model._half_cell(x) == 1 / 32
    line = torch.as_tensor(1 - x / (1 + pde.D), dtype=torch.float64)
    u0 = line[None].expand(2, -1).clone()
    u = line.expand(2, len(t), -1).clone()
    terms = model.loss_terms(u, u0, t, x)
    assert float(terms["ic"]) == 0.0 and float(terms["pde"]) < 1e-24 and float(terms["bc"]) < 1e-28
    f = {k: v[..., 0] for k, v in model._fields(u[..., None], t, x).full().items()}
    rows = model._rows(u0, len(t), len(x), model._half_cell(x))
    flat = {k: v.reshape(2, -1) for k, v in f.items()}
    lhs = sum(torch.as_tensor(c, dtype=torch.float64) * flat[name][:, rows.points] for name, c in rows.coefficients.items())
    assert ((lhs - rows.target) / rows.scale).abs().max() < 1e-14
    # The wall columns' residual is left out of the PDE term; an interior column's is not.
    walls = dict(f, u_t=f["u_t"].clone())
    walls["u_t"][:, :, [0, -1]] = 1.0
    assert float(model.loss_terms(walls, u0, t, x)["pde"]) < 1e-24
    inside = dict(f, u_t=f["u_t"].clone())
    inside["u_t"][:, :, 1] = 1.0  # (500 * 1)^2 on 1 of the 14 interior columns, t > 0
    assert float(model.loss_terms(inside, u0, t, x)["pde"]) == pytest.approx(500.0**2 / 14, rel=1e-12)


def test_predictions_are_repeatable_in_evaluation():
    torch.manual_seed(0)
    model = PhysicsFNO(DiffusionSorption(), constraint="hard", splits=(1, 2), solver=SOLVER, **SMALL).double().eval()
    t, x = grid()
    u0 = np.full((2, len(x)), 0.1)
    np.testing.assert_array_equal(model.predict_samples(u0, t, x), model.predict_samples(u0, t, x))


@pytest.mark.parametrize("constraint, splits", [("soft", (1, 1)), ("hard", (1, 1)), ("hard", (1, 2))])
def test_training_reduces_the_loss_and_the_checkpoint_reloads(tmp_path, constraint, splits):
    from sciml.data.generators import generate

    path = generate("diffusion_sorption_fv", tmp_path / "ds.h5", n=6, params={"nx": 16, "nt": 11}, progress=False)
    torch.manual_seed(0)
    dm = SampleDataModule(str(path), batch_size=2, val_fraction=0.0, test_fraction=0.34)
    model = PhysicsFNO(DiffusionSorption(), constraint=constraint, splits=splits, solver=SOLVER, schedule={"lr": 3e-3}, **SMALL)
    trainer = L.Trainer(max_steps=12, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, datamodule=dm)
    loss = model.history["loss"]
    assert len(loss) == 12 and np.mean(loss[-3:]) < np.mean(loss[:3])
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    again = load_model(ckpt)
    assert isinstance(again, PhysicsFNO) and again.model_name == model.model_name
    t, x = dm.grid["t"], dm.grid["x"]
    u0 = np.full((1, 16), 0.1)
    np.testing.assert_allclose(again.predict_samples(u0, t, x), model.eval().predict_samples(u0, t, x), rtol=1e-5, atol=1e-6)


def test_a_diverging_training_stops_with_the_loss_named(tmp_path):
    from sciml.data.generators import generate
    from sciml.errors import TrainingError

    path = generate("diffusion_sorption_fv", tmp_path / "ds.h5", n=4, params={"nx": 16, "nt": 11}, progress=False)
    torch.manual_seed(0)
    dm = SampleDataModule(str(path), batch_size=2, val_fraction=0.0, test_fraction=0.25)
    model = PhysicsFNO(DiffusionSorption(), constraint="soft", schedule={"lr": 1e30, "floor": 1e29}, **SMALL)
    trainer = L.Trainer(max_steps=6, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    with pytest.raises(TrainingError, match=r"the pi_sc loss became (nan|inf) at step [1-5]; lower model.schedule.lr \(=1e\+30\)"):
        trainer.fit(model, datamodule=dm)
    assert len(model.history["loss"]) >= 1 and all(np.isfinite(model.history["loss"]))


def test_bad_settings_are_refused():
    from sciml.errors import ConfigError
    from sciml.pdes import Convection

    with pytest.raises(ConfigError, match="model.constraint"):
        PhysicsFNO(DiffusionSorption(), constraint="medium")
    with pytest.raises(ConfigError, match="DiffusionSorption"):
        PhysicsFNO(Convection())
    with pytest.raises(ConfigError, match=r"model.solver.step_hessian \(='newton'\) must be 'gauss-newton' or 'exact'"):
        PhysicsFNO(DiffusionSorption(), solver={"step_hessian": "newton"})
    with pytest.raises(ConfigError, match=r"model.splits \(=\[2, 1, 1\]\) must be two integers >= 1"):
        PhysicsFNO(DiffusionSorption(), splits=[2, 1, 1])
    with pytest.raises(ConfigError, match=r"model.modes \(=\[8\]\) must be two integers >= 1"):
        PhysicsFNO(DiffusionSorption(), modes=[8])
    # a rate below the floor would have been raised to it from the first step
    with pytest.raises(ConfigError, match=r"model.schedule.floor \(=0.0001\) is above model.schedule.lr \(=5e-05\)"):
        PhysicsFNO(DiffusionSorption(), schedule={"lr": 5e-5})
    with pytest.raises(ConfigError, match=r"model.schedule.halve_every \(=0\) must be an integer >= 1"):
        PhysicsFNO(DiffusionSorption(), schedule={"halve_every": 0})


def test_solution_fields_are_each_experts_derivatives():
    """PI-HC's fields come from the basis' derivatives and each point's own expert's coefficients:
    with one expert they equal differencing u; with experts, inside each block too, while across a
    block edge the stitched u's differences see the jump the experts' own fields do not."""
    t, x = grid(nt=11, nx=16)
    u0 = torch.full((2, len(x)), 0.1, dtype=torch.float64)
    for splits in ((1, 1), (1, 2)):
        torch.manual_seed(0)
        model = PhysicsFNO(DiffusionSorption(), constraint="hard", splits=splits, solver=SOLVER, **SMALL).double().eval()
        f = model.solution_fields(u0, t, x)
        assert set(f) == {"u", "u_t", "u_x", "u_xx"}
        torch.testing.assert_close(f["u"], model(u0, t, x), rtol=0, atol=0)
        fd = {k: v[..., 0] for k, v in model._fields(f["u"][..., None], t, x).full().items()}
        inside = slice(1, 7) if splits == (1, 2) else slice(1, 15)  # away from the edge between x[7] and x[8]
        for name in ("u_t", "u_x", "u_xx"):
            torch.testing.assert_close(f[name][:, :, inside], fd[name][:, :, inside], rtol=1e-9, atol=1e-9)
        if splits == (1, 2):
            edge = (f["u_xx"][:, 1:, 7:9] - fd["u_xx"][:, 1:, 7:9]).abs().max()
            assert edge > 1e-3  # the stitched u jumps between the blocks
    with pytest.raises(Exception, match="model.loss_fields"):
        PhysicsFNO(DiffusionSorption(), loss_fields="mean", **SMALL)


def test_pde_weight_scales_the_residual_term_of_the_loss():
    t, x = grid()
    torch.manual_seed(0)
    u0 = torch.rand(2, len(x), dtype=torch.float64)
    u = torch.rand(2, len(t), len(x), dtype=torch.float64)
    default = PhysicsFNO(DiffusionSorption(), constraint="soft", **SMALL).double()
    raw = PhysicsFNO(DiffusionSorption(), constraint="soft", pde_weight=1.0, **SMALL).double()
    a, b = default.loss_terms(u, u0, t, x), raw.loss_terms(u, u0, t, x)
    torch.testing.assert_close(a["pde"], 500.0**2 * b["pde"])  # t_end = 500 by default, squared in the loss
    torch.testing.assert_close(a["ic"], b["ic"])
    with pytest.raises(Exception, match=r"model.pde_weight \(=0\)"):
        PhysicsFNO(DiffusionSorption(), pde_weight=0, **SMALL)
