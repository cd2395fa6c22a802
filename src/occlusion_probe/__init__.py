"""occlusion_probe: which parts of an image does a classifier rely on?

Occlude a grid of regions with a sweep of fill values, collect every class output, and
verify the finding by keeping only the chosen regions.

>>> import torch, occlusion_probe as op
>>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48 * 48, 7))
>>> result = op.sweep(model, torch.rand(4, 1, 48, 48), op.grid(48, 48), progress=False)
>>> tuple(result.occluded.shape)
(4, 16, 6, 7)
"""

from __future__ import annotations

from . import captum, fills, plot, stats
from .approximate import Approximate
from .curves import perturbation_curve
from .errors import (
    CheckpointError,
    EmptySelectionError,
    InputTypeError,
    InputValueError,
    OcclusionProbeError,
    OcclusionProbeWarning,
    RankMismatchError,
    ResultFileError,
)
from .fidelity import Fidelity
from .refine import Refine
from .regions import Regions, WindowGrid, grid, sliding_windows
from .results import (
    AucDifference,
    ClassMeanResult,
    ConfusionReport,
    PerturbationCurve,
    SweepResult,
    confusion_report,
)
from .sweep import DEFAULT_FILLS, sweep
from .tables import RegionValues
from .verify import keep_only

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_FILLS",
    "Approximate",
    "AucDifference",
    "CheckpointError",
    "ClassMeanResult",
    "ConfusionReport",
    "EmptySelectionError",
    "Fidelity",
    "InputTypeError",
    "InputValueError",
    "OcclusionProbeError",
    "OcclusionProbeWarning",
    "PerturbationCurve",
    "RankMismatchError",
    "Refine",
    "RegionValues",
    "Regions",
    "ResultFileError",
    "SweepResult",
    "WindowGrid",
    "captum",
    "confusion_report",
    "fills",
    "grid",
    "keep_only",
    "perturbation_curve",
    "plot",
    "sliding_windows",
    "stats",
    "sweep",
]
