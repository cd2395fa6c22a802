"""Calibration of approximate sweeps on their first images, and the fidelity of what ran.

A drill-down with a target (``Refine(..., ssim=...)``) and a projective-field threshold
(``approximate=...``) both choose a setting on calibration images, the first images of the
sweep's first chunk:

1. their exact sweep is computed once (every window, no threshold);
2. a drill-down's ``top``: the smallest candidate (`Refine.candidate_tops`) whose drill-down,
   built from those exact outputs (a drill-down's computed windows are exact ones), reaches
   the drill-down's target against exact (`Fidelity.reached`: heat-map SSIM and R^2);
3. the threshold ``tau``: each candidate from the largest down is run for real, through the
   drill-down when there is one, and the smallest that still reaches the approximation's
   target is kept (none: the sweep runs without a threshold).

After the chunk has run, `Calibration.fidelity` compares the sweep's own outputs on the
calibration images with their exact sweep: what the result's ``fidelity`` reports is what ran.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .approximate import Approximate
from .engines.subsets import RegionRunner
from .fidelity import ExactReference, Fidelity
from .refine import RefinePlan
from .regions import Regions

__all__ = ["Calibration", "calibrate"]


@dataclass(frozen=True)
class Calibration:
    """What calibration chose, and the exact sweep it keeps to measure the sweep with.

    Attributes
    ----------
    reference : ExactReference
        The exact sweep of the k calibration images (on the CPU), with their heat maps.
    tau : float or None
        The threshold chosen (None: none reached the target, or none was asked for).
    target : float
        The target the result's fidelity is reported against: the approximation's when
        there is one, else the drill-down's.
    top : float or None
        The drill-down's fraction of refined cells (None: no drill-down).
    """

    reference: ExactReference
    tau: float | None
    target: float
    top: float | None

    @property
    def images(self) -> int:
        """How many images calibrated."""
        return self.reference.images

    def fidelity(self, occluded: Tensor) -> Fidelity:
        """The sweep's outputs on the calibration images against their exact sweep.

        occluded : Tensor, shape (n >= k, R, V, K), the first chunk's outputs
        """
        return self.reference.measure(
            occluded[: self.images].cpu(),
            1.0 if self.tau is None else self.tau,
            self.target,
            self.top,
        )


def calibrate(
    runner: RegionRunner,
    regions: Regions,
    images: Tensor,
    fill_images: Tensor,
    baseline: Tensor,
    drill: RefinePlan | None,
    approximate: Approximate | None,
) -> Calibration | None:
    """Choose a drill-down's top and a threshold on the first images of a chunk (see the
    module docstring); sets ``drill.top``. None when nothing is to be calibrated.

    images : (n, C, H, W) of the first chunk; fill_images : (V, n or 1, ...); baseline :
    (n, K) their unoccluded outputs
    """
    # (target, calibration images) of each setting to calibrate; the approximation's first.
    wanted = [] if approximate is None else [(approximate.ssim, approximate.calibration_images)]
    if drill is not None and drill.settings.ssim is not None:
        wanted.append((drill.settings.ssim, drill.settings.calibration_images))
    if not wanted:
        return None
    target = wanted[0][0]
    count = min(max(k for _, k in wanted), int(images.shape[0]))
    x = images[:count]
    fills = RegionRunner.images_of(fill_images, 0, count)
    base = baseline[:count].cpu()
    exact = runner.run(x, fills)[1].cpu()
    reference = ExactReference(regions, base, exact)

    def reaches(outputs: Tensor, goal: float) -> bool:
        return reference.measure(outputs.cpu(), 1.0, goal).reached

    if drill is not None and drill.settings.ssim is not None:
        goal = drill.settings.ssim
        tops = drill.settings.candidate_tops()
        # The last candidate, 1.0, computes every window: it is exact.
        drill.top = next(
            (t for t in tops[:-1] if reaches(drill.from_exact(base, exact, t), goal)),
            tops[-1],
        )
    tau = None
    if approximate is not None:
        for candidate in approximate.thresholds:
            if drill is not None:
                outputs = drill.run_chunk(runner, x, fills, base, candidate)[1]
            else:
                outputs = runner.run(x, fills, threshold=candidate)[1]
            if not reaches(outputs, approximate.ssim):
                break
            tau = candidate
    return Calibration(reference, tau, target, None if drill is None else drill.top)
