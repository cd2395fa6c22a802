"""Models the benchmarks time: the paper's CNN and a VGG-style stack for a larger input.

Weights are random (seeded): the cost of a forward pass does not depend on what was learnt.
Both are one flat ``nn.Sequential`` of standard layers, the form the incremental engine runs.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PAPER_SHAPE", "VGG_SHAPE", "VGG_WIDTHS", "paper_cnn", "vgg_style"]

PAPER_SHAPE = (1, 48, 48)
VGG_SHAPE = (3, 224, 224)
#: VGG-11's layout ("M" is a 2x2 max pool) at 1/8 of its width, so that the dense sweep of
#: 2 images x 196 patches x 6 fills stays within seconds on a 2-core CPU.
VGG_WIDTHS: tuple[int | str, ...] = (8, "M", 16, "M", 32, 32, "M", 64, 64, "M", 64, 64, "M")


def paper_cnn(num_classes: int = 7, seed: int = 0) -> nn.Sequential:
    """The paper-sized CNN on (N, 1, 48, 48): three conv + pool stages, Linear 4608->1024->7."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(128 * 6 * 6, 1024),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(1024, num_classes),
    ).eval()


def vgg_style(
    widths: tuple[int | str, ...] = VGG_WIDTHS,
    in_channels: int = 3,
    size: int = 224,
    hidden: int = 256,
    num_classes: int = 10,
    seed: int = 0,
) -> nn.Sequential:
    """3x3 convs (padding 1) + ReLU, 2x2 max pools at the "M" entries, then a small MLP head."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    channels = in_channels
    for entry in widths:
        if entry == "M":
            layers.append(nn.MaxPool2d(2))
            size //= 2
        else:
            width = int(entry)
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
            channels = width
    layers += [
        nn.Flatten(),
        nn.Linear(channels * size * size, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    ]
    return nn.Sequential(*layers).eval()
