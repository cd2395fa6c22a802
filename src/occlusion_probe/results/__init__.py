"""The results of sweeps, verifications and perturbation curves, and their file format.

One module each: `readings` (the reading API `SweepResult` and `ClassMeanResult` share, and
their one save / load path), `sweep_result` (`SweepResult`), `class_mean`
(`ClassMeanResult`), `curve` (`PerturbationCurve`, `AucDifference`), `confusion`
(`ConfusionReport`, `confusion_report`) and `file` (the checksummed ``.npz`` format).
Every public name is also re-exported from `occlusion_probe` itself.
"""

from __future__ import annotations

from .class_mean import ClassMeanResult
from .confusion import ConfusionReport, confusion_report
from .curve import AucDifference, PerturbationCurve
from .readings import ClassReadings, ordinary_tensor
from .sweep_result import SweepResult

__all__ = [
    "AucDifference",
    "ClassMeanResult",
    "ClassReadings",
    "ConfusionReport",
    "PerturbationCurve",
    "SweepResult",
    "confusion_report",
    "ordinary_tensor",
]
