"""Shared fixtures: tiny models and data with known answers."""

from __future__ import annotations

import pytest
import torch
from reference_models import small_cnn
from torch import nn


@pytest.fixture
def cnn() -> nn.Sequential:
    return small_cnn().eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(5, 1, 12, 12, generator=torch.Generator().manual_seed(1))


@pytest.fixture(autouse=True)
def fixed_flop_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    """The incremental engine re-plans its groups from the measured FLOP rate; tests inject
    one (100 GFLOP/s) so that no test depends on the machine's speed or load."""
    from occlusion_probe.engines import incremental

    monkeypatch.setattr(incremental, "FLOP_RATE", 1e11)
