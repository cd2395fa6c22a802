"""Against the peer a user would pick instead: MONAI's ``OcclusionSensitivity`` in 2D.

The workload is MONAI's own small-CNN setting as the paper uses it: the paper CNN
(`models.paper_cnn`, 1x48x48, 7 classes), 16 images, a 4x4 grid (12x12 windows, no overlap)
and 6 fills (0.0, 0.2, ..., 1.0), softmax outputs. MONAI takes one image and one fill per
call (``OcclusionSensitivity(model, mask_size=12, overlap=0.0, mode=fill, activate=softmax)``,
its other settings at their defaults), so it runs 16 x 6 calls; `occlusion_probe.sweep`
runs once with its defaults (``engine="auto"``, ``batch_size="auto"``). Rows:

- ``monai``: the 96 calls;
- ``sweep, first call``: a sweep of a model the process has not swept before (a fresh copy
  per round: nothing kept from earlier rounds but what a process learns, the export setup
  and the measured seconds per op);
- ``sweep, later calls``: the same model swept again (the engine ``auto`` chose is kept);
- ``forward limit``: plain forwards of the 1,536 prebuilt occluded images at the best batch
  size of a scan (no engine could beat it without recomputing less).

Outputs are asserted equal (MONAI's map holds, per pixel, the occluded output of the window
covering it). Each row's ratio is MONAI's time over the row's, both minima over rounds of
this run. Run ``pytest benchmarks/test_peers.py --benchmark-only -s
--benchmark-json benchmarks/results/peers.json``; CI runs ``-k smoke``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import pytest
import torch
from models import paper_cnn
from torch import Tensor, nn

import occlusion_probe as op

FILLS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
GROUP = "MONAI OcclusionSensitivity setting: paper CNN 1x48x48, N=16, 4x4 grid x 6 fills"
_MONAI_SECONDS: dict[str, float] = {}


def _softmax(outputs: Tensor) -> Tensor:
    # MONAI's activate=True applies a sigmoid to the outputs of one-channel images (it
    # counts the input's channels): the softmax the sweep records is given explicitly.
    return torch.softmax(outputs, dim=1)


def monai_maps(model: nn.Module, images: Tensor, mask: int) -> Tensor:
    """(N, V, K, H, W): MONAI's occlusion maps, one call per image and fill."""
    visualize = pytest.importorskip("monai.visualize")
    maps = []
    for image in images:
        per_fill = []
        for fill in FILLS:
            method = visualize.OcclusionSensitivity(
                model, mask_size=mask, overlap=0.0, mode=fill, activate=_softmax, verbose=False
            )
            with torch.no_grad():
                per_fill.append(method(image[None])[0][0].as_tensor())
        maps.append(torch.stack(per_fill))
    return torch.stack(maps)


def check_equal(result: op.SweepResult, maps: Tensor, regions: op.Regions) -> None:
    """MONAI's map at each pixel is the occluded output of the window covering it."""
    label = regions.label_map() - 1  # region position of each pixel
    ours = result.occluded[:, label]  # (N, H, W, V, K)
    torch.testing.assert_close(ours.permute(0, 3, 4, 1, 2), maps, rtol=0, atol=2e-5)


def best_of(run: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return min(times)


def timed(
    benchmark: object,
    run: Callable[[], object],
    rounds: int,
    setup: Callable[[], None] | None = None,
) -> float:
    """pytest-benchmark's minimum over `rounds` of `run` (`setup` untimed before each)."""
    benchmark.pedantic(run, setup=setup, rounds=rounds, iterations=1)  # type: ignore[attr-defined]
    return float(benchmark.stats.stats.min)  # type: ignore[attr-defined]


def prebuilt(images: Tensor, regions: op.Regions) -> Tensor:
    """Every occluded image of the sweep, in its (image, region, fill) order."""
    return torch.stack(
        [torch.where(mask, torch.tensor(fill), image) for image in images for mask in regions.masks for fill in FILLS]
    )  # fmt: skip


def best_batch(model: nn.Module, images: Tensor, regions: op.Regions) -> int:
    """The batch size of plain forwards over the prebuilt images that is fastest here."""
    occluded = prebuilt(images, regions)
    timings = {}
    with torch.inference_mode():
        for size in (64, 256, 1024, occluded.shape[0]):
            chunks = occluded.split(size)
            timings[size] = best_of(lambda c=chunks: [model(x) for x in c], 2)
    return min(timings, key=timings.__getitem__)


def record(benchmark: object, method: str, seconds: float, images: int, note: str = "") -> None:
    monai = _MONAI_SECONDS.get("monai")
    info = {
        "group": GROUP,
        "method": method,
        "images": images,
        "seconds": seconds,
        "images_per_s": images / seconds,
        "ratio": (monai / seconds) if monai else 1.0,
        "reference": "MONAI's time over this row's",
        "note": note,
    }
    benchmark.extra_info.update(info)  # type: ignore[attr-defined]
    print(f"\n{method}: {seconds:.3f} s, {info['ratio']:.2f}x MONAI {note}")


def workload(n: int, size: int) -> tuple[nn.Module, Tensor, op.Regions]:
    torch.manual_seed(0)
    model = paper_cnn().eval() if size == 48 else _tiny(size)
    images = torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(1))
    return model, images, op.grid(size, size, 4, 4)


def _tiny(size: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(4 * (size // 2) ** 2, 7),
    ).eval()  # fmt: skip


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")
@pytest.mark.parametrize(
    "method", ["monai", "sweep, first call", "sweep, later calls", "forward limit"]
)
def test_monai_2d(benchmark: object, method: str) -> None:
    model, images, regions = workload(16, 48)
    rounds = 3
    items = images.shape[0] * len(regions) * len(FILLS)
    if method == "monai":
        maps = monai_maps(model, images, 12)
        check_equal(op.sweep(model, images, regions, fills=FILLS, progress=False), maps, regions)
        seconds = timed(benchmark, lambda: monai_maps(model, images, 12), rounds)
        _MONAI_SECONDS["monai"] = seconds
        record(benchmark, method, seconds, items)
    elif method == "sweep, first call":
        fresh: list[nn.Module] = []

        def setup() -> None:
            fresh[:] = [copy.deepcopy(model)]

        notes: list[str] = []

        def run() -> None:
            notes[:] = [
                op.sweep(fresh[0], images, regions, fills=FILLS, progress=False).engine_note
            ]

        seconds = timed(benchmark, run, rounds, setup)
        record(benchmark, method, seconds, items, notes[0][:160])
    elif method == "sweep, later calls":
        mine = copy.deepcopy(model)
        for _ in range(3):  # as a user calls it: auto may read the model on a later call
            op.sweep(mine, images, regions, fills=FILLS, progress=False)
        notes = []

        def again() -> None:
            notes[:] = [op.sweep(mine, images, regions, fills=FILLS, progress=False).engine_note]

        seconds = timed(benchmark, again, rounds)
        record(benchmark, method, seconds, items, notes[0][:160])
    else:
        size = best_batch(model, images, regions)
        batches = prebuilt(images, regions).split(size)

        def forwards() -> None:
            with torch.inference_mode():
                for batch in batches:
                    model(batch)

        seconds = timed(benchmark, forwards, rounds)
        record(benchmark, method, seconds, items, f"batch {size}")


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")
def test_smoke_monai_2d() -> None:
    model, images, regions = workload(2, 16)
    maps = monai_maps(model, images, 4)
    check_equal(op.sweep(model, images, regions, fills=FILLS, progress=False), maps, regions)
