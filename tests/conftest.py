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
