"""batching.py: the starting size, the timing trial (with fake clocks), and sweeps that
time their batches give the outputs of a fixed batch size."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from reference_models import ResNet18, small_cnn
from torch import nn

import occlusion_probe as op
from occlusion_probe import batching
from occlusion_probe.batching import BatchConfig, BatchPlan, auto_batch_size, remembered_batch
from occlusion_probe.engines.dense import run_dense

CPU = torch.device("cpu")


def test_auto_batch_size_is_a_power_of_two_within_budget() -> None:
    # 1 MiB of float32 input: 113 images of 1x48x48, rounded down to a power of two.
    assert auto_batch_size((1, 48, 48), CPU, 10**6) == 64
    assert auto_batch_size((1, 48, 48), CPU, 7) == 7
    # Large images: at least 4 per call while 4 fit in 16 MiB, else one.
    assert auto_batch_size((3, 224, 224), CPU, 100) == 4
    assert auto_batch_size((3, 224, 224), CPU, 3) == 3
    assert auto_batch_size((3, 2000, 2000), CPU, 100) == 1
    # The element size counts: bfloat16 images are half the bytes.
    assert auto_batch_size((1, 48, 48), CPU, 10**6, element_size=2) == 128


def _drain(plan: BatchPlan, total: int, seconds_per_image: dict[BatchConfig, float]) -> list[int]:
    """Run `plan` over `total` items with a fake clock; the block sizes in order."""
    sizes = []
    for config in plan.blocks(total):
        sizes.append(config.size)
        per_image = seconds_per_image.get(BatchConfig(config.size, config.channels_last), 1.0)
        plan.record(config, per_image * config.size)
    return sizes


def test_candidates_around_the_budget_with_both_layouts() -> None:
    plan = BatchPlan.auto(object(), (3, 224, 224), torch.float32, CPU, 10_000)
    assert plan.how == "timed"
    assert plan.current == BatchConfig(4)
    # Half, once, twice and four times the start (4), but never below 4 images on CPU.
    assert plan.trial == [BatchConfig(s, cl) for cl in (False, True) for s in (4, 8, 16)]
    # One channel too: channels-last strides make its convolutions run channels-last.
    single = BatchPlan.auto(object(), (1, 48, 48), torch.float32, CPU, 10**6)
    assert single.trial == [BatchConfig(s, cl) for cl in (False, True) for s in (32, 64, 128, 256)]
    assert (
        not BatchPlan.auto(object(), (3, 8, 8), torch.float32, CPU, 10**7, formats=False)
        .trial[-1]
        .channels_last
    )


def test_trial_picks_the_fastest_and_covers_every_item_once() -> None:
    model = nn.Identity()
    plan = BatchPlan.auto(model, (3, 224, 224), torch.float32, CPU, 10_000)
    speed = {BatchConfig(s, cl): 1.0 for s in (4, 8, 16) for cl in (False, True)}
    speed[BatchConfig(8, True)] = 0.4
    speed[BatchConfig(16, True)] = 0.45  # within 1.25x: timed again; the others are not
    sizes = _drain(plan, 1000, speed)
    assert sum(sizes) == 1000
    warm_up = [4, 8, 16, 4, 8, 16]
    # Every candidate over 16 images (the largest size): 4 calls of 4, 2 of 8, 1 of 16.
    timed = [4, 4, 4, 4, 8, 8, 16]
    assert sizes[:23] == [*warm_up, *timed, *timed, 8, 8, 16]
    assert plan.current == BatchConfig(8, True)
    after = sizes[23:]
    assert max(after) - min(after) <= 1 and max(after) <= 8  # even blocks of the choice
    assert "8 channels-last" in plan.note and "timed" in plan.note
    # Remembered for this model and input: a later sweep skips the trial.
    assert remembered_batch(model, (3, 224, 224), torch.float32, CPU) == BatchConfig(8, True)
    again = BatchPlan.auto(model, (3, 224, 224), torch.float32, CPU, 10_000)
    assert again.trial == [] and again.current == BatchConfig(8, True)
    assert "remembered" in again.note
    # Not for another shape or dtype.
    assert remembered_batch(model, (3, 112, 112), torch.float32, CPU) is None
    assert remembered_batch(model, (3, 224, 224), torch.float64, CPU) is None


def test_an_unfinished_trial_uses_the_best_so_far() -> None:
    plan = BatchPlan.auto(object(), (1, 48, 48), torch.float32, CPU, None)  # a stream
    speed = {BatchConfig(64, False): 0.2}
    sizes = _drain(plan, 480 + 4 * 256 + 40, speed)  # the warm-up, then part of the round
    assert plan.trial  # not finished: nothing remembered yet
    assert plan.current == BatchConfig(64, False)  # the fastest of those timed so far
    assert sizes[-1] <= 64


def test_remembered_choices_go_with_the_model() -> None:
    model = nn.Linear(2, 2)
    plan = BatchPlan.auto(model, (1, 8, 8), torch.float32, CPU, 10**7)
    _drain(plan, 10**6, {})
    assert remembered_batch(model, (1, 8, 8), torch.float32, CPU) is not None
    alive = weakref.ref(model)
    del model, plan
    gc.collect()
    assert alive() is None  # remembering a choice does not keep the model alive


def test_small_sweeps_and_unreferencable_callables_skip_or_forget() -> None:
    # 69 images hold no short trial (1.25 x two calls of 4, 8 and 16 is 70).
    small = BatchPlan.auto(object(), (3, 224, 224), torch.float32, CPU, 69)
    # Untimed, the CPU gets channels-last input, and contiguous where layouts are not tried.
    assert small.trial == [] and small.current == BatchConfig(4, channels_last=True)
    assert "too few images" in small.note
    flat = BatchPlan.auto(object(), (3, 224, 224), torch.float32, CPU, 69, formats=False)
    assert flat.current == BatchConfig(4)
    vectors = BatchPlan.auto(object(), (4096,), torch.float32, CPU, 100)
    assert not vectors.current.channels_last
    # A trial that a chunk cannot hold waits for the next chunk; the blocks still cover it.
    unreferencable = _NoWeakref()
    plan = BatchPlan.auto(unreferencable, (1, 48, 48), torch.float32, CPU, None)  # a stream
    assert [c.size for c in plan.trial] == [32, 64, 128, 256] * 2
    assert _drain(plan, 50, {}) == [32, 18]  # 64 waits for the next chunk
    assert [c.size for c in plan.trial] == [64, 128, 256, 32, 64, 128, 256]
    _drain(plan, 10**5, {})
    assert not plan.trial and plan.how == "timed"
    assert remembered_batch(unreferencable, (1, 48, 48), torch.float32, CPU) is None


def test_a_small_sweep_runs_a_short_trial_in_one_layout() -> None:
    # 98 occluded images (one image, 7x7 patches, 2 fills): too few for the full trial (152
    # images, both layouts), enough for one warm-up and one timed call of each size.
    model = object()
    plan = BatchPlan.auto(model, (3, 224, 224), torch.float32, CPU, 98)
    assert plan.how == "timed" and plan.rounds == 1 and not plan.equal_rounds
    assert plan.trial == [BatchConfig(s, channels_last=True) for s in (4, 8, 16)]
    fast = {BatchConfig(16, channels_last=True): 0.5}
    sizes = _drain(plan, 98, fast)
    assert sizes[:6] == [4, 8, 16, 4, 8, 16] and sum(sizes) == 98
    assert set(sizes[6:]) <= {14} and plan.current == BatchConfig(16, channels_last=True)
    assert "batches of 16 channels-last images (timed" in plan.note
    # One call each is too noisy to bind later, larger sweeps.
    assert remembered_batch(model, (3, 224, 224), torch.float32, CPU) is None
    contiguous = BatchPlan.auto(object(), (3, 224, 224), torch.float32, CPU, 98, formats=False)
    assert contiguous.trial == [BatchConfig(s) for s in (4, 8, 16)]


def test_a_short_trial_refused_channels_last_times_contiguous_input() -> None:
    plan = BatchPlan.auto(object(), (3, 224, 224), torch.float32, CPU, 98)
    plan.refuse_channels_last()
    assert plan.trial == [BatchConfig(s) for s in (4, 8, 16)]
    sizes = _drain(plan, 98, {BatchConfig(8): 0.5})
    assert sizes[:6] == [4, 8, 16, 4, 8, 16]
    assert plan.current == BatchConfig(8)
    assert "contiguous input" in plan.note and "(timed" in plan.note


class _NoWeakref:
    """A callable model that cannot be weakly referenced (no __weakref__ slot)."""

    __slots__ = ()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)


def test_fixed_plans_split_evenly() -> None:
    assert [c.size for c in BatchPlan.fixed(64).blocks(96)] == [48, 48]
    assert [c.size for c in BatchPlan.fixed(7).blocks(20)] == [7, 7, 6]
    assert list(BatchPlan.fixed(3).blocks(0)) == []
    assert "given" in BatchPlan.fixed(3).note


def test_channels_last_is_a_copy_in_another_layout() -> None:
    batch = torch.rand(2, 3, 5, 5)
    moved = BatchConfig(2, channels_last=True).prepare(batch)
    assert moved.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(moved, batch)
    assert BatchConfig(2).prepare(batch) is batch


def test_run_dense_with_a_trial_equals_fixed_batches() -> None:
    model = small_cnn(in_channels=3).eval()
    images = torch.rand(3, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    masks = op.grid(12, 12, 3, 3).masks
    fill_images = torch.tensor([0.0, 0.5, 1.0]).reshape(3, 1, 1, 1, 1)
    plan = BatchPlan(BatchConfig(5), [BatchConfig(2), BatchConfig(7, True), BatchConfig(4)])
    with torch.inference_mode():
        _clean, timed = run_dense(model, images, fill_images, masks, plan, 5)
        _clean, fixed = run_dense(model, images, fill_images, masks, 81, 5)
    torch.testing.assert_close(timed, fixed, rtol=0, atol=1e-6)


def test_sweep_times_its_batches_and_agrees_with_a_fixed_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Time even this small sweep, starting at 4 images per call (candidates 4, 8, 16).
    monkeypatch.setattr(batching, "TRIAL_MIN_SHARE", 0)
    monkeypatch.setattr(batching, "_AUTO_BATCH_BYTES", {"cpu": 4 * 3 * 32 * 32 * 4, "cuda": 0})
    model = ResNet18(width=4).eval()
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    regions = op.grid(32, 32, 4, 4)
    fills = [0.0, 0.5, 1.0]
    timed = op.sweep(model, images, regions, fills, engine="dense", progress=False)
    assert "timed on the first blocks" in timed.engine_note
    fixed = op.sweep(model, images, regions, fills, engine="dense", batch_size=3, progress=False)
    assert "batches of 3 images (given)" in fixed.engine_note
    torch.testing.assert_close(timed.occluded, fixed.occluded, rtol=0, atol=1e-6)
    torch.testing.assert_close(timed.baseline, fixed.baseline, rtol=0, atol=1e-6)
    again = op.sweep(model, images, regions, fills, engine="dense", progress=False)
    assert "remembered from an earlier trial" in again.engine_note


def test_one_call_per_candidate_when_rounds_need_not_be_equal() -> None:
    plan = BatchPlan(
        BatchConfig(2),
        [BatchConfig(1), BatchConfig(4)],
        "timed",
        unit="regions",
        equal_rounds=False,
    )
    sizes = _drain(plan, 20, {BatchConfig(4): 0.5})
    # A warm-up call each, one timed call each; 1 is not within 1.25x of 4: decided.
    assert sizes[:4] == [1, 4, 1, 4]
    assert plan.current == BatchConfig(4) and not plan.trial
    assert "batches of 4 regions (timed" in plan.note


class _ViewsItsInput(nn.Module):
    """A model written for contiguous input: x.view(n, -1) fails on channels-last."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.view(x.shape[0], -1))


def test_a_model_refusing_channels_last_gets_contiguous_input(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(batching, "TRIAL_MIN_SHARE", 0)
    monkeypatch.setattr(batching, "_AUTO_BATCH_BYTES", {"cpu": 4 * 3 * 8 * 8 * 4, "cuda": 0})
    model = _ViewsItsInput().eval()
    images = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    regions = op.grid(8, 8, 4, 4)
    timed = op.sweep(model, images, regions, [0.0, 1.0], engine="dense", progress=False)
    assert "raised an error on channels-last input" in timed.engine_note
    assert "channels-last images" not in timed.engine_note.split(";")[1]
    fixed = op.sweep(
        model, images, regions, [0.0, 1.0], engine="dense", batch_size=5, progress=False
    )
    torch.testing.assert_close(timed.occluded, fixed.occluded, rtol=0, atol=1e-6)
    chosen = remembered_batch(model, (3, 8, 8), torch.float32, CPU)
    assert chosen is not None and not chosen.channels_last
