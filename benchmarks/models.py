"""What the benchmarks time: the paper's CNN, VGG, ResNet, MobileNet, DenseNet and ConvNeXt
nets, and occlusion workloads.

Weights are random (seeded): the cost of a forward pass does not depend on what was learnt.
The architectures are defined once, in tests/reference_models.py (written from their papers),
and built here at the sizes below with He-initialised weights and BatchNorm statistics
measured on a photograph (`signal_preserving`), so that their outputs, and so their heat
maps, depend on the image as a trained model's do. A
`Case` fixes a model and the sizes it is timed at; the ``*_SMOKE`` cases are tiny versions
that CI runs.

Architectures at 3x224x224 (`ARCHITECTURES`, 1000 classes), GFLOPs per image counted by the
incremental engine's planner (2 x multiply-adds of conv2d and linear). The widths are chosen
so that one dense sweep of one image x 196 patches x 2 fills takes roughly 5-20 s on 2 CPU
cores:

| case | model | GFLOPs | FLOP bound 16x16 / 32x32 patches |
| --- | --- | ---: | ---: |
| vgg16 | VGG-16 (configuration D) at 1/2 width: convs of 32-64-128-256-256 channels, fc 12544-2048-2048-1000 | 7.78 | 8.87-9.06 / 6.79-6.86 |
| resnet18 | ResNet-18 at full width (64-128-256-512) | 3.63 | 2.70-2.78 / 2.42-2.48 |
| mobilenetv2 | MobileNetV2 at width 1.0 (the paper's Table 2, stem 32, head 1280) | 0.63 | 2.08-2.15 / 1.82-1.98 |
| densenet121 | DenseNet-121's blocks (6, 12, 24, 16) at growth rate 16 (the paper's: 32), stem 32 | 1.48 | 2.24-2.30 / 1.94-2.12 |
| convnext_t | ConvNeXt-T's depths (3, 3, 9, 3) at half width: 48-96-192-384 | 2.29 | 1.32-1.35 / 1.25-1.31 |

The FLOP bound is dense FLOPs over the FLOPs of the incremental engine's plan (its
``flop_bound``, for the groups it ran at N=1 and 2 fills on a 2-core Xeon, 2026-12-03: the
grouping depends on the measured FLOP rate and the images per call; ranges span the runs of
that day); the benchmarks record
it next to every incremental ratio.

The paper CNN (1x48x48) and VGG-11 at 1/8 width (3x224x224) are the cases of test_sweep.py.
The heat-map benchmark also has a trained case (trained.py: a VGG-16 trained to find a shape,
whose evidence is local as a real classifier's is); its `Case` has ``trained=True``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import matplotlib.cbook
import matplotlib.image
import torch
import torch.nn.functional as F
from reference_models import (
    MOBILENETV2_SETTINGS,
    VGG11_LAYOUT,
    VGG16_LAYOUT,
    ConvNeXt,
    DenseNet,
    MobileNetV2,
    ResNet18,
    vgg,
)
from torch import Tensor, nn

import occlusion_probe as op

__all__ = [
    "ARCHITECTURES",
    "ARCHITECTURE_FILLS",
    "ARCHITECTURE_SHAPE",
    "ARCHITECTURE_SMOKES",
    "PAPER",
    "PAPER_FILLS",
    "PAPER_SHAPE",
    "PAPER_SMOKE",
    "VGG",
    "VGG_SHAPE",
    "VGG_SMOKE",
    "Case",
    "Workload",
    "architecture_case",
    "make_workload",
    "paper_cnn",
    "vgg11_eighth",
    "workload_of",
]

PAPER_SHAPE = (1, 48, 48)
PAPER_FILLS: tuple[float, ...] = tuple(op.DEFAULT_FILLS)
VGG_SHAPE = (3, 224, 224)


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


def vgg11_eighth(seed: int = 0) -> nn.Sequential:
    """VGG-11's layout at 1/8 of its width (3x3 convs of 8-16-32-32-64-64-64-64 channels,
    five 2x2 max pools) with a 3136-256-10 head, so that the dense sweep of 2 images x 196
    patches x 6 fills stays within about a minute on a 2-core CPU."""
    return vgg(VGG11_LAYOUT, divisor=8, size=224, hidden=(256,), classes=10, seed=seed)


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

    def sweep(self, engine: str = "dense", **options: Any) -> op.SweepResult:
        """``op.sweep`` of the whole workload (no progress bar), e.g. for equality checks."""
        return op.sweep(
            self.model,
            self.images,
            self.regions,
            self.fills,
            engine=engine,
            progress=False,
            **options,
        )

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


@functools.cache
def photograph(height: int, width: int) -> Tensor:
    """matplotlib's sample photograph (RGB, 600x512), resized to (3, height, width) in [0, 1]."""
    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    pixels = torch.from_numpy(matplotlib.image.imread(path).copy()).permute(2, 0, 1)
    image = pixels[None].float() / 255
    resized = F.interpolate(image, size=(height, width), mode="bilinear", antialias=True)
    return resized.clamp(0, 1)


def signal_preserving(model: nn.Module, images: Tensor, seed: int = 0) -> nn.Module:
    """`model` with weights whose outputs depend on the image, as trained ones do.

    PyTorch's default initialisation shrinks the signal at every layer (weight variance
    1/(3 fan-in)): after VGG-16's 13 convolutions the logits are its biases, and a 16x16
    occlusion changed them by 6e-8, float32 rounding, so its heat maps were noise. Here every
    Conv2d and Linear gets He et al.'s (2015) normal initialisation (fan-in, ReLU gain) and a
    zero bias, and every BatchNorm's running statistics are measured on `images` (a forward
    in training mode with a cumulative average, as training leaves them), its affine
    parameters kept. Speed does not depend on the values; the heat maps and their fidelity do.
    """
    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [norm.momentum for norm in norms]
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    with torch.no_grad():
        model(images)
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    return model.eval()


@dataclass(frozen=True)
class Case:
    """A model and the sizes it is timed at.

    n, grid, fills : the main workload (n images, a grid x grid grid, the fills)
    batch_sizes : tried by the forward-limit scan
    memory_formats : tried by the forward-limit scan, with every batch size: "contiguous" and
        "channels_last" (the model converted with ``.to(memory_format=...)`` and the prebuilt
        images too)
    scan_images : how many prebuilt occluded images the scan and the per-test reference
        run over (a prefix of the workload's occluded images)
    rounds : timed rounds of the main benchmarks (the minimum is reported)
    incremental_target : the ratio to the forward limit the incremental sweep should reach
        on the main workload (None: no target)
    fine_grid, fine_n : grid and N of the incremental engine's small-area benchmark
    captum_n, naive_n : N for captum (one attribute call per class and fill) and for the
        one-image-per-forward loop
    smoke : a tiny case for CI; its rows carry no targets
    trained : `build` returns trained weights, kept as they are (otherwise `workload_of`
        re-initialises them with `signal_preserving`)
    """

    id: str
    title: str
    build: Callable[[], nn.Module]
    shape: tuple[int, int, int]
    n: int
    grid: int
    fills: tuple[float, ...]
    batch_sizes: tuple[int, ...]
    scan_images: int
    rounds: int
    memory_formats: tuple[str, ...] = ("contiguous", "channels_last")
    incremental_target: float | None = None
    fine_grid: int = 12
    fine_n: int = 16
    captum_n: int = 32
    naive_n: int = 1
    smoke: bool = False
    trained: bool = False


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
    "VGG-11 1/8 width 3x224x224",
    vgg11_eighth,
    VGG_SHAPE,
    n=2,
    grid=14,
    fills=PAPER_FILLS,
    batch_sizes=(2, 4, 8, 16, 32, 64),
    scan_images=64,
    rounds=2,
    incremental_target=2.0,
    # One image: captum's 60 calls (10 classes x 6 fills) of 196 perturbations already take
    # about as long as the dense sweep of both images.
    captum_n=1,
)


def _vgg_smoke() -> nn.Sequential:
    return vgg((4, "M", 8, "M"), divisor=1, size=32, hidden=(16,), classes=10)


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

ARCHITECTURE_SHAPE = (3, 224, 224)
#: Two fills per region (black and mid-grey): enough to exercise the fill batching while
#: keeping a 14x14 sweep at 392 occluded images.
ARCHITECTURE_FILLS: tuple[float, ...] = (0.0, 0.5)


def architecture_case(
    case_id: str,
    title: str,
    build: Callable[[], nn.Module],
    target: float | None,
    trained: bool = False,
) -> Case:
    """A 224x224 case: N=1, 16x16 patches (14x14 grid) as the main workload, 2 fills."""
    return Case(
        case_id,
        f"{title} 3x224x224",
        build,
        ARCHITECTURE_SHAPE,
        n=1,
        grid=14,
        fills=ARCHITECTURE_FILLS,
        # Batch 1 never won on 2 cores at 224x224 (it leaves the convolutions too little
        # work to split across the threads).
        batch_sizes=(2, 4, 8, 16, 32),
        scan_images=32,
        rounds=2,
        incremental_target=target,
        trained=trained,
    )


def _architecture_smoke(case_id: str, title: str, build: Callable[[], nn.Module]) -> Case:
    """The same architecture at its tiny test size on 3x32x32 (8x8 patches): CI's check."""
    return Case(
        f"{case_id}-smoke",
        f"{title} 3x32x32 (smoke)",
        build,
        (3, 32, 32),
        n=1,
        grid=4,
        fills=ARCHITECTURE_FILLS,
        batch_sizes=(4, 16),
        scan_images=16,
        rounds=1,
        smoke=True,
    )


# The targets for the incremental engine at 16x16 patches, on 2 CPU cores (VGG-16:
# Krypton reported 5.4x for exact VGG-16 on a CPU); ConvNeXt-T has none.
ARCHITECTURES: tuple[Case, ...] = (
    architecture_case(
        "vgg16",
        "VGG-16 1/2 width",
        lambda: vgg(VGG16_LAYOUT, divisor=2, size=224, hidden=(2048, 2048), classes=1000),
        6.0,
    ),
    architecture_case("resnet18", "ResNet-18", lambda: ResNet18(width=64, classes=1000), 2.0),
    architecture_case(
        "mobilenetv2",
        "MobileNetV2 1.0",
        lambda: MobileNetV2(classes=1000, settings=MOBILENETV2_SETTINGS, stem=32, head=1280),
        1.5,
    ),
    architecture_case(
        "densenet121",
        "DenseNet-121 growth 16",
        lambda: DenseNet(growth=16, blocks=(6, 12, 24, 16), classes=1000),
        1.5,
    ),
    architecture_case(
        "convnext_t",
        "ConvNeXt-T 1/2 width",
        lambda: ConvNeXt(dims=(48, 96, 192, 384), depths=(3, 3, 9, 3), classes=1000),
        None,
    ),
)
ARCHITECTURE_SMOKES: tuple[Case, ...] = (
    _architecture_smoke("vgg16", "VGG-16 1/16 width", vgg),
    _architecture_smoke("resnet18", "ResNet-18 width 4", lambda: ResNet18(width=4)),
    _architecture_smoke("mobilenetv2", "MobileNetV2 tiny", MobileNetV2),
    _architecture_smoke("densenet121", "DenseNet tiny", DenseNet),
    _architecture_smoke("convnext_t", "ConvNeXt tiny", ConvNeXt),
)

_MODELS: dict[tuple[str, str], nn.Module] = {}
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
        if model_key not in _MODELS and case.trained:
            _MODELS[model_key] = case.build().to(device)
        if model_key not in _MODELS:
            channels, height, width = case.shape
            photo = photograph(height, width)
            photo = photo if channels == 3 else photo.mean(dim=1, keepdim=True)
            # The photograph and its mirror image set the BatchNorm statistics.
            _MODELS[model_key] = signal_preserving(
                case.build(), torch.cat([photo, photo.flip(-1)])
            ).to(device)
        name = f"{case.title}, N={n}, {grid}x{grid} grid x {len(fills)} fills"
        _WORKLOADS[key] = make_workload(
            name, _MODELS[model_key], case.shape, n, grid, fills, device
        )
    return _WORKLOADS[key]
