"""What one chunk of a sweep computes: the engine object `sweep` loops over.

`ChunkEngine` is made once per sweep from what `sweep` chose (the dense or the prepared
incremental engine, the batch plan, a drill-down, an approximation) and run once per chunk of
images. Each run returns the chunk's unoccluded and occluded outputs, and for a drill-down
which windows were computed, and reports progress in occluded images; `note` says what ran.
`sweep` itself stays the loop chunk -> engine -> collector -> checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .approximate import Approximate
from .batching import BatchConfig, BatchPlan
from .calibration import Calibration, calibrate
from .engines.incremental import IncrementalEngine
from .engines.subsets import RegionRunner
from .errors import InputValueError
from .fidelity import Fidelity
from .model import CheckedForward
from .refine import RefinePlan
from .regions import Regions

__all__ = ["ChunkEngine", "ChunkOutputs", "check_same_as_model", "forward_in_batches"]


@dataclass(frozen=True)
class ChunkOutputs:
    """The outputs of one chunk of n images.

    baseline : Tensor, shape (n, K), the model's recorded outputs on the unoccluded images
    occluded : Tensor, shape (n, R, V, K), on every occluded image
    computed : Tensor, shape (n, R), bool, on the CPU: which windows a drill-down computed
        (the others hold their coarse cell's outputs); None when every one was computed
    """

    baseline: Tensor
    occluded: Tensor
    computed: Tensor | None


def forward_in_batches(forward: CheckedForward, images: Tensor, config: BatchConfig) -> Tensor:
    """Recorded outputs (n, K) of the model on `images`, `config.size` per call."""
    parts = [
        forward(config.prepare(images[i : i + config.size]))
        for i in range(0, images.shape[0], config.size)
    ]
    return torch.cat(parts)


def check_same_as_model(graph_outputs: Tensor, model_outputs: Tensor, dtype: torch.dtype) -> None:
    """Refuse to go on when the exported graph computes something else than the model.

    The incremental engine runs the graph torch.export read, not the model's own forward; on
    the unoccluded images both are computed, and their recorded outputs must agree to the
    rounding of `dtype` (the decomposed graph may order some sums differently).
    """
    got, want = graph_outputs.double(), model_outputs.double()
    error = float((got - want).abs().max()) if got.numel() else 0.0
    relative = max(1e-4, 2 * torch.finfo(dtype).eps)
    scale = relative * (1.0 + float(want.abs().max())) if want.numel() else 0.0
    if got.shape != want.shape or error > scale:
        raise InputValueError(
            "model: the graph torch.export read from the model computes different outputs "
            f"than the model's own forward (max difference {error:.3g}); the model has state "
            'that export does not see. Use engine="dense".'
        )


def _joined(known: Tensor | None, computed: Tensor | None) -> Tensor:
    """Outputs of the first images (`known`, possibly none) followed by the rest's."""
    parts = [part for part in (known, computed) if part is not None and part.shape[0] > 0]
    if not parts:
        raise RuntimeError("no unoccluded outputs: a chunk holds at least one image")
    return parts[0] if len(parts) == 1 else torch.cat(parts)


class ChunkEngine:
    """The sweep's engine, prepared once and run per chunk.

    Parameters
    ----------
    incremental : IncrementalEngine or None
        The prepared incremental engine, or None for the dense engine.
    choice : str
        `choose_engine`'s sentence on why this engine runs.
    masks : Tensor, shape (R, H, W), bool, on the run device
    forward : CheckedForward
        The sweep's model call (dense blocks, unoccluded outputs, the output rule).
    batches : BatchPlan
        The dense engine's batches (the incremental engine's calls are sized from them only
        when the batch size was given, or on an accelerator).
    dtype : torch.dtype
        The floating dtype the model gets its images in.
    regions : Regions
        The sweep's regions (an approximation measures its fidelity on them).
    drill : RefinePlan, optional
        Coarse windows first, then the fine ones around each image's top coarse windows (a
        target chooses how many on the first chunk's first images).
    approximate : Approximate, optional
        Cap the changed boxes at a threshold chosen on the first chunk's first images.
    """

    def __init__(
        self,
        incremental: IncrementalEngine | None,
        choice: str,
        masks: Tensor,
        forward: CheckedForward,
        batches: BatchPlan,
        dtype: torch.dtype,
        regions: Regions,
        drill: RefinePlan | None = None,
        approximate: Approximate | None = None,
    ) -> None:
        self.incremental = incremental
        self.choice = choice
        self.runner = RegionRunner(incremental, masks, forward, batches)
        self.forward = forward
        self.batches = batches
        self.dtype = dtype
        self.regions = regions
        self.drill = drill
        self.approximate = approximate
        #: What calibration chose on the first chunk (None: nothing to calibrate, or not yet).
        self.calibration: Calibration | None = None
        #: The first chunk's outputs on the calibration images against exact (None: exact,
        #: or a drill-down without a target).
        self.fidelity: Fidelity | None = None
        self._calibrated = approximate is None and (drill is None or drill.settings.ssim is None)

    @property
    def name(self) -> str:
        """``"dense"`` or ``"incremental"``."""
        return "dense" if self.incremental is None else "incremental"

    def run(
        self,
        images: Tensor,
        fill_images: Tensor,
        on_progress: Callable[[int], None] | None = None,
    ) -> ChunkOutputs:
        """The outputs of one chunk.

        images : Tensor, shape (n, C, H, W), in the model's dtype on the run device
        fill_images : Tensor, shape (V, n or 1, C or 1, H or 1, W or 1)
        on_progress : called with the number of occluded images done, as they are done
        """
        computed: Tensor | None = None
        # The first chunk's first images ran in the model's first (checking) call.
        known = self.forward.known_outputs(images)
        rest = images if known is None else images[known.shape[0] :]
        baseline: Tensor | None = None
        calibrating = not self._calibrated
        if calibrating:
            self._calibrated = True
            # The unoccluded outputs pick each calibration image's class, so they come first.
            baseline = _joined(known, self._baseline(rest))
            self.calibration = calibrate(
                self.runner, self.regions, images, fill_images, baseline, self.drill,
                self.approximate,
            )  # fmt: skip
            self.runner.threshold = None if self.calibration is None else self.calibration.tau
        if self.drill is not None:
            # The unoccluded outputs rank the coarse windows, so they come first.
            if baseline is None:
                baseline = _joined(known, self._baseline(rest))
            clean, occluded, computed = self.drill.run_chunk(
                self.runner, images, fill_images, baseline, self.runner.threshold, on_progress
            )
        else:
            clean, occluded = self.runner.run(
                images,
                fill_images,
                threshold=self.runner.threshold,
                on_progress=on_progress,
                unoccluded=rest if self.incremental is None else None,
            )
            if self.incremental is None and clean is not None:
                # The dense engine ran the model's own forward on them in its blocks.
                return ChunkOutputs(_joined(known, clean), occluded, None)
            if baseline is None:
                # After the occluded blocks, so that it runs in the config they ended on.
                baseline = _joined(known, self._baseline(rest))
        if clean is not None:
            check_same_as_model(clean, baseline, self.dtype)
        calibration = self.calibration
        if calibrating and calibration is not None:
            # Without a drill-down and a threshold the sweep ran exact: nothing to measure.
            if self.drill is not None or calibration.tau is not None:
                self.fidelity = calibration.fidelity(occluded)
        return ChunkOutputs(baseline, occluded, computed)

    def run_layers(
        self,
        images: Tensor,
        layers: Sequence[Sequence[int]],
        layer_fill_images: Callable[[Sequence[int]], Tensor],
        on_progress: Callable[[int], None] | None = None,
    ) -> ChunkOutputs:
        """The outputs of one chunk, the regions run layer by layer.

        Region-aware fills differ per region, so each layer of pairwise disjoint regions
        gets its own fill images (`occlusion_probe.fills.layer_fills`): entry (i, r, v) is
        the model on ``torch.where(masks[r], layer_fill_images(layer)[v, i], images[i])``.

        images : Tensor, shape (n, C, H, W), in the model's dtype on the run device
        layers : region positions, every region in exactly one layer
        layer_fill_images : a layer's fill images, shape (V, n or 1, C or 1, H or 1, W or 1)
        """
        if self.drill is not None or self.approximate is not None:
            raise RuntimeError("drill-downs and approximations run without layers")
        known = self.forward.known_outputs(images)
        rest = images if known is None else images[known.shape[0] :]
        occluded: Tensor | None = None
        checked = False
        single = len(layers) == 1
        for layer in layers:
            fill_images = layer_fill_images(layer)
            clean, part = self.runner.run(
                images, fill_images, None if single else list(layer), on_progress=on_progress
            )
            if occluded is None:
                occluded = torch.empty(
                    (part.shape[0], self.runner.num_regions, *part.shape[2:]),
                    dtype=part.dtype,
                    device=part.device,
                )
            occluded[:, list(layer)] = part
            if clean is not None and not checked:
                check_same_as_model(clean, _joined(known, self._baseline(rest)), self.dtype)
                checked = True
        if occluded is None:
            raise RuntimeError("no layers: a sweep has at least one region")
        return ChunkOutputs(_joined(known, self._baseline(rest)), occluded, None)

    def _baseline(self, images: Tensor) -> Tensor | None:
        """The model's recorded outputs (n, K) on `images`, in the current batch config;
        None for no images."""
        if images.shape[0] == 0:
            return None
        return forward_in_batches(self.forward, images, self.batches.current)

    @property
    def note(self) -> str:
        """The sweep's ``engine_note``: what ran, why, how it was batched and laid out."""
        # The incremental engine re-plans its groups on its first run: say what ran.
        note = self.choice if self.incremental is None else self.incremental.note
        fidelity, calibration = self.fidelity, self.calibration
        clauses = []
        if self.approximate is not None and (calibration is None or calibration.tau is None):
            clauses.append(
                "approximate requested, but no threshold reached heat-map SSIM and R^2 "
                f"{self.approximate.ssim:g} on the calibration images"
                + (": EXACT outputs" if self.drill is None else ", so none was applied")
            )
        if fidelity is not None:
            clauses.append(fidelity.describe())
            if fidelity.tau < 1.0:
                capped = self.runner.engine(None, fidelity.tau)
                clauses.append(f"FLOP bound of the capped plan {capped.flop_bound:.2f}x over dense")
        if clauses:
            note = f"{'; '.join(clauses)}; {note}"
        if self.drill is not None:
            note = f"{self.drill.note}; {note}"
        return f"{note}; {self._layout_note()}"

    def _layout_note(self) -> str:
        if self.incremental is None:
            return self.batches.note
        if self.drill is None and self.approximate is None:
            return self.incremental.layout_note
        layout = self.runner.channels_last
        if layout is None:
            return "maps in the images' layout"
        return f"maps {'channels-last' if layout else 'contiguous (NCHW)'}"
