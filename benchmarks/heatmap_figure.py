"""Draw docs/img/vgg16-exact-vs-approximate.png: exact and approximate heat maps side by side.

The setting of test_heatmaps.py: VGG-16 at 1/2 width (random seeded He-initialised weights, as
in every benchmark), the benchmark's photograph at 3x224x224, 16x16 windows at stride 4 (2,809
positions), fill 0.0; the exact incremental sweep, ``approximate=Approximate(ssim=0.9,
calibration_images=1)`` and the drill-down ``refine=Refine(coarse_stride=16, top=0.25)``, the
class being the image's predicted one. The titles carry the approximation's own fidelity
and the drill-down's SSIM against exact (`measure_fidelity`). Run from the project root
(a few minutes on 2 CPU cores):

    python benchmarks/heatmap_figure.py [output.png]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from matplotlib.figure import Figure

sys.path[:0] = [
    str(Path(__file__).resolve().parent),
    str(Path(__file__).resolve().parents[1] / "tests"),
]

from models import ARCHITECTURES, photograph, workload_of  # noqa: E402

import occlusion_probe as op  # noqa: E402
from occlusion_probe.fidelity import measure_fidelity  # noqa: E402


def main(out: Path) -> None:
    torch.set_num_threads(2)
    case = next(c for c in ARCHITECTURES if c.id == "vgg16")
    model = workload_of(case, torch.device("cpu"), n=1).model
    image = photograph(224, 224)
    windows = op.sliding_windows(224, 224, window=16, stride=4)
    common = {"fills": 0.0, "progress": False}
    exact = op.sweep(model, image, windows, engine="incremental", **common)
    approx = op.sweep(
        model, image, windows, approximate=op.Approximate(ssim=0.9, calibration_images=1), **common
    )
    drill = op.sweep(model, image, windows, refine=op.Refine(coarse_stride=16, top=0.25), **common)
    cls = int(exact.predicted[0])
    figure = Figure(figsize=(15, 5.4), layout="constrained")
    panels = figure.subplots(1, 3)
    for ax, result in zip(panels, (exact, approx, drill), strict=True):
        op.plot.pixel_heatmap(result, cls, image[0], image_index=0, ax=ax)
    panels[0].set_title(f"exact\n(class {cls})")
    fidelity = approx.fidelity
    panels[1].set_title(
        "approximate: no threshold reached SSIM 0.9, exact outputs"
        if fidelity is None
        else f"approximate, tau={fidelity.tau:g}\nSSIM {fidelity.ssim:.3f}, "
        f"Spearman {fidelity.spearman:.3f} against exact"
    )
    against = measure_fidelity(windows, exact.baseline, exact.occluded, drill.occluded, 1.0, 0.9)
    assert drill.computed is not None
    panels[2].set_title(
        f"drill-down, coarse 16, top 0.25 ({float(drill.computed.double().mean()):.0%} "
        f"computed)\nSSIM {against.ssim:.3f}, Spearman {against.spearman:.3f} against exact"
    )
    print(approx.engine_note.split("; incremental")[0])
    figure.suptitle(
        "VGG-16 (1/2 width, random He-initialised weights), 16x16 windows at stride 4, fill 0"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=80)
    print(out)


if __name__ == "__main__":
    main(
        Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/img/vgg16-exact-vs-approximate.png")
    )
