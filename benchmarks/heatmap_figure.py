"""Draw docs/img/vgg16-exact-vs-approximate.png: exact and approximate heat maps side by side.

The setting of test_heatmaps.py: VGG-16 at 1/2 width (random seeded weights, as in every
benchmark), one 3x224x224 image, 16x16 windows at stride 4 (2,809 positions), fill 0.0; the
exact incremental sweep against ``approximate=Approximate(ssim=0.9, calibration_images=1)``,
the class being the image's predicted one. The titles carry the measured fidelity. Run from
the project root (about two minutes on 2 CPU cores):

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

from models import ARCHITECTURES, workload_of  # noqa: E402

import occlusion_probe as op  # noqa: E402


def main(out: Path) -> None:
    torch.set_num_threads(2)
    case = next(c for c in ARCHITECTURES if c.id == "vgg16")
    work = workload_of(case, torch.device("cpu"), n=1)
    windows = op.sliding_windows(224, 224, window=16, stride=4)
    common = {"fills": 0.0, "progress": False}
    exact = op.sweep(work.model, work.images, windows, engine="incremental", **common)
    approx = op.sweep(
        work.model,
        work.images,
        windows,
        approximate=op.Approximate(ssim=0.9, calibration_images=1),
        **common,
    )
    cls = int(exact.predicted[0])
    figure = Figure(figsize=(10, 4.8), layout="constrained")
    left, right = figure.subplots(1, 2)
    op.plot.pixel_heatmap(exact, cls, work.images[0], image_index=0, ax=left)
    op.plot.pixel_heatmap(approx, cls, work.images[0], image_index=0, ax=right)
    left.set_title(f"exact (class {cls})")
    fidelity = approx.fidelity
    if fidelity is None:
        right.set_title("approximate: no threshold reached SSIM 0.9, exact outputs")
    else:
        right.set_title(
            f"approximate, tau={fidelity.tau:g}: SSIM {fidelity.ssim:.3f}, "
            f"Spearman {fidelity.spearman:.3f}"
        )
    figure.suptitle("VGG-16 (1/2 width, random weights), 16x16 windows at stride 4, fill 0")
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=90)
    print(out, approx.engine_note.split(";")[0])


if __name__ == "__main__":
    main(
        Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/img/vgg16-exact-vs-approximate.png")
    )
