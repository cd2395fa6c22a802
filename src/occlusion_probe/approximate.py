"""Approximate sweeps that say how approximate they are: projective-field thresholding.

``sweep(..., approximate=Approximate(ssim=0.9))`` (or ``approximate=0.9``) runs the
incremental engine with Krypton's projective-field threshold (Nakandala et al., SIGMOD 2019):
at every node of the model the changed box is capped at a fraction ``tau`` of the map's
height and width (centred on the box, clipped to the map) and everything outside the cap is
taken from the unoccluded values. ``tau`` is chosen on a calibration subset (the first images
of the sweep, `occlusion_probe.calibration`): the exact outputs are computed there, then each
candidate ``tau`` from the largest down, and the smallest ``tau`` whose heat maps still reach
the target against the exact ones (SSIM and R^2, `Fidelity.reached`) is used for the
whole sweep. With a drill-down
(``refine=``) each candidate is tried with the drill-down, so the target holds for what
actually runs. The result carries what its own outputs on that subset measured against exact
(`occlusion_probe.fidelity.Fidelity`: heat-map SSIM, region-ranking Spearman, max abs
output error), and its ``engine_note`` says it is approximate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputTypeError, InputValueError, describe
from .fidelity import check_calibration_images, check_fraction

__all__ = ["DEFAULT_THRESHOLDS", "Approximate", "check_approximate"]

#: Candidate thresholds tau, tried from the largest down (Krypton tunes tau on a few images).
DEFAULT_THRESHOLDS: tuple[float, ...] = (0.8, 0.6, 0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1)


@dataclass(frozen=True)
class Approximate:
    """Settings of an approximate sweep (``sweep(..., approximate=...)``).

    Parameters
    ----------
    ssim : float
        Target fidelity: the mean SSIM of the calibration images' heat maps against the exact
        ones must reach it (Krypton's target is 0.9), and so must their mean R^2
        (`occlusion_probe.fidelity.Fidelity.reached`). In (0, 1].
    calibration_images : int
        How many of the first images calibrate tau (they are swept exactly once more).
    thresholds : tuple of float
        Candidate tau values in (0, 1), tried from the largest down; the search stops at the
        first that misses the target.

    Raises
    ------
    InputTypeError, InputValueError
        For a setting of the wrong type or out of range.

    Examples
    --------
    >>> Approximate(ssim=0.95, calibration_images=2).ssim
    0.95
    """

    ssim: float = 0.9
    calibration_images: int = 4
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS

    def __post_init__(self) -> None:
        object.__setattr__(self, "ssim", check_fraction("Approximate.ssim", self.ssim))
        object.__setattr__(
            self,
            "calibration_images",
            check_calibration_images("Approximate.calibration_images", self.calibration_images),
        )
        if isinstance(self.thresholds, (str, bytes)) or not hasattr(self.thresholds, "__iter__"):
            raise InputTypeError(
                "Approximate.thresholds: expected a sequence of floats in (0, 1), got "
                f"{describe(self.thresholds)}"
            )
        values = tuple(self.thresholds)
        bad = [
            t
            for t in values
            if isinstance(t, bool)
            or not isinstance(t, (int, float, np.floating))
            or not 0.0 < float(t) < 1.0
        ]
        if not values or bad:
            raise InputValueError(
                "Approximate.thresholds: expected at least one float in (0, 1), got "
                f"{values!r}" + (f" (bad: {bad!r})" if bad else "")
            )
        object.__setattr__(
            self, "thresholds", tuple(sorted({float(t) for t in values}, reverse=True))
        )


def check_approximate(value: object) -> Approximate | None:
    """`sweep`'s ``approximate`` argument as `Approximate` settings (None: exact).

    A number is the SSIM target with the default settings.

    Raises
    ------
    InputTypeError
        When `value` is neither None, a number nor an `Approximate`.
    InputValueError
        When the number is not in (0, 1].
    """
    if value is None or isinstance(value, Approximate):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise InputTypeError(
            "approximate: expected None, an SSIM target in (0, 1] or an Approximate, got "
            f"{describe(value)}"
        )
    if not 0.0 < float(value) <= 1.0:
        raise InputValueError(f"approximate: expected an SSIM target in (0, 1], got {value!r}")
    return Approximate(ssim=float(value))
