"""Draw the heat-map figures of docs/performance.md: exact and approximate heat maps side by side.

``python benchmarks/heatmap_figure.py random [output.png]`` draws
docs/img/vgg16-exact-vs-approximate.png:

The setting of test_heatmaps.py: VGG-16 at 1/2 width (random seeded He-initialised weights, as
in every benchmark), the benchmark's photograph at 3x224x224, 16x16 windows at stride 4 (2,809
positions), fill 0.0; the exact incremental sweep, ``approximate=Approximate(ssim=0.9,
calibration_images=1)`` and the drill-down ``refine=Refine(coarse_stride=16, top=0.25)``, the
class being the image's predicted one. The titles carry the approximation's own fidelity
and the drill-down's SSIM against exact (`measure_fidelity`). Run from the project root
(a few minutes on 2 CPU cores).

``python benchmarks/heatmap_figure.py trained [output.png]`` draws
docs/img/trained-vgg16-drill-down.png: the trained VGG-16 of trained.py (weights cached by
the benchmark, or trained now in about five minutes) on the benchmark's two scenes, the
drill-down for SSIM 0.9 ``Refine(coarse_stride=32, top=0.02, ssim=0.9, calibration_images=1)``
alone and with ``approximate=Approximate(ssim=0.9, calibration_images=1)``, both chosen on the
first scene; the panels show the second, held-out scene, with its SSIM against exact.
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
from trained import scenes, trained_vgg16  # noqa: E402

import occlusion_probe as op  # noqa: E402
from occlusion_probe.fidelity import measure_fidelity  # noqa: E402


def random_weights(out: Path) -> None:
    """The random-weight VGG-16 on the photograph: exact, approximate, drill-down."""
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
        "approximate: no threshold reached the target 0.9, exact outputs"
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
    _save(figure, out)


def trained(out: Path) -> None:
    """The trained VGG-16 on the held-out scene: exact, drill-down and drill-down with a
    threshold, both chosen on the first scene."""
    model = trained_vgg16().model
    images, _ = scenes()
    windows = op.sliding_windows(224, 224, window=16, stride=4)
    common = {"fills": 0.0, "progress": False}
    refine = op.Refine(coarse_stride=32, top=0.02, ssim=0.9, calibration_images=1)
    exact = op.sweep(model, images, windows, engine="incremental", **common)
    drill = op.sweep(model, images, windows, refine=refine, **common)
    both = op.sweep(
        model,
        images,
        windows,
        refine=refine,
        approximate=op.Approximate(ssim=0.9, calibration_images=1),
        **common,
    )
    held_out = 1
    cls = int(exact.predicted[held_out])
    figure = Figure(figsize=(15, 5.4), layout="constrained")
    panels = figure.subplots(1, 3)
    for ax, result in zip(panels, (exact, drill, both), strict=True):
        op.plot.pixel_heatmap(result, cls, images[held_out], image_index=held_out, ax=ax)
    panels[0].set_title(f"exact\n(class {cls})")
    for ax, result, title in (
        (panels[1], drill, "drill-down"),
        (panels[2], both, "drill-down + threshold"),
    ):
        fidelity, computed = result.fidelity, result.computed
        assert fidelity is not None and computed is not None
        against = measure_fidelity(
            windows,
            exact.baseline[held_out:],
            exact.occluded[held_out:],
            result.occluded[held_out:],
            1.0,
            0.9,
        )
        ax.set_title(
            f"{title}: top {fidelity.top:g}, tau {fidelity.tau:g}\n(chosen on scene 1), "
            f"{float(computed[held_out].double().mean()):.1%} computed\n"
            f"SSIM {against.ssim:.3f}, R$^2$ {against.r2:.3f} against exact"
        )
        print(f"{title}, held-out scene: {against.describe()}")
    figure.suptitle(
        "VGG-16 (1/2 width, max-pooled, trained on shapes), held-out scene 2, "
        "16x16 windows at stride 4, fill 0"
    )
    _save(figure, out)


def _save(figure: Figure, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=80)
    print(out)


FIGURES = {
    "random": (random_weights, Path("docs/img/vgg16-exact-vs-approximate.png")),
    "trained": (trained, Path("docs/img/trained-vgg16-drill-down.png")),
}

if __name__ == "__main__":
    torch.set_num_threads(2)
    draw, default = FIGURES[sys.argv[1] if len(sys.argv) > 1 else "random"]
    draw(Path(sys.argv[2]) if len(sys.argv) > 2 else default)
