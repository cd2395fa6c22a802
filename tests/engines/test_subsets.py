"""The region runner: how many occluded images one incremental call computes."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from reference_models import MobileNetV2, small_cnn

import occlusion_probe as op
from occlusion_probe import batching
from occlusion_probe.batching import BatchConfig
from occlusion_probe.engines.incremental import IncrementalEngine


def _calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(the engine's CPU target, items_per_call) of every IncrementalEngine.run."""
    seen: list[tuple[int, int]] = []
    original = IncrementalEngine.run

    def spy(self: IncrementalEngine, *args: Any, **kwargs: Any) -> Any:
        seen.append((self.cpu_items_per_call, args[3]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(IncrementalEngine, "run", spy)
    return seen


@pytest.mark.parametrize(
    "make",
    [lambda: small_cnn(in_channels=3, size=32), MobileNetV2],
    ids=["conv", "depthwise"],
)
def test_auto_on_cpu_uses_the_plans_target_whatever_the_dense_batch(
    monkeypatch: pytest.MonkeyPatch, make: Any
) -> None:
    """A remembered dense batch of 32 made 128 images per call before; a memory-bound
    plan (depthwise convs) slows down at that size."""
    model = make().eval()
    monkeypatch.setattr(batching, "remembered_batch", lambda *args: BatchConfig(32, True))
    seen = _calls(monkeypatch)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    result = op.sweep(model, images, op.grid(32, 32, rows=4, cols=4), (0.0, 0.5),
                      engine="incremental", progress=False)  # fmt: skip
    assert result.engine == "incremental" and seen
    assert all(items == target for target, items in seen)
    assert {target for target, _ in seen} <= {24, 64}


def test_a_given_batch_size_sets_four_times_as_many_items(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = small_cnn(in_channels=3, size=32).eval()
    seen = _calls(monkeypatch)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    op.sweep(model, images, op.grid(32, 32, rows=4, cols=4), (0.0,), engine="incremental",
             batch_size=32, progress=False)  # fmt: skip
    assert seen and all(items == max(128, target) for target, items in seen)
