"""Each plot writes a complete PNG in one step and leaves no temporary file behind."""

import numpy as np
import pytest

from sciml.plotting import plot_loss_curve, plot_snapshots, plot_solution_maps

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def solution():
    x = np.linspace(0, 2 * np.pi, 40)
    t = np.linspace(0, 1, 25)
    true = np.sin(x[None, :] - t[:, None])  # [n_t, n_x]
    pred = true + 0.01 * np.cos(3 * x[None, :])
    return x, t, pred, true


def assert_only_png(directory, name):
    assert [p.name for p in directory.iterdir()] == [name]
    data = (directory / name).read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    assert (directory / name).stat().st_mode & 0o777 == 0o644


def test_solution_maps(tmp_path, solution):
    out = plot_solution_maps(*solution, tmp_path / "maps.png", title="advection")
    assert out == tmp_path / "maps.png"
    assert_only_png(tmp_path, "maps.png")


def test_snapshots(tmp_path, solution):
    plot_snapshots(*solution, tmp_path / "snapshots.png", n=3)
    assert_only_png(tmp_path, "snapshots.png")


def test_snapshots_more_than_times(tmp_path, solution):
    x, t, pred, true = solution
    plot_snapshots(x, t[:2], pred[:2], true[:2], tmp_path / "two.png", n=5)
    assert_only_png(tmp_path, "two.png")


def test_loss_curve_with_optimizer_switch(tmp_path):
    history = {"pde": np.geomspace(1, 1e-4, 50), "bc": [0.5 / (i + 1) for i in range(50)]}
    plot_loss_curve(history, tmp_path / "loss.png", steps=np.arange(0, 500, 10), switch_step=300)
    assert_only_png(tmp_path, "loss.png")


def test_overwrite_replaces_the_file(tmp_path):
    target = tmp_path / "loss.png"
    target.write_bytes(b"old")
    plot_loss_curve({"total": [1.0, 0.1, 0.0]}, target)
    assert_only_png(tmp_path, "loss.png")


def test_switch_in_history_rejected(tmp_path):
    with pytest.raises(ValueError, match="switch_step="):
        plot_loss_curve({"total": [1.0, 0.5], "phase_change": 1}, tmp_path / "loss.png")
    assert list(tmp_path.iterdir()) == []


def test_steps_length_mismatch_rejected(tmp_path):
    with pytest.raises(ValueError, match="`steps` has 3 entries"):
        plot_loss_curve({"total": [1.0, 0.5]}, tmp_path / "loss.png", steps=[0, 1, 2])


def test_field_shape_mismatch_rejected(tmp_path, solution):
    x, t, pred, true = solution
    with pytest.raises(ValueError, match=r"\[n_t, n_x\] = \(25, 40\)"):
        plot_solution_maps(x, t, pred.T, true, tmp_path / "maps.png")
    assert list(tmp_path.iterdir()) == []


def test_failed_save_leaves_nothing(tmp_path, solution, monkeypatch):
    from matplotlib.figure import Figure

    def broken_savefig(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        plot_snapshots(*solution, tmp_path / "snapshots.png")
    assert list(tmp_path.iterdir()) == []


def test_fields_in_two_space_dimensions(tmp_path):
    """[n_t, n_x, n_y] fields are drawn as (x, y) maps; y defaults to x on a square grid."""
    x, t = np.linspace(0, 1, 12, endpoint=False), np.linspace(0, 1, 5)
    true = np.sin(2 * np.pi * (x[None, :, None] + x[None, None, :] - t[:, None, None]))
    plot_solution_maps(x, t, true + 0.01, true, tmp_path / "maps.png")
    plot_snapshots(x, t, true + 0.01, true, tmp_path / "snapshots.png", n=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps.png", "snapshots.png"]
    with pytest.raises(ValueError, match=r"\[n_t, n_x, n_y\] = \(5, 12, 7\)"):
        plot_solution_maps(x, t, true, true, tmp_path / "bad.png", y=np.arange(7))
