"""The sweep's engine run on a subset of its regions, exactly or with a projective-field cap.

Drill-down sweeps (`occlusion_probe.Refine`) compute a coarse subset of the windows for all
images and then a different subset per image; approximate sweeps
(`occlusion_probe.Approximate`) run the incremental engine on plans whose boxes are capped.
`RegionRunner` serves both: it keeps the prepared incremental engine's graph (read once per
sweep) and plans each region at most once per threshold, and builds engines for subsets from
those plans (planning is cheap next to reading the graph); with the dense engine it runs the
subset's masks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..batching import BatchPlan
from ..model import CheckedForward
from .boxes import Box
from .dense import run_dense
from .incremental import IncrementalEngine
from .plan import RegionPlan, dense_traffic, plan_region

__all__ = ["RegionRunner"]

# Engines kept for subsets seen before (the coarse subset is run for every chunk).
_KEPT_ENGINES = 4


class RegionRunner:
    """Runs the sweep's engine on region subsets.

    Parameters
    ----------
    incremental : IncrementalEngine or None
        The engine prepared for all R regions, or None for the dense engine.
    masks : Tensor, shape (R, *spatial), bool, on the run device
    forward : CheckedForward
        The sweep's model call (dense engine, and the output rule of the incremental one).
    batches : BatchPlan
        The dense engine's batch sizes. The incremental engine computes its plan's measured
        best number of occluded images per call on the CPU (`IncrementalEngine.
        cpu_items_per_call`) when the batch size is "auto", and about four times the batch
        (at least that number) when it was given or on an accelerator.
    """

    def __init__(
        self,
        incremental: IncrementalEngine | None,
        masks: Tensor,
        forward: CheckedForward,
        batches: BatchPlan,
    ) -> None:
        self.incremental = incremental
        self.masks = masks
        self.forward = forward
        self.batches = batches
        self.channels_last: bool | None = None if incremental is None else incremental.channels_last
        #: The projective-field threshold of the sweep's runs (None: exact); set by calibration.
        self.threshold: float | None = None
        self._plans: dict[float | None, dict[int, RegionPlan]] = {}
        self._engines: dict[tuple[tuple[int, ...] | None, float | None], IncrementalEngine] = {}
        self._dense_elements: int | None = None

    @property
    def num_regions(self) -> int:
        return int(self.masks.shape[0])

    def _plan(self, region: int, threshold: float | None) -> RegionPlan:
        if self.incremental is None:
            raise RuntimeError("plans exist only for the incremental engine")
        plans = self._plans.setdefault(threshold, {})
        found = plans.get(region)
        if found is None:
            found = plan_region(self.incremental.graph, self.incremental.boxes[region], threshold)
            plans[region] = found
        return found

    def engine(
        self, positions: Sequence[int] | None = None, threshold: float | None = None
    ) -> IncrementalEngine:
        """The incremental engine for the regions at `positions` (None: all), its boxes
        capped at `threshold` (None: exact)."""
        base = self.incremental
        if base is None:
            raise RuntimeError("no incremental engine was prepared")
        if positions is None and threshold is None:
            return base
        key = (None if positions is None else tuple(positions), threshold)
        found = self._engines.get(key)
        if found is None:
            chosen = range(self.num_regions) if positions is None else positions
            boxes: list[Box | None] = [base.boxes[r] for r in chosen]
            plans = [self._plan(r, threshold) for r in chosen]
            if self._dense_elements is None:
                self._dense_elements = dense_traffic(base.graph)
            found = IncrementalEngine(
                base.graph, boxes, plans, base.dense_flops, self._dense_elements
            )
            if len(self._engines) >= _KEPT_ENGINES:
                self._engines.pop(next(iter(self._engines)))
            self._engines[key] = found
        return found

    def run(
        self,
        images: Tensor,
        fill_images: Tensor,
        positions: Sequence[int] | None = None,
        threshold: float | None = None,
        on_progress: Callable[[int], None] | None = None,
        *,
        unoccluded: Tensor | None = None,
    ) -> tuple[Tensor | None, Tensor]:
        """Outputs on the images occluded by the regions at `positions` (None: all).

        images : (n, C, *spatial); fill_images : (V, n or 1, C or 1, *(size or 1 per axis))
        unoccluded : (m, C, *spatial), images the dense engine runs in its blocks too (the
            incremental engine ignores them: it computes all n images unoccluded)
        returns : the unoccluded outputs the engine computed ((n, K) from the incremental
            engine; (m, K) on `unoccluded` or None from the dense one) and the occluded
            outputs (n, P, V, K), P = len(positions) or R
        """
        masks = self.masks if positions is None else self.masks[list(positions)]
        if self.incremental is None:
            if threshold is not None:
                raise RuntimeError("a projective-field threshold needs the incremental engine")
            return run_dense(
                functools.partial(self.forward, scratch=True),
                images,
                fill_images,
                masks,
                self.batches,
                self.forward.num_classes or 0,
                on_progress,
                unoccluded=unoccluded,
            )
        engine = self.engine(positions, threshold)
        clean, occluded = engine.run(
            images,
            fill_images,
            masks,
            self._items_per_call(engine, images.device),
            self.forward.finish,
            on_progress,
            channels_last=self.channels_last,
        )
        if self.channels_last is None:
            # The first engine timed both layouts; every later one uses its choice.
            self.channels_last = engine.channels_last
        return clean, occluded

    def _items_per_call(self, engine: IncrementalEngine, device: torch.device) -> int:
        """About how many occluded images one call of `engine` computes."""
        if device.type == "cpu" and self.batches.how != "given":
            # The dense trial's batch says little about the engine's smaller pieces: a
            # memory-bound plan slows down when four times it leaves the caches.
            return engine.cpu_items_per_call
        return max(self.batches.current.size * 4, engine.cpu_items_per_call)

    @staticmethod
    def images_of(fill_images: Tensor, start: int, stop: int) -> Tensor:
        """`fill_images` (V, n or 1, ...) for images [start, stop) of the chunk."""
        if fill_images.shape[1] == 1:
            return fill_images
        return fill_images[:, start:stop]


def empty_outputs(n: int, r: int, v: int, k: int, like: Tensor) -> Tensor:
    """An (n, R, V, K) tensor to be filled, in the dtype and on the device of `like`."""
    return torch.empty((n, r, v, k), dtype=like.dtype, device=like.device)
