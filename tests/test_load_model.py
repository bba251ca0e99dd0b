"""Checkpoints: a trained model comes back identical; anything else is refused, naming the file."""

from __future__ import annotations

import math
import pickle

import lightning as L
import pytest
import torch

from sciml.data import CollocationDataModule
from sciml.errors import DataError
from sciml.models import PINN, load_model
from sciml.pdes import Convection, ConvectionDiffusion

POINTS = (torch.linspace(0, 2 * math.pi, 11), torch.linspace(0, 1, 11))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny PINN after two real optimisation steps (Adam, then L-BFGS), and its checkpoint."""
    folder = tmp_path_factory.mktemp("run")
    pde = Convection(beta=1.0)
    model = PINN(pde, hidden=[8], optimizer={"adam_steps": 1, "lbfgs_steps": 1})
    data = CollocationDataModule(pde, path=str(folder / "reference.h5"), nx=16, nt=8, n_collocation=32)
    trainer = L.Trainer(
        max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", default_root_dir=folder,
    )
    trainer.fit(model, data)
    path = folder / "last.ckpt"
    trainer.save_checkpoint(path)
    return model.eval(), path


def test_a_trained_checkpoint_round_trips(trained):
    model, path = trained
    loaded = load_model(path)
    assert isinstance(loaded, PINN) and not loaded.training
    assert loaded.pde == model.pde
    assert dict(loaded.hparams) == dict(model.hparams)
    assert len(loaded.history["loss"]) == 2 and loaded.history == model.history
    with torch.no_grad():
        torch.testing.assert_close(loaded(*POINTS), model(*POINTS), rtol=0, atol=0)
    assert loaded.total_steps == model.total_steps


def test_a_checkpoint_of_another_architecture_round_trips(tmp_path):
    torch.manual_seed(0)
    model = PINN(ConvectionDiffusion(beta=2.0, nu=0.1), hidden=[6, 4], activation="sin", periodic_embedding=True).eval()
    checkpoint = {"sciml_model": "sciml.models.pinn.PINN", "hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}
    torch.save(checkpoint, tmp_path / "m.ckpt")
    loaded = load_model(tmp_path / "m.ckpt")
    assert loaded.pde == ConvectionDiffusion(beta=2.0, nu=0.1) and loaded.periodic_embedding
    with torch.no_grad():
        torch.testing.assert_close(loaded(*POINTS), model(*POINTS), rtol=0, atol=0)


class Payload:
    """Anything a plain pickle would run on load; weights_only=True must refuse it."""

    def __reduce__(self):
        return (print, ("code ran while loading a checkpoint",))


def write_bad(kind: str, folder, good_path):
    path = folder / f"{kind}.ckpt"
    good = good_path.read_bytes()
    if kind == "text":
        path.write_text("not a checkpoint\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"sciml_model": "sciml.models.pinn.PINN", "x": Payload()}))
    elif kind == "code":
        torch.save({"sciml_model": "sciml.models.pinn.PINN", "x": Payload()}, path)
    elif kind == "plain_dict":
        torch.save({"state_dict": {}}, path)
    elif kind == "unknown_model":
        torch.save({"sciml_model": "os.system", "hyper_parameters": {}, "state_dict": {}}, path)
    elif kind == "no_hparams":
        torch.save({"sciml_model": "sciml.models.pinn.PINN", "state_dict": {}}, path)
    elif kind == "wrong_weights":
        ckpt = torch.load(good_path, weights_only=True)
        ckpt["hyper_parameters"]["hidden"] = [5]
        torch.save(ckpt, path)
    elif kind == "damaged_optimizer":
        ckpt = torch.load(good_path, weights_only=True)
        ckpt["optimizer_states"] = [{"param_groups": []}]
        torch.save(ckpt, path)
    elif kind == "bad_pde":
        ckpt = torch.load(good_path, weights_only=True)
        ckpt["hyper_parameters"]["pde"] = {"class_path": "sciml.pdes.Convection", "init_args": {"beta": "x"}}
        torch.save(ckpt, path)
    return path


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize(
    "kind, words",
    [
        ("text", ["not a loadable sciml checkpoint"]),
        ("empty", ["not a loadable sciml checkpoint"]),
        ("truncated", ["not a loadable sciml checkpoint"]),
        ("pickle", ["not a loadable sciml checkpoint"]),
        ("code", ["not a loadable sciml checkpoint"]),
        ("plain_dict", ["does not name a known sciml model", "None"]),
        ("unknown_model", ["does not name a known sciml model", "'os.system'"]),
        ("no_hparams", ["does not rebuild", "hyper_parameters"]),
        ("wrong_weights", ["does not rebuild", "size mismatch"]),
        ("bad_pde", ["does not rebuild", "`beta`"]),
        ("damaged_optimizer", ["does not rebuild"]),
    ],
)
def test_files_that_are_not_sciml_checkpoints_are_refused(trained, tmp_path, capsys, kind, words):
    path = write_bad(kind, tmp_path, trained[1])
    with pytest.raises(DataError) as info:
        load_model(path)
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message
    assert "code ran" not in capsys.readouterr().out


def test_missing_files_and_folders_are_refused(tmp_path):
    with pytest.raises(DataError) as info:
        load_model(tmp_path / "nowhere.ckpt")
    assert str(tmp_path / "nowhere.ckpt") in str(info.value) and "does not exist" in str(info.value)
    with pytest.raises(DataError, match="is a directory"):
        load_model(tmp_path)


def test_a_float64_model_comes_back_in_float64(trained, tmp_path):
    """trainer.precision=64-true saves float64 weights: loading must not cast them down to float32."""
    ckpt = torch.load(trained[1], weights_only=True)
    ckpt["state_dict"] = {k: v.double() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    path = tmp_path / "f64.ckpt"
    torch.save(ckpt, path)
    model = load_model(path)
    for name, value in model.state_dict().items():
        if value.is_floating_point():
            assert value.dtype == torch.float64, name
            assert torch.equal(value, ckpt["state_dict"][name]), name
