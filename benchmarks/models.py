"""What the benchmarks time: the paper's CNN, a VGG-style stack, and occlusion workloads.

Weights are random (seeded): the cost of a forward pass does not depend on what was learnt.
Both models are one flat ``nn.Sequential`` of standard layers, the form the incremental
engine runs on, so every engine can be timed on the same model. A `Case` fixes a model and
the sizes it is timed at; the ``*_SMOKE`` cases are tiny versions that CI runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import occlusion_probe as op

__all__ = [
    "PAPER",
    "PAPER_FILLS",
    "PAPER_SHAPE",
    "PAPER_SMOKE",
    "VGG",
    "VGG_SHAPE",
    "VGG_SMOKE",
    "VGG_WIDTHS",
    "Case",
    "Workload",
    "make_workload",
    "paper_cnn",
    "vgg_style",
    "workload_of",
]

PAPER_SHAPE = (1, 48, 48)
PAPER_FILLS: tuple[float, ...] = tuple(op.DEFAULT_FILLS)
VGG_SHAPE = (3, 224, 224)
#: VGG-11's layout ("M" is a 2x2 max pool) at 1/8 of its width, so that the dense sweep of
#: 2 images x 196 patches x 6 fills stays within about a minute on a 2-core CPU.
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


@dataclass(frozen=True, eq=False)
class Workload:
    """One occlusion analysis to time: N images x R regions x V fills on one model.

    images : (N, C, H, W) on the benchmark device; regions : masks (R, H, W) on the CPU
    (``sweep`` moves them itself); fills : the V constant fill values.
    """

    name: str
    model: nn.Module
    images: Tensor
    regions: op.Regions
    fills: tuple[float, ...]

    @property
    def count(self) -> int:
        """Number of occluded images, N * R * V."""
        return self.images.shape[0] * len(self.regions) * len(self.fills)

    def occluded(self, limit: int | None = None) -> Tensor:
        """The first `limit` (default: all) occluded images in (image, region, fill) order.

        Built with one plain ``torch.where`` per image, independently of the engines under
        test: the prebuilt input of the forward limit.
        """
        total = self.count if limit is None else min(limit, self.count)
        c, h, w = self.images.shape[1:]
        device = self.images.device
        masks = self.regions.masks.to(device)[:, None, None]  # (R, 1, 1, H, W)
        fills = torch.tensor(self.fills, dtype=self.images.dtype, device=device)
        fills = fills.view(1, -1, 1, 1, 1)  # (1, V, 1, 1, 1)
        per_image = len(self.regions) * len(self.fills)
        out = torch.empty((total, c, h, w), dtype=self.images.dtype, device=device)
        for i in range(-(-total // per_image)):
            block = torch.where(masks, fills, self.images[i][None, None]).reshape(-1, c, h, w)
            start = i * per_image
            take = min(per_image, total - start)
            out[start : start + take] = block[:take]
        return out


def make_workload(
    name: str,
    model: nn.Module,
    shape: tuple[int, int, int],
    n: int,
    grid_size: int,
    fills: tuple[float, ...],
    device: torch.device,
    seed: int = 1,
) -> Workload:
    """`n` random images in [0, 1] of `shape`, a grid_size x grid_size grid, the given fills."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand((n, *shape), generator=generator).to(device)
    regions = op.grid(shape[1], shape[2], rows=grid_size, cols=grid_size)
    return Workload(name, model.to(device), images, regions, fills)


@dataclass(frozen=True)
class Case:
    """A model and the sizes it is timed at.

    n, grid, fills : the main workload (n images, a grid x grid grid, the fills)
    batch_sizes : tried by the forward-limit scan
    scan_images : how many prebuilt occluded images the scan and the per-test reference
        run over (a prefix of the workload's occluded images)
    rounds : timed rounds of the main benchmarks (the minimum is reported)
    fine_grid, fine_n : grid and N of the incremental engine's small-area benchmark
    captum_n, naive_n : N for captum (one attribute call per class and fill) and for the
        one-image-per-forward loop
    smoke : a tiny case for CI; its rows carry no targets
    """

    id: str
    title: str
    build: Callable[[], nn.Sequential]
    shape: tuple[int, int, int]
    n: int
    grid: int
    fills: tuple[float, ...]
    batch_sizes: tuple[int, ...]
    scan_images: int
    rounds: int
    fine_grid: int = 12
    fine_n: int = 16
    captum_n: int = 32
    naive_n: int = 1
    smoke: bool = False


PAPER = Case(
    "paper",
    "paper CNN 1x48x48",
    paper_cnn,
    PAPER_SHAPE,
    n=128,
    grid=4,
    fills=PAPER_FILLS,
    # Powers of two and the block sizes the dense engine uses on this workload (48, 24, 96).
    batch_sizes=(16, 24, 32, 48, 64, 96, 128, 256, 512, 1024, 2048),
    scan_images=2048,
    rounds=2,
    # captum's forwards hold 16 N images; N = 4 (64 per forward) was its fastest setting on
    # 2 CPU cores (N = 2 ... 32 measured: 156, 154, 146, 130, 135 images/s).
    captum_n=4,
)
PAPER_SMOKE = Case(
    "paper-smoke",
    "paper CNN 1x48x48 (smoke)",
    paper_cnn,
    PAPER_SHAPE,
    n=2,
    grid=4,
    fills=(0.0, 1.0),
    batch_sizes=(16, 64),
    scan_images=64,
    rounds=1,
    fine_grid=6,
    fine_n=1,
    captum_n=1,
    naive_n=1,
    smoke=True,
)
VGG = Case(
    "vgg",
    "VGG-style 3x224x224",
    vgg_style,
    VGG_SHAPE,
    n=2,
    grid=14,
    fills=PAPER_FILLS,
    batch_sizes=(2, 4, 8, 16, 32, 64),
    scan_images=64,
    rounds=2,
    # One image: captum's 60 calls (10 classes x 6 fills) of 196 perturbations already take
    # about as long as the dense sweep of both images.
    captum_n=1,
)


def _vgg_smoke() -> nn.Sequential:
    return vgg_style(widths=(4, "M", 8, "M"), size=32, hidden=16)


VGG_SMOKE = Case(
    "vgg-smoke",
    "VGG-style 3x32x32 (smoke)",
    _vgg_smoke,
    (3, 32, 32),
    n=1,
    grid=2,
    fills=(0.0, 1.0),
    batch_sizes=(4, 8),
    scan_images=8,
    rounds=1,
    captum_n=1,
    smoke=True,
)

_MODELS: dict[tuple[str, str], nn.Sequential] = {}
_WORKLOADS: dict[tuple[str, str, int, int, tuple[float, ...]], Workload] = {}


def workload_of(
    case: Case,
    device: torch.device,
    n: int | None = None,
    grid: int | None = None,
    fills: tuple[float, ...] | None = None,
) -> Workload:
    """The case's workload, or one with another N, grid or fills; cached for the session
    (one model per case and device, so every workload of a case shares its weights)."""
    n = case.n if n is None else n
    grid = case.grid if grid is None else grid
    fills = case.fills if fills is None else fills
    key = (case.id, str(device), n, grid, fills)
    if key not in _WORKLOADS:
        model_key = (case.id, str(device))
        if model_key not in _MODELS:
            _MODELS[model_key] = case.build().to(device)
        name = f"{case.title}, N={n}, {grid}x{grid} grid x {len(fills)} fills"
        _WORKLOADS[key] = make_workload(
            name, _MODELS[model_key], case.shape, n, grid, fills, device
        )
    return _WORKLOADS[key]
