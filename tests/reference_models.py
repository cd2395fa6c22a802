"""Small models and plain reference loops shared by the tests.

A module of its own (not conftest.py): tests/examples has a conftest.py too, and
``from conftest import ...`` would pick whichever was imported first.
"""

from __future__ import annotations

import torch
from torch import nn


def small_cnn(in_channels: int = 1, classes: int = 5, size: int = 12) -> nn.Sequential:
    """A small conv net (eval-mode BatchNorm, dropout) for exactness tests."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(in_channels, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.Tanh(),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(6 * (size // 2) ** 2, classes),
    )


def reference_sweep(
    model: nn.Module, images: torch.Tensor, masks: torch.Tensor, fills: list[float]
) -> torch.Tensor:
    """The plain per-image loop: (N, R, V, K) softmax outputs."""
    n, r, v = images.shape[0], masks.shape[0], len(fills)
    out = []
    with torch.no_grad():
        for i in range(n):
            per_region = []
            for j in range(r):
                per_fill = []
                for fill in fills:
                    occluded = images[i].clone()
                    occluded[:, masks[j]] = fill
                    per_fill.append(torch.softmax(model(occluded[None]), dim=1)[0])
                per_region.append(torch.stack(per_fill))
            out.append(torch.stack(per_region))
    return torch.stack(out).reshape(n, r, v, -1)
