"""The engine and batches of a checkpointed sweep, kept so that a resumed run repeats them.

``batch_size="auto"`` times candidates on the sweep's first blocks (batching.py), and the
batch size and memory format change the float rounding of the outputs (a few 1e-8 in
float32). A resumed run that timed its own trial could choose differently and compute its
chunks with other rounding than the chunks stored before. So once the trial has ended (or at
once, when there is none), the sweep records its `StoredPlan` in the checkpoint manifest, and
a resumed ``batch_size="auto"``, ``engine="auto"`` call uses that plan instead of choosing
again.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from .batching import BatchConfig
from .errors import OcclusionProbeWarning

__all__ = ["StoredPlan", "resumed_engine", "warn_if_plan_differs"]

_ENGINES = ("dense", "incremental")


@dataclass(frozen=True)
class StoredPlan:
    """What a checkpointed run chose: the engine (and why) and the dense batches.

    Attributes
    ----------
    engine : {"dense", "incremental"}
    engine_note : str
        The sentence that explained the engine choice.
    batch : BatchConfig
        Images per model call and memory format after the batch trial.

    Examples
    --------
    >>> plan = StoredPlan("dense", "dense engine requested", BatchConfig(16, True))
    >>> StoredPlan.from_json(plan.to_json()) == plan
    True
    """

    engine: str
    engine_note: str
    batch: BatchConfig

    def to_json(self) -> dict[str, Any]:
        """The plan as JSON values (the manifest's ``plan`` field)."""
        return {
            "engine": self.engine,
            "engine_note": self.engine_note,
            "batch_size": self.batch.size,
            "channels_last": self.batch.channels_last,
        }

    @classmethod
    def from_json(cls, data: object) -> StoredPlan:
        """The plan `to_json` wrote.

        Raises
        ------
        ValueError
            When `data` is not such a plan (the caller names the file).
        """
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        engine, note = data.get("engine"), data.get("engine_note")
        size, layout = data.get("batch_size"), data.get("channels_last")
        if engine not in _ENGINES or not isinstance(note, str):
            raise ValueError(f"engine {engine!r} is not one of {_ENGINES}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"batch_size {size!r} is not a positive int")
        if not isinstance(layout, bool):
            raise ValueError(f"channels_last {layout!r} is not true or false")
        return cls(str(engine), note, BatchConfig(size, layout))


def resumed_engine(engine: str, stored: StoredPlan | None) -> str:
    """The engine to request: the stored run's for ``engine="auto"``, else `engine`."""
    return stored.engine if stored is not None and engine == "auto" else engine


def warn_if_plan_differs(stored: StoredPlan, engine: str, batch_size: int | str) -> None:
    """Warn when a resumed call asks for another engine or batch size than the stored run
    used: its chunks then agree with the stored ones to float rounding only.

    Warns
    -----
    OcclusionProbeWarning
        Naming what differs, the stored choice and this call's.
    """
    differs = []
    if engine != "auto" and engine != stored.engine:
        differs.append(f"engine={engine!r} (the stored run used {stored.engine!r})")
    if batch_size != "auto" and stored.batch != BatchConfig(int(batch_size)):
        differs.append(
            f"batch_size={batch_size!r} (the stored run used {stored.batch.describe()} images "
            "per call)"
        )
    if differs:
        warnings.warn(
            f"checkpoint: this call asks for {' and '.join(differs)}; the chunks it computes "
            "agree with the stored ones to float rounding only, not bit for bit. Pass "
            'engine="auto" and batch_size="auto" (or the stored values) to repeat the stored run',
            OcclusionProbeWarning,
            stacklevel=3,
        )
