"""Mini-batch runs resume to the uninterrupted run: the shuffle, the item draws and the global
random streams continue where training stopped (sciml.data.resumable, sciml.callbacks.RandomState)."""

from __future__ import annotations

import io
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from sciml.callbacks import RandomState
from sciml.data.resumable import ResumableLoader, training_loader
from sciml.errors import DataError


OUTSIDE_A_FIT = lambda: (0, float("inf"))  # noqa: E731  (a loader's progress without a trainer)


class Items(Dataset):
    """Item i is i; a keyed item (i, position) is i + 1000 position."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, key):
        i, position = key if isinstance(key, tuple) else (key, 0)
        return torch.tensor(i + 1000 * position)


def batches(loader, epochs: int, first: int | None = None) -> list[list[int]]:
    """``epochs`` epochs of ``loader`` as lists (the first cut after ``first`` batches)."""
    out = []
    for e in range(epochs):
        for k, batch in enumerate(loader):
            if e == 0 and first is not None and k == first:
                break
            out.append(batch.tolist())
    return out


def test_the_shuffle_and_the_global_stream_are_torchs():
    """An uninterrupted run is unchanged: the same order as DataLoader(shuffle=True), drawn from
    the global stream at the same moments, for three epochs (the last batch short)."""
    outcomes = []
    for make in (lambda: DataLoader(Items(), batch_size=4, shuffle=True), lambda: ResumableLoader(Items(), 4, progress=OUTSIDE_A_FIT)):
        torch.manual_seed(3)
        seen = batches(make(), 3)
        outcomes.append((seen, torch.rand(3).tolist()))
    assert outcomes[0] == outcomes[1]
    assert [len(b) for b in outcomes[0][0]] == [4, 4, 2] * 3 and sorted(sum(outcomes[0][0][:3], [])) == list(range(10))


def test_keyed_items_carry_their_position_in_the_run():
    loader = ResumableLoader(Items(), 4, progress=OUTSIDE_A_FIT, keyed=True)
    torch.manual_seed(0)
    seen = batches(loader, 2)
    positions = [v // 1000 for b in seen for v in b]
    assert positions == list(range(20))
    assert sorted(v % 1000 for b in seen[:3] for v in b) == list(range(10))


@pytest.mark.parametrize("stop", [1, 3], ids=["mid_epoch", "epoch_end"])
def test_a_resumed_loader_continues_the_uninterrupted_batches_and_stream(stop):
    """Stopped after `stop` batches of the second epoch (3 = its end), a new loader given the
    checkpointed state and random state yields what the uninterrupted one yields next, and
    leaves the global stream where it leaves it."""
    torch.manual_seed(1)
    whole = ResumableLoader(Items(), 4, progress=OUTSIDE_A_FIT, keyed=True)
    it = iter(whole)
    first_epoch = [b.tolist() for b in it]
    it = iter(whole)
    second = [next(it).tolist() for _ in range(stop)]
    # the checkpoint, written after `stop` batches: Lightning reports them as trained
    whole._progress = lambda: (stop, 3)
    state, rng = whole.state_dict(), torch.get_rng_state()
    rest = [b.tolist() for b in it] + [b.tolist() for b in whole]
    after = torch.rand(2)

    torch.manual_seed(99)  # the resumed process starts elsewhere
    resumed = ResumableLoader(Items(), 4, progress=OUTSIDE_A_FIT, keyed=True)
    torch.set_rng_state(rng)
    resumed.load_state_dict(state)
    again = [b.tolist() for b in resumed] + ([b.tolist() for b in resumed] if stop < 3 else [])
    assert again == rest and torch.equal(torch.rand(2), after)
    assert len(first_epoch) == 3 and len(second) == stop


def test_after_a_checkpoint_without_loader_state_the_position_counts_this_orders_batches():
    """Resumed from a checkpoint written before loaders had state (the trainer counts k batches
    of the epoch done, the loader starts a fresh order), a later checkpoint records the j batches
    this order gave, not k + j."""
    loader = ResumableLoader(Items(), 4, progress=lambda: (1, 3))
    it = iter(loader)
    next(it)
    loader._progress = lambda: (2, 3)
    assert loader.state_dict()["batches"] == 1 and not loader.state_dict()["epoch_done"]


def test_workers_change_neither_the_batches_nor_the_global_stream():
    """Loader workers (persistent) yield the batches of the in-process loader and consume the
    global stream as it does, so a run does not depend on the worker count."""
    outcomes = []
    for workers in (0, 2):
        torch.manual_seed(5)
        loader = ResumableLoader(Items(), 4, progress=OUTSIDE_A_FIT, keyed=True, num_workers=workers, persistent_workers=workers > 0)
        outcomes.append((batches(loader, 3), torch.rand(2).tolist()))
    assert outcomes[0] == outcomes[1]


def test_where_lightning_puts_in_its_own_sampler_the_loader_is_a_plain_one():
    """A distributed strategy (even on one device) and overfit_batches make Lightning swap the
    training loader's sampler, which it cannot do in a ResumableLoader: the data modules then
    give a plain shuffling DataLoader (the parent commit's; it trains there)."""
    import lightning as L
    from torch.utils.data import RandomSampler

    quiet = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    for settings, plain in (({}, False), ({"strategy": "ddp", "devices": 1}, True), ({"overfit_batches": 2}, True)):
        trainer = L.Trainer(**quiet, **settings)
        loader = training_loader(Items(), 4, lambda: trainer)
        assert (type(loader) is DataLoader and isinstance(loader.sampler, RandomSampler)) if plain else type(loader) is ResumableLoader, settings
    assert type(training_loader(Items(), 4, lambda: None)) is ResumableLoader


def test_a_checkpoint_of_other_data_is_refused():
    loader = ResumableLoader(Items(), 4, progress=OUTSIDE_A_FIT)
    with pytest.raises(DataError, match=r"trained on 12 items in batches of 4; this run has 10 in batches of 4"):
        loader.load_state_dict({"seed": 1, "start": 0, "batches": 1, "size": 12, "batch_size": 4})


def test_context_target_keys_draw_what_the_counted_draws_drew():
    """A keyed ContextTargets item at position p draws what the (p + 1)-th counted draw drew, so
    in-process runs from before the keys are unchanged."""
    from sciml.data.context_target import ContextTargets, Field

    rng = np.random.default_rng(0)
    t, x = np.linspace(0, 1, 6), np.linspace(0, 1, 8)
    coords = np.stack(np.meshgrid(t, x, indexing="ij"), -1)
    field = Field(u=rng.random((3, 6, 8)), coords=coords, t=t, weights=np.full(8, 1 / 8), params=np.zeros((3, 1)), meta=None)
    counted = ContextTargets(field, np.arange(3), 4, 2, 5, seed=7)
    keyed = ContextTargets(field, np.arange(3), 4, 2, 5, seed=7)
    for position, i in enumerate([2, 0, 1, 1, 2]):
        a, b = counted[i], keyed[(i, position)]
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(keyed[(1, 0)]["xt"], keyed[(1, 1)]["xt"])  # another position, other points


def test_random_state_travels_through_a_weights_only_checkpoint():
    callback = RandomState()
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    buffer = io.BytesIO()
    torch.save({"callbacks": {"RandomState": callback.state_dict()}}, buffer)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    buffer.seek(0)
    callback.load_state_dict(torch.load(buffer, weights_only=True)["callbacks"]["RandomState"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_validation_does_not_move_trainings_stream():
    callback = RandomState()
    torch.manual_seed(0)
    callback.on_validation_start(None, None)
    torch.rand(5)  # validation's draws
    callback.on_validation_end(None, None)
    drawn = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(1), drawn)


@pytest.mark.parametrize(("every", "kills", "limit"), [(8, [13], []), (10, [13], []), (2, [7, 9], []), (6, [13], ["trainer.limit_train_batches=3"])],
                         ids=["mid_epoch", "epoch_end", "twice_in_one_epoch", "epoch_cut_by_limit_train_batches"])
def test_an_interrupted_mini_batch_run_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch, interrupt_at, every, kills, limit):
    """PI-HC-MoE (points drawn every step, 9 training samples in batches of 2: five a epoch, the
    last short) interrupted after the steps ``kills`` and resumed each time from its last
    checkpoint (every ``every`` steps: mid-epoch, at an epoch's end, twice in one epoch, or with
    epochs cut to 3 batches, an epoch's end that is not the loader's) ends with the uninterrupted
    run's weights and metrics, to the bit."""
    import sciml.pipeline as pipeline

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(tmp_path)
    shutil.copytree(root / "experiments" / "hc", tmp_path / "experiments" / "hc")
    overrides = ["data.n_samples=12", "data.generator_params={nx: 16, nt: 26}", "data.path=data/ds.h5", "data.batch_size=2",
                 "trainer.max_steps=20", "model.solver={points: 60, max_steps: 10}", *limit]
    run = lambda out: pipeline.run_experiment("experiments/hc/diffusion_sorption_moe.yaml", out=tmp_path / out, quick=True, overrides=overrides)  # noqa: E731
    monkeypatch.setattr(pipeline, "CHECKPOINT_EVERY", every)
    full = run("full")
    for step in kills:
        interrupt_at(step)
        with pytest.raises(KeyboardInterrupt):
            run("killed")
        assert torch.load(tmp_path / "killed/checkpoints/last.ckpt", weights_only=True)["global_step"] == step // every * every
    interrupt_at(None)
    resumed = run("killed")
    assert resumed["metrics"]["rel_l2"] == full["metrics"]["rel_l2"]
    weights = [torch.load(tmp_path / name / "checkpoints/last.ckpt", weights_only=True)["state_dict"] for name in ("full", "killed")]
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
