"""ProbConserv's pieces: neural processes, context/target data, the conservation-law residuals,
the evaluation protocol and the experiments end to end (the update itself: test_conservation.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from sciml.data.context_target import ContextTargetDataModule, draw_points, load_field
from sciml.data.generators import generate
from sciml.data.generators.analytic import exact_mass, exact_solution
from sciml.errors import ConfigError, DataError
from sciml.models import NeuralProcessModel, load_model
from sciml.nn import NeuralProcess
from sciml.pdes import ConservationLaw1D, MeshConservationLaw


# -- the network --------------------------------------------------------------------------------------
@pytest.mark.parametrize("attention,latent", [(True, True), (False, False)])
def test_neural_process_is_invariant_to_the_context_order(attention, latent):
    torch.manual_seed(0)
    net = NeuralProcess(2, hidden=16, heads=4, attention=attention, latent=latent).eval()
    xc, yc, xt = torch.rand(3, 12, 2), torch.rand(3, 12, 1), torch.rand(3, 7, 2)
    perm = torch.randperm(12)
    torch.manual_seed(1)
    a = net.predict(xc, yc, xt, n_latent=4)
    torch.manual_seed(1)
    b = net.predict(xc[:, perm], yc[:, perm], xt, n_latent=4)
    assert a.mean.shape == a.std.shape == (3, 7, 1)
    torch.testing.assert_close(a.mean, b.mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.std, b.std, atol=1e-5, rtol=1e-5)
    assert float(a.std.min()) >= 1e-3  # min_sigma


def mixture_moments(net, xc, yc, xt, n_latent: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The predictive mixture's mean and variance written out in float64, with the latent draws
    `predict` makes after torch.manual_seed(seed): E[mean], and E[var] + Var[mean] centred."""
    torch.manual_seed(seed)
    r, prior = net.deterministic(xc, yc, xt), net.latent_dist(xc, yc)
    parts = [net.decode(xt, r, prior.mean + prior.std * torch.randn_like(prior.std)) for _ in range(n_latent)]
    means = torch.stack([q.mean.double() for q in parts])
    return means.mean(0), torch.stack([q.var.double() for q in parts]).mean(0) + means.var(0, unbiased=False)


def test_neural_process_prediction_is_the_mixture_moments():
    """With a latent variable the predictive variance is E[var] + Var[mean] over z samples."""
    torch.manual_seed(0)
    net = NeuralProcess(1, hidden=8, heads=2).eval()
    xc, yc, xt = torch.rand(2, 5, 1), torch.rand(2, 5, 1), torch.rand(2, 4, 1)
    torch.manual_seed(3)
    p = net.predict(xc, yc, xt, n_latent=6)
    mean, var = mixture_moments(net, xc, yc, xt, n_latent=6, seed=3)
    torch.testing.assert_close(p.mean.double(), mean, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(p.var.double(), var, atol=1e-6, rtol=1e-4)


def test_neural_process_variance_keeps_its_digits_where_the_model_is_confident():
    """Means near 1 and sigma at its floor 1e-3: the mixture variance (~1e-6) must not be lost to
    float32 cancellation in E[var + mean^2] - E[mean]^2 (that form was off by 10-70%)."""
    torch.manual_seed(0)
    net = NeuralProcess(2, hidden=32).eval()
    last = [m for m in net.decoder.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight[0] *= 0.002
        last.bias[0] += 1.0  # mean ~ 1
        last.weight[1] *= 0.0
        last.bias[1] = -20.0  # sigma -> min_sigma
    xc, yc, xt = torch.rand(1, 100, 2), torch.rand(1, 100, 1), torch.rand(1, 400, 2)
    torch.manual_seed(1)
    p = net.predict(xc, yc, xt, n_latent=50)
    _, ref = mixture_moments(net, xc, yc, xt, n_latent=50, seed=1)
    assert float(ref.median()) < 1e-5  # the regime of the test: a variance far below mean^2
    torch.testing.assert_close(p.var.double(), ref, rtol=1e-5, atol=0)


def test_neural_process_prediction_does_not_depend_on_the_chunk_size():
    """Targets go through the network a chunk at a time; every chunk uses the same latent samples,
    so the prediction is the same in one chunk or in seven (no Monte Carlo seam between chunks)."""
    torch.manual_seed(0)
    net = NeuralProcess(1, hidden=8, heads=2).eval()
    xc, yc, xt = torch.rand(2, 5, 1), torch.rand(2, 5, 1), torch.rand(2, 13, 1)
    torch.manual_seed(3)
    whole = net.predict(xc, yc, xt, n_latent=6)
    torch.manual_seed(3)
    chunked = net.predict(xc, yc, xt, n_latent=6, chunk=2)
    torch.testing.assert_close(chunked.mean, whole.mean)
    torch.testing.assert_close(chunked.std, whole.std)
    with pytest.raises(ValueError, match=r"`n_latent` \(=0\) must be an integer >= 1"):
        net.predict(xc, yc, xt, n_latent=0)


def test_neural_process_rejects_bad_shapes_and_sizes():
    net = NeuralProcess(2, hidden=8, heads=2)
    with pytest.raises(ValueError, match=r"context x \[2, 5, 3\]"):
        net.predict(torch.rand(2, 5, 3), torch.rand(2, 5, 1), torch.rand(2, 4, 2))
    with pytest.raises(ValueError, match="context is empty"):
        net.predict(torch.rand(2, 0, 2), torch.rand(2, 0, 1), torch.rand(2, 4, 2))
    with pytest.raises(ValueError, match="multiple of `heads`"):
        NeuralProcess(2, hidden=10, heads=4)
    with pytest.raises(ValueError, match=r"`cross_attention` \(=0\) must be >= 1 with attention"):
        NeuralProcess(2, hidden=8, heads=2, cross_attention=0)  # it built one anyway


def test_conditional_neural_process_learns_an_amplitude_family():
    """u = a sin x with a ~ U[0.5, 2]: from 20 context points the CNP recovers u at new points."""
    torch.manual_seed(0)
    net = NeuralProcess(1, hidden=32, attention=False, latent=False, scale=[math.pi])
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)

    def batch(n):
        a = 0.5 + 1.5 * torch.rand(n, 1, 1)
        x = 2 * math.pi * torch.rand(n, 40, 1)
        return x[:, :20], a * torch.sin(x[:, :20]), x[:, 20:], a * torch.sin(x[:, 20:])

    for _ in range(400):
        loss = net.loss(*batch(32))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    xc, yc, xt, yt = batch(64)
    p = net.predict(xc, yc, xt)
    rmse = float((p.mean - yt).pow(2).mean().sqrt())
    assert rmse < 0.1, rmse  # an untrained net is off by ~1
    assert float(p.std.mean()) < 0.2


# -- residuals ------------------------------------------------------------------------------------------
def _fields(fn, t, x):
    t, x = t.clone().requires_grad_(True), x.clone().requires_grad_(True)
    u = fn(t, x)
    u_t, u_x = torch.autograd.grad(u.sum(), (t, x), create_graph=True)
    (u_xx,) = torch.autograd.grad(u_x.sum(), x, create_graph=True, allow_unused=True)
    u_xx = torch.zeros_like(x) if u_xx is None else u_xx
    return {"u": u, "u_t": u_t, "u_x": u_x, "u_xx": u_xx}


def test_exact_solutions_have_zero_residual():
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)[:, None].expand(-1, 23).reshape(-1)
    x = torch.linspace(0.02, 0.98, 23, dtype=torch.float64)[None, :].expand(19, -1).reshape(-1)
    k = torch.tensor(2.5, dtype=torch.float64)
    diff = _fields(lambda t, x: torch.exp(-k * t) * torch.sin(x), t, x)
    assert ConservationLaw1D("diffusion").residual({**diff, "param": k}).abs().max() < 1e-12
    assert ConservationLaw1D("diffusion", value=2.5).residual(diff).abs().max() < 1e-12
    m = 3.0
    inside = t > x + 1e-3  # the PME solution (m (t - x))^{1/m} behind its front
    pme = _fields(lambda t, x: (m * (t - x)).clamp_min(1e-12) ** (1 / m), t[inside], x[inside])
    assert ConservationLaw1D("pme", value=m).residual(pme).abs().max() < 1e-9
    # a wrong parameter leaves a residual: the test can fail
    assert ConservationLaw1D("pme", value=2.0).residual(pme).abs().max() > 1e-2
    a = 3.0
    adv = _fields(lambda t, x: torch.sin(x - a * t), t, x)
    assert ConservationLaw1D("advection", value=a).residual(adv).abs().max() < 1e-12
    ramp = _fields(lambda t, x: x / (1 + t), t, x)  # Burgers' expansion-fan-like solution x / (1 + t)
    assert ConservationLaw1D("burgers_ramp", value=1.0).residual(ramp).abs().max() < 1e-12


def test_conservation_law_config_errors():
    with pytest.raises(ConfigError, match="`case` \\(='heat'\\)"):
        ConservationLaw1D("heat")
    with pytest.raises(ConfigError, match="`m` \\(=-1\\)"):
        ConservationLaw1D("pme", value=-1)
    with pytest.raises(ConfigError, match="no fixed `value`"):
        ConservationLaw1D("diffusion").residual({"u": torch.zeros(2), "u_t": torch.zeros(2), "u_x": torch.zeros(2), "u_xx": torch.zeros(2)})
    with pytest.raises(ConfigError, match="`law` \\(='wave'\\)"):
        MeshConservationLaw("wave")


def test_softc_residual_differentiates_the_raw_coordinates():
    """The model's SoftC residual (autograd w.r.t. (t, x) targets) vanishes on an exact solution."""
    model = NeuralProcessModel(ConservationLaw1D("diffusion"), kind="cnp", hidden=8, softc_weight=1.0)
    xt = torch.rand(2, 30, 2, dtype=torch.float64) * torch.tensor([1.0, 2 * math.pi], dtype=torch.float64)
    xt.requires_grad_(True)
    k = torch.tensor([[1.5], [4.0]], dtype=torch.float64)
    u = torch.exp(-k * xt[..., 0]) * torch.sin(xt[..., 1])
    assert model._residual(u, xt, k).abs().max() < 1e-12
    u_wrong = torch.exp(-k * xt[..., 0]) * torch.sin(2 * xt[..., 1])
    assert model._residual(u_wrong, xt, k).abs().max() > 0.1


def test_model_config_errors():
    pde = ConservationLaw1D("diffusion")
    with pytest.raises(ConfigError, match="model.kind \\(='gp'\\)"):
        NeuralProcessModel(pde, kind="gp")
    with pytest.raises(ConfigError, match="model.dim_x \\(=3\\) must be 2"):
        NeuralProcessModel(pde, dim_x=3)
    with pytest.raises(ConfigError, match="model.softc_weight > 0 needs a pointwise PDE residual"):
        NeuralProcessModel(MeshConservationLaw(), dim_x=3, softc_weight=1.0)
    with pytest.raises(ConfigError, match="model.bounds"):
        NeuralProcessModel(pde, bounds=[1.0, 0.0])
    with pytest.raises(ConfigError, match="model.sigma_g"):
        NeuralProcessModel(pde, sigma_g=-1.0)
    with pytest.raises(ConfigError, match="model.softc_functions \\(=-2\\)"):
        NeuralProcessModel(pde, softc_functions=-2)
    with pytest.raises(ConfigError, match=r"model.lr_floor \(=0.01\) must be a number in \(0, model.lr = 0.001\]"):
        NeuralProcessModel(pde, lr=1e-3, lr_floor=1e-2)
    with pytest.raises(ConfigError, match=r"model.bounds .* with model.sigma_g \(=0.05\) > 0.*set model.sigma_g: 0"):
        NeuralProcessModel(pde, bounds=[0.0, None], sigma_g=0.05)
    for bad in (0, -3, 2.5):
        with pytest.raises(ConfigError, match=rf"model.n_latent \(={bad}\) must be an integer >= 1"):
            NeuralProcessModel(pde, n_latent=bad)


def test_lr_floor_decays_the_rate_along_a_cosine_to_the_floor(tmp_path):
    import lightning as L

    torch.manual_seed(0)
    batches = [{"xc": torch.rand(2, 5, 2), "yc": torch.rand(2, 5, 1), "xt": torch.rand(2, 4, 2), "yt": torch.rand(2, 4, 1),
                "param": torch.ones(2, 1)}] * 8
    rates = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    model = NeuralProcessModel(ConservationLaw1D("diffusion"), kind="cnp", hidden=8, lr=1e-3, lr_floor=1e-5)
    trainer = L.Trainer(max_steps=8, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[Record()], default_root_dir=tmp_path)
    trainer.fit(model, torch.utils.data.DataLoader(batches, batch_size=None))
    expected = [1e-5 + (1e-3 - 1e-5) * (1 + math.cos(math.pi * k / 8)) / 2 for k in range(8)]
    np.testing.assert_allclose(rates, expected, rtol=1e-9)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-5)
    unset = NeuralProcessModel(ConservationLaw1D("diffusion"), kind="cnp", hidden=8, lr_floor=1e-5)
    with pytest.raises(ConfigError, match="trainer.max_steps"):
        L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  default_root_dir=tmp_path).fit(unset, torch.utils.data.DataLoader(batches, batch_size=None))


@pytest.mark.parametrize("kind", ["anp", "cnp"])
def test_softc_penalty_trains_through_attention(kind):
    """SoftC's residual needs second derivatives through attention (math kernel): the loss has a
    positive PDE term and every weight of the paths it touches gets a finite gradient."""
    torch.manual_seed(0)
    model = NeuralProcessModel(ConservationLaw1D("diffusion"), kind=kind, hidden=16, softc_weight=1.0, softc_functions=2)
    batch = {"xc": torch.rand(4, 10, 2), "yc": torch.rand(4, 10, 1), "xt": torch.rand(4, 6, 2), "yt": torch.rand(4, 6, 1),
             "param": 1 + 4 * torch.rand(4, 1)}
    terms = model.loss_terms(batch)
    assert float(terms["pde"]) > 0
    terms["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    plain = NeuralProcessModel(ConservationLaw1D("diffusion"), kind=kind, hidden=16)
    assert float(plain.loss_terms(batch)["pde"]) == 0.0


def _softc_batch(n: int = 4) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"xc": torch.rand(n, 10, 2, dtype=torch.float64), "yc": torch.rand(n, 10, 1, dtype=torch.float64),
            "xt": torch.rand(n, 6, 2, dtype=torch.float64), "yt": torch.rand(n, 6, 1, dtype=torch.float64),
            "param": 1 + 4 * torch.rand(n, 1, dtype=torch.float64)}


def test_softc_weight_multiplies_the_pde_term_of_the_loss():
    """SoftC's loss is nll + kl + softc_weight * pde: with weight 3 the PDE term counts three times
    (the CNP is deterministic, so two models with the same weights give the same terms)."""
    batch = _softc_batch()
    models = {}
    for weight in (1.0, 3.0):
        torch.manual_seed(1)
        models[weight] = NeuralProcessModel(ConservationLaw1D("diffusion"), kind="cnp", hidden=8, softc_weight=weight).double()
    one, three = (models[w].loss_terms(batch) for w in (1.0, 3.0))
    assert float(three["pde"]) > 1e-3
    torch.testing.assert_close(three["pde"], one["pde"], rtol=1e-12, atol=0)
    torch.testing.assert_close(three["loss"].detach(), (three["nll"] + three["kl"] + 3 * three["pde"]).detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close((three["loss"] - one["loss"]).detach(), 2 * one["pde"], rtol=1e-9, atol=0)


def test_softc_functions_evaluates_the_residual_on_the_first_functions_only():
    """softc_functions=2: the penalty is that of the batch's first two functions alone (the same
    number as the whole-batch penalty of a batch holding only those two), not the batch's."""
    batch = _softc_batch()
    torch.manual_seed(1)
    model = NeuralProcessModel(ConservationLaw1D("diffusion"), kind="cnp", hidden=8, softc_weight=1.0, softc_functions=2).double()
    first_two = model.softc_penalty(batch).detach()
    model.softc_functions = 0  # every function of the batch
    torch.testing.assert_close(first_two, model.softc_penalty({k: v[:2] for k, v in batch.items()}).detach(), rtol=1e-12, atol=0)
    everything = model.softc_penalty(batch).detach()
    assert abs(float(everything) - float(first_two)) > 1e-3 * float(everything)


# -- data -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stefan_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("pc")
    train, test = root / "train.h5", root / "test.h5"
    generate("stefan_1d", train, n=6, seed=0, params={"nx": 41, "nt": 21})
    generate("stefan_1d", test, n=1, seed=1, params={"nx": 41, "nt": 21, "u_star": 0.6})
    return train, test


def test_context_is_a_tensor_grid_of_times_and_points(stefan_files):
    train, test = stefan_files
    dm = ContextTargetDataModule(str(train), n_context=20, context_times=4, n_target=30, batch_size=3,
                                 test={"u6": str(test)}, t_star=0.05, n_test_functions=2)
    dm.prepare_data()
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["xc"].shape == (3, 20, 2) and batch["yt"].shape == (3, 30, 1)
    xc = batch["xc"][0].numpy()
    assert len(np.unique(xc[:, 0])) == 4 and len(np.unique(xc[:, 1])) == 5
    f = load_field(train)
    k = int(batch["index"][0])
    u = exact_solution("stefan", float(f.params[k, 0]), f.coords[0, :, 1], f.t)
    # every value is the function at its coordinates
    it = np.rint(batch["xt"][0, :, 0].double().numpy() / 0.005).astype(int)
    ix = np.rint(batch["xt"][0, :, 1].double().numpy() * 40).astype(int)
    np.testing.assert_allclose(batch["yt"][0, :, 0].numpy(), u[it, ix], atol=1e-6)
    # the evaluation time, the exact mass and fixed test contexts
    assert dm.t_index("u6") == 10
    np.testing.assert_allclose(dm.mass("u6", 0), exact_mass("stefan", 0.6, f.t))
    c1, c2 = dm.test_contexts("u6", 0), dm.test_contexts("u6", 0)
    assert len(c1) == 2 and torch.equal(c1[1][0], c2[1][0]) and not torch.equal(c1[0][0], c1[1][0])


def test_loader_workers_draw_distinct_points_every_epoch(stefan_files):
    """With loader processes, every (function, epoch) still gets its own context and targets:
    the workers' copies of the dataset count draws alike, their seeds keep them apart."""
    train, _ = stefan_files
    dm = ContextTargetDataModule(str(train), n_context=20, context_times=4, n_target=30, batch_size=1, num_workers=2)
    dm.setup()
    torch.manual_seed(0)
    loader = dm.train_dataloader()
    draws = [(int(b["index"][0]), b["xt"][0].numpy().tobytes()) for _ in range(3) for b in loader]
    assert len(draws) == 18 and len({d for _, d in draws}) == 18  # 6 functions x 3 epochs, no repeated draw
    with pytest.raises(ConfigError, match=r"`data.num_workers` \(=-1\) must be an integer >= 0"):
        ContextTargetDataModule(str(train), num_workers=-1)


def test_draw_points_are_distinct():
    rng = np.random.default_rng(0)
    ct, cp, tt, tp = draw_points(rng, 11, 13, 12, 3, 50)
    assert len(set(zip(ct, cp))) == 12 and len(set(zip(tt, tp))) == 50


def test_data_module_errors(stefan_files, tmp_path):
    train, test = stefan_files
    with pytest.raises(ConfigError, match="`data.n_context` \\(=10\\) must be a multiple"):
        ContextTargetDataModule(str(train), n_context=10, context_times=3)
    with pytest.raises(ConfigError, match="test_params` names 'b'"):
        ContextTargetDataModule(str(train), test={"a": str(test)}, test_params={"b": {}})
    with pytest.raises(DataError, match="does not exist; give `data.generator`"):
        ContextTargetDataModule(str(tmp_path / "missing.h5")).prepare_data()
    with pytest.raises(DataError, match="exists but was not generated by data.generator='stefan_1d'"):
        ContextTargetDataModule(str(train), generator="stefan_1d", generator_params={"nx": 41, "nt": 21}, n_samples=7).prepare_data()
    dm = ContextTargetDataModule(str(train), n_context=20, context_times=4, test={"u6": str(test)}, t_star=0.0512)
    dm.setup()
    with pytest.raises(ConfigError, match="t_star` \\(=0.0512\\) is not a time of the test grid"):
        dm.t_index("u6")
    big = ContextTargetDataModule(str(train), n_context=100, context_times=50)
    with pytest.raises(ConfigError, match="too few for n_context=100"):
        big.setup()


# -- the experiments end to end ---------------------------------------------------------------------------
def test_stefan_quick_run_conserves_exactly(tmp_path, monkeypatch):
    from sciml.pipeline import run_experiment

    monkeypatch.chdir(tmp_path)
    import shutil
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    shutil.copytree(root / "experiments", tmp_path / "experiments")
    report = run_experiment("experiments/probconserv/anp_stefan.yaml", out=tmp_path / "run", quick=True,
                            overrides=["data.n_samples=40", "data.generator_params={nx: 41, nt: 21}",
                                       "data.path=data/stefan_small.h5"])
    m = report["metrics"]
    for s in ("u_star0.5", "u_star0.6"):
        assert abs(m[f"probconserv/ce_{s}"]) <= 1e-10 and abs(m[f"hardc/ce_{s}"]) <= 1e-10
        assert abs(m[f"probconserv_bounded/ce_{s}"]) <= 1e-10
        assert abs(m[f"anp/ce_{s}"]) > 1e-6  # the untrained ANP does not conserve
        assert 0 <= m[f"probconserv/shock_pos_{s}"] <= 1
        assert m[f"probconserv/shock_abs_err_{s}"] >= m[f"probconserv/shock_pos_err_{s}"] - 1e-12  # |mean| <= mean |.|
    cases = [c for c in report["per_case"] if c["variant"] == "probconserv_bounded"]
    assert cases and all(c["test_set"] in ("u_star0.5", "u_star0.6") for c in cases)
    out = tmp_path / "run"
    for name in ("results.md", "metrics.json", "solution_u_star0.6.png", "mass_u_star0.6.png", "shock_u_star0.6.png", "loss.png"):
        assert (out / name).is_file(), name
    assert "| ProbConserv-ANP |" in (out / "results.md").read_text()
    assert json.loads((out / "metrics.json").read_text())["model"] == "anp"
    model = load_model(out / "checkpoints" / "last.ckpt")
    assert isinstance(model, NeuralProcessModel) and model.bounds == [0.0, 1.0]
    small = load_model(out / "model.ckpt")  # the weights alone, for shipping
    assert (out / "model.ckpt").stat().st_size < (out / "checkpoints" / "last.ckpt").stat().st_size / 2
    for a, b in zip(model.state_dict().values(), small.state_dict().values()):
        assert torch.equal(a, b)


def test_diffusion_study_tabulates_every_variant_and_reevaluates_identically(tmp_path, monkeypatch):
    """The paper's table from one study: ANP, SoftC-ANP, the CNP and the updates of both; the
    conservation error is round-off exactly for the updates; `sciml evaluate` reproduces a run."""
    import shutil
    from pathlib import Path

    from sciml.pipeline import evaluate_run, run_experiment

    monkeypatch.chdir(tmp_path)
    shutil.copytree(Path(__file__).resolve().parents[1] / "experiments", tmp_path / "experiments")
    small = ["data.n_samples=24", "data.generator_params={nx: 41, nt: 21}", "data.path=data/diffusion_small.h5",
             "data.n_test_functions=3", "trainer.max_steps=8", "model.softc_functions=2"]
    report = run_experiment("experiments/probconserv/diffusion.yaml", out=tmp_path / "study", quick=True,
                            overrides=[f"overrides={json.dumps(small)}"])
    m = report["metrics"]
    for variant in ("anp", "softc", "cnp", "hardc", "probconserv", "hardc_cnp", "probconserv_cnp"):
        assert f"{variant}/mse_k1" in m and f"{variant}/ll_k5" in m, variant
    for variant in ("hardc", "probconserv", "hardc_cnp", "probconserv_cnp"):
        assert abs(m[f"{variant}/ce_k1"]) <= 1e-10 and abs(m[f"{variant}/ce_k5"]) <= 1e-10
    for variant in ("anp", "softc", "cnp"):
        assert abs(m[f"{variant}/ce_k1"]) > 1e-8
    table = (tmp_path / "study" / "results.md").read_text()
    assert all(f"| {row} |" in table for row in ("ANP", "SoftC-ANP", "HardC-ANP", "ProbConserv-ANP", "ProbConserv-CNP"))
    before = json.loads((tmp_path / "study" / "anp" / "metrics.json").read_text())
    again = evaluate_run(tmp_path / "study" / "anp")
    assert again["metrics"] == before["metrics"]
    assert again["seconds"]["train"] == before["seconds"]["train"] > 0  # re-evaluation keeps the training time
    (tmp_path / "study" / "results.md").unlink()
    whole = evaluate_run(tmp_path / "study")  # the study: every run, then the table afresh
    assert whole["metrics"] == report["metrics"] and (tmp_path / "study" / "results.md").read_text() == table
    written = json.loads((tmp_path / "study" / "metrics.json").read_text())
    assert written["metrics"] == report["metrics"]
    # DESIGN.md's metrics.json keys, the device being that of the study's runs
    assert {"experiment", "model", "metrics", "per_case", "seconds", "device", "versions"} <= set(written)
    assert written["device"] == before["device"] and written["versions"]["torch"] == torch.__version__


def test_mesh_quick_run_conserves_on_unstructured_triangles(tmp_path, monkeypatch):
    """2D heat on a jittered triangle mesh (DOLFINx data): G from the FEM mass weights; the update
    holds the mass to round-off at every time slice, the ANP drifts; metrics pool both functions."""
    pytest.importorskip("mpi4py.MPI")  # before dolfinx, or the wheel does not find libmpi
    pytest.importorskip("dolfinx")
    import shutil
    from pathlib import Path

    from sciml.pipeline import run_experiment

    monkeypatch.chdir(tmp_path)
    shutil.copytree(Path(__file__).resolve().parents[1] / "experiments", tmp_path / "experiments")
    report = run_experiment("experiments/probconserv/heat_mesh.yaml", out=tmp_path / "run", quick=True)
    m = report["metrics"]
    assert abs(m["probconserv/ce"]) <= 1e-10 and abs(m["hardc/ce"]) <= 1e-10 and abs(m["anp/ce"]) > 1e-6
    summary = {c["variant"]: c for c in report["summary"]}
    assert summary["probconserv"]["param"] == {"functions": 2}
    per_function = [c["mse"] for c in report["per_case"] if c["variant"] == "anp"]
    assert len(per_function) == 2 and m["anp/mse"] == pytest.approx(np.mean(per_function))
    assert (tmp_path / "run" / "mass_mesh.png").is_file() and (tmp_path / "run" / "solution_mesh.png").is_file()


def test_shock_errors_tell_a_two_peaked_histogram_from_a_centred_one():
    from sciml.studies.probconserv import _shock_positions, shock_errors

    x = np.linspace(0.0, 1.0, 11)
    samples = np.ones((4, 2, 11))
    samples[0, 0, 3:] = samples[1, 0, 5:] = -1.0  # function 0: half the samples cross at 0.3, half at 0.5
    samples[2, 0, 4:] = samples[3, 0, 4:] = 0.0  # (<= 0 counts as crossed)
    samples[:, 1, 6:] = -0.5  # function 1: every sample crosses at 0.6; sample 3 never crosses (-> last x)
    samples[3, 1] = 1.0
    pos = _shock_positions(samples, x)
    np.testing.assert_allclose(pos[:, 0], [0.3, 0.5, 0.4, 0.4])
    np.testing.assert_allclose(pos[:, 1], [0.6, 0.6, 0.6, 1.0])
    err = shock_errors(pos, front=0.4)
    np.testing.assert_allclose(err["shock_pos"], [0.4, 0.7])
    np.testing.assert_allclose(err["shock_pos_err"], [0.0, 0.3], atol=1e-15)
    np.testing.assert_allclose(err["shock_abs_err"], [0.05, 0.3])  # the two peaks: each sample 0.1 or 0 off
