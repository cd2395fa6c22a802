"""SweepResult: every class output of every occluded image, and what to read from it.

The readings it shares with `ClassMeanResult` live in `ClassReadings`
(`occlusion_probe.results.readings`), its file format in `occlusion_probe.results.file`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from ..errors import InputTypeError, InputValueError, describe
from ..fidelity import Fidelity
from ..regions import Regions
from ..selection import (
    check_bool,
    check_class_names,
    class_index,
    fill_position,
    int_in_range,
)
from ..stats import bootstrap_bands, significance
from ..tables import RegionValues, optional_import
from .combine import concatenate_sweeps
from .outputs import check_outputs_and_labels
from .readings import ClassReadings, ordinary_tensor
from .summary import class_summary, names_summary, tensor_summary

if TYPE_CHECKING:
    from ..stats import SignificanceTable

__all__ = ["SweepResult"]


@dataclass(frozen=True, eq=False)
class SweepResult(ClassReadings):
    """All class outputs of a sweep over images x regions x fills.

    Reading methods (`class_curves`, `mean_drop`, `ranking`, ...) are shared with
    `ClassMeanResult`; see `ClassReadings` for their conventions.

    Attributes
    ----------
    baseline : Tensor, shape (N, K)
        Output of each unoccluded image (after the ``output`` transform, e.g. softmax).
    occluded : Tensor, shape (N, R, V, K)
        ``occluded[n, r, v, k]``: output k of image n with region r set to fill v.
    labels : Tensor, shape (N,), int64, or None
        True classes, when given to `sweep`.
    regions : Regions
        The R regions, in the order of the R axis.
    fill_labels : tuple of str, length V
        A readable name of each fill (``"0.2"`` for a number, ``"tensor"``, a callable's name).
    class_names : tuple of str or None
        The K distinct class names given to `sweep`, if any.
    image_shape : tuple of int
        Shape of one image as given to `sweep`: (C, *spatial), or (*spatial) for images given
        without their channel axis.
    output : str
        ``"softmax"``, ``"logits"`` or the name of the callable applied to the model output.
    engine : str
        The engine that computed ``occluded``: ``"dense"`` or ``"incremental"``.
    engine_note : str
        Why that engine was used (e.g. why ``engine="auto"`` fell back to dense); it says
        so when the outputs are approximate or partly filled in.
    computed : Tensor, shape (N, R), bool, or None
        With ``sweep(..., refine=...)``: True where ``occluded[n, r]`` was computed, False
        where it was filled in from the coarse pass (see `occlusion_probe.Refine`). None
        when every position was computed.
    fidelity : Fidelity or None
        With ``sweep(..., approximate=...)``: what the approximation measured against exact
        on its calibration images. None for exact results.

    Examples
    --------
    >>> import torch, occlusion_probe as op
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    >>> result = op.sweep(model, torch.rand(5, 1, 8, 8), op.grid(8, 8, 2, 2),
    ...                   labels=torch.tensor([0, 1, 2, 0, 1]), progress=False)
    >>> tuple(result.occluded.shape), tuple(result.class_curves(0, correct_only=False).shape)
    ((5, 4, 6, 3), (4, 6))
    """

    baseline: Tensor
    occluded: Tensor
    labels: Tensor | None
    regions: Regions
    fill_labels: tuple[str, ...]
    class_names: tuple[str, ...] | None = None
    image_shape: tuple[int, ...] = ()
    output: str = "softmax"
    engine: str = "dense"
    engine_note: str = ""
    computed: Tensor | None = None
    fidelity: Fidelity | None = None

    file_kind: ClassVar[str] = "SweepResult"

    def __post_init__(self) -> None:
        n, k = self.baseline.shape
        expected = (n, len(self.regions), len(self.fill_labels), k)
        if tuple(self.occluded.shape) != expected:
            raise InputValueError(
                f"occluded: expected shape {expected} (N, R, V, K), got {tuple(self.occluded.shape)}"
            )
        if self.labels is not None and tuple(self.labels.shape) != (n,):
            raise InputValueError(f"labels: expected shape ({n},), got {tuple(self.labels.shape)}")
        object.__setattr__(self, "class_names", check_class_names(self.class_names, k))
        check_outputs_and_labels(self.baseline, self.occluded, self.labels, k)
        if self.computed is not None and (
            not isinstance(self.computed, Tensor)
            or self.computed.dtype != torch.bool
            or tuple(self.computed.shape) != (n, len(self.regions))
        ):
            raise InputValueError(
                f"computed: expected None or a bool tensor of shape ({n}, {len(self.regions)}) "
                f"(N, R), got {describe(self.computed)}"
            )
        if self.fidelity is not None and not isinstance(self.fidelity, Fidelity):
            raise InputTypeError(
                f"fidelity: expected None or a Fidelity, got {describe(self.fidelity)}"
            )
        for name in ("baseline", "occluded", "labels", "computed"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, ordinary_tensor(value))

    def __repr__(self) -> str:
        n, r, v, k = self.occluded.shape
        labels = "no labels" if self.labels is None else "labels"
        extras = []
        if self.computed is not None:
            extras.append(f"computed {int(self.computed.sum())} of {self.computed.numel()}")
        if self.fidelity is not None:
            extras.append("approximate")
        return (
            f"SweepResult(N={n} images, R={r} {self.regions!r}, V={v} fills "
            f"({names_summary(self.fill_labels)}), {class_summary(k, self.class_names)}, "
            f"{labels}, output={self.output!r}, engine={self.engine!r}, "
            f"{tensor_summary('occluded', self.occluded)}"
            + "".join(f", {extra}" for extra in extras)
            + ")"
        )

    # -- sizes and simple views ---------------------------------------------------------------
    @property
    def num_images(self) -> int:
        """N, the number of images swept."""
        return int(self.baseline.shape[0])

    @property
    def num_classes(self) -> int:
        """K, the number of class outputs per image."""
        return int(self.baseline.shape[1])

    @property
    def predicted(self) -> Tensor:
        """Predicted class of each unoccluded image: Tensor, shape (N,), int64."""
        return self.baseline.argmax(dim=1)

    @property
    def correct(self) -> Tensor:
        """Whether each unoccluded image is classified correctly: Tensor, shape (N,), bool.

        Raises
        ------
        InputValueError
            When the result has no labels.
        """
        if self.labels is None:
            raise InputValueError(
                "correct: this result has no labels; pass labels= to sweep to know which images are correct"
            )
        return self.predicted == self.labels

    @property
    def delta(self) -> Tensor:
        """``baseline - occluded``: Tensor, shape (N, R, V, K).

        Positive where the occlusion lowered the output.
        """
        return self.baseline[:, None, None, :] - self.occluded

    # -- selections ---------------------------------------------------------------------------
    def selection(self, cls: object, *, correct_only: bool = True) -> Tensor:
        """Which images the class statistics of `cls` use.

        With labels: the images whose true class is `cls` (and, if `correct_only`, that are
        classified correctly: the paper's choice). Without labels: all images
        (``correct_only`` must then be False).

        Parameters
        ----------
        cls : int, numpy integer, 0-d integer Tensor or str
            Class index, or class name when the result has ``class_names``.
        correct_only : bool
            Keep only the correctly classified images of class `cls`.

        Returns
        -------
        Tensor, shape (N,), bool
            True for the selected images (possibly none).

        Raises
        ------
        InputValueError
            When `correct_only` is True but the result has no labels, or `cls` is unknown.
        InputTypeError
            When `correct_only` is not a bool.
        """
        index = self.class_index(cls)
        flag = check_bool("correct_only", correct_only)
        if self.labels is None:
            if flag:
                raise InputValueError(
                    "correct_only: True needs labels; pass labels= to sweep, or correct_only=False "
                    "to use every image"
                )
            return torch.ones(self.num_images, dtype=torch.bool)
        chosen = self.labels == index
        if flag:
            chosen = chosen & self.correct
        return chosen

    def selected_count(self, cls: object, *, correct_only: bool = True) -> int:
        """How many images the readings of class `cls` use: ``selection(...).sum()``."""
        return int(self.selection(cls, correct_only=correct_only).sum())

    def _occluded_mean(self, index: int, correct_only: bool) -> Tensor:
        chosen = self.selection(index, correct_only=correct_only)
        return self.occluded[chosen, :, :, index].to(torch.float64).mean(dim=0)

    def _baseline_mean(self, index: int, correct_only: bool) -> float:
        chosen = self.selection(index, correct_only=correct_only)
        return float(self.baseline[chosen, index].to(torch.float64).mean())

    def _per_image_class(self, cls: object, name: str) -> Tensor:
        n = self.num_images
        if isinstance(cls, Tensor) and cls.dim() == 1:
            if cls.shape != (n,) or cls.is_floating_point() or cls.dtype == torch.bool:
                raise InputValueError(
                    f"{name}: expected one class, or an integer tensor of shape ({n},), got {describe(cls)}"
                )
            if n and (int(cls.min()) < 0 or int(cls.max()) >= self.num_classes):
                raise InputValueError(
                    f"{name}: expected class indices in [0, {self.num_classes - 1}], got values "
                    f"{int(cls.min())}..{int(cls.max())}"
                )
            return cls.to(torch.int64).cpu()
        return torch.full(
            (n,), class_index(cls, self.num_classes, self.class_names, name), dtype=torch.int64
        )

    def image_ranking(
        self,
        image: object,
        cls: object = None,
        *,
        fill: object = None,
        fill_index: object = None,
    ) -> list[int]:
        """Region ids of one image ordered by the drop of class `cls`, largest first.

        The per-image counterpart of `ranking`: ``baseline[image, cls] -
        occluded[image, r, v, cls]``, averaged over the fills unless one is chosen, sorted
        decreasing (ties: the earlier region first). It replaces the hand-written
        ``delta[n, :, :, pred[n]].mean(-1).argsort() + 1``, which guesses the ids and sorts
        the wrong way.

        Parameters
        ----------
        image : int
            The image's position in [0, N).
        cls : int, numpy integer, 0-d integer Tensor, str or None
            The class whose output drop ranks the regions; None: the image's predicted
            class (``predicted[image]``).
        fill : number or str, optional
            One fill by value or label.
        fill_index : int, optional
            One fill by position.

        Returns
        -------
        list of int
            All R region ids.

        Raises
        ------
        InputTypeError, InputValueError
            When `image` is not an int in [0, N), or `cls` or the fill is unknown.

        Examples
        --------
        >>> import torch, occlusion_probe as op
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
        >>> result = op.sweep(model, torch.rand(2, 1, 8, 8), op.grid(8, 8, 2, 2), progress=False)
        >>> sorted(result.image_ranking(1))
        [1, 2, 3, 4]
        """
        n = int_in_range("image", image, 0, self.num_images - 1)
        index = int(self.predicted[n]) if cls is None else self.class_index(cls)
        position = fill_position(fill, fill_index, self.fill_labels)
        drops = self.baseline[n, index].to(torch.float64) - self.occluded[n, :, :, index].to(
            torch.float64
        )
        per_region = drops.mean(dim=1) if position is None else drops[:, position]
        return RegionValues(self.regions.ids, per_region, "drop").ranking()

    def attribution(
        self,
        cls: object = None,
        *,
        target: object = None,
        fill: object = None,
        fill_index: object = None,
    ) -> Tensor:
        """Per-pixel attribution with captum's sign convention (output drop when occluded).

        Each pixel gets ``baseline[n, cls] - occluded[n, r, v, cls]`` of the region r
        that covers it, averaged over the fills when no fill is given and over the regions
        when several cover it (overlapping windows, as captum's ``Occlusion`` averages);
        uncovered pixels get 0. For a partition and one fill this equals captum's
        ``FeatureAblation(forward).attribute(images, target=cls, baselines=fill,
        feature_mask=regions.label_map())``.

        Parameters
        ----------
        cls : int, numpy integer, 0-d integer Tensor, str, or Tensor of shape (N,)
            The class whose output drop is attributed: one class for all images, or an
            integer tensor with one class index per image.
        target : same as `cls`
            captum's name for `cls`; give one of the two.
        fill : number or str, optional
            One fill by value or label; with neither `fill` nor `fill_index` the drop is
            averaged over the fills.
        fill_index : int, optional
            One fill by position.

        Returns
        -------
        Tensor, shape (N, C, *spatial) or (N, *spatial)
            Shaped like the images given to `sweep`, in the dtype of the outputs.

        Raises
        ------
        InputValueError
            When both or neither of `cls` and `target` are given, or a per-image tensor is
            not an integer tensor of shape (N,) or holds class indices out of range.

        Examples
        --------
        >>> import torch, occlusion_probe as op
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
        >>> result = op.sweep(model, torch.rand(2, 3, 8, 8), op.grid(8, 8, 2, 2), progress=False)
        >>> tuple(result.attribution(1, fill=0.0).shape)
        (2, 3, 8, 8)
        """
        if (cls is None) == (target is None):
            raise InputValueError(
                "cls, target: expected exactly one of them (target= is captum's name for cls), "
                f"got cls={describe(cls)} and target={describe(target)}"
            )
        pixels = self._pixel_drops(
            cls if cls is not None else target,
            "cls" if cls is not None else "target",
            fill,
            fill_index,
        )
        if len(self.image_shape) == self.regions.ndim + 1:
            return pixels[:, None].expand(self.num_images, *self.image_shape).clone()
        return pixels

    def heatmap(self, cls: object, *, fill: object = None, fill_index: object = None) -> Tensor:
        """Per-pixel heat map of the output drop of class `cls`, one per image.

        Each pixel holds the mean, over the regions covering it, of ``baseline[n, cls] -
        occluded[n, r, v, cls]``: with `sliding_windows` this is captum's ``Occlusion``
        (``Occlusion(forward).attribute(images, sliding_window_shapes=(C, wh, ww),
        strides=(C, sh, sw), baselines=fill, target=cls)``, whose maps are equal across
        channels because regions span all channels). Pixels no region covers (past the last
        window) get 0, as in captum. With neither `fill` nor `fill_index` the drop is
        averaged over the fills. Positions a drill-down sweep filled in from its coarse
        pass (``computed`` False) enter with their filled-in values.

        Parameters
        ----------
        cls : int, numpy integer, 0-d integer Tensor, str, or Tensor of shape (N,)
            One class for all images, or an integer tensor of one class index per image
            (e.g. ``result.predicted``).
        fill : number or str, optional
            One fill by value or label.
        fill_index : int, optional
            One fill by position.

        Returns
        -------
        Tensor, shape (N, *spatial)
            (N, L) for signals, (N, H, W) for images, (N, D, H, W) for volumes, in the dtype
            of the outputs; plot one with `occlusion_probe.plot.pixel_heatmap`.

        Raises
        ------
        InputValueError
            When a per-image tensor is not an integer tensor of shape (N,) or holds class
            indices out of range, or no fill matches.

        Examples
        --------
        >>> import torch, occlusion_probe as op
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
        >>> windows = op.sliding_windows(8, 8, window=4, stride=2)
        >>> result = op.sweep(model, torch.rand(2, 3, 8, 8), windows, fills=0.0, progress=False)
        >>> tuple(result.heatmap(1, fill=0.0).shape)
        (2, 8, 8)
        """
        return self._pixel_drops(cls, "cls", fill, fill_index)

    def _pixel_drops(self, cls: object, name: str, fill: object, fill_index: object) -> Tensor:
        """(N, *spatial): the region drops of `cls` (one or per image) painted per pixel."""
        targets = self._per_image_class(cls, name)
        position = fill_position(fill, fill_index, self.fill_labels)
        n = self.num_images
        index = targets[:, None, None, None].expand(n, len(self.regions), len(self.fill_labels), 1)
        drops = self.delta.gather(3, index.to(self.delta.device))[..., 0]  # (N, R, V)
        per_region = drops.mean(dim=2) if position is None else drops[:, :, position]
        return self.regions.pixel_mean(per_region)

    def significance(
        self,
        cls: object,
        *,
        fill: object = None,
        fill_index: object = None,
        correct_only: bool = True,
        alternative: str = "greater",
    ) -> SignificanceTable:
        """Per region, a paired Wilcoxon signed-rank test of unoccluded vs occluded output.

        The test compares the output of class `cls` over the selected images, one test per
        region, Holm-corrected across all regions. See `occlusion_probe.stats.significance`
        for the columns.

        Parameters
        ----------
        cls : int, numpy integer, 0-d integer Tensor or str
            Class index, or class name when the result has ``class_names``.
        fill : number or str, optional
            One fill by value or label; with neither `fill` nor `fill_index` the occluded
            output is averaged over the fills per image first.
        fill_index : int, optional
            One fill by position.
        correct_only : bool
            Use only the correctly classified images of class `cls` (the paper's choice).
        alternative : {"greater", "less", "two-sided"}
            ``"greater"`` tests whether occluding lowers the output.

        Returns
        -------
        SignificanceTable
            One row per region.

        Raises
        ------
        EmptySelectionError
            When no image is selected.
        """
        position = fill_position(fill, fill_index, self.fill_labels)
        index, flag = self._selected(cls, correct_only, "significance")
        chosen = self.selection(index, correct_only=flag)
        before = self.baseline[chosen, index]
        after = self.occluded[chosen, :, :, index]
        if position is None:
            # The mean of V equal outputs can differ from them in the last bit; a region whose
            # every fill leaves an image's output unchanged must pair exactly with the baseline,
            # or the test reads rounding noise as a change (p = 0.75 instead of 1 was seen).
            unchanged = (after == before[:, None, None]).all(dim=2)
            after = torch.where(unchanged, before[:, None], after.mean(dim=2))
        else:
            after = after[:, :, position]
        return significance(before, after, self.regions.ids, alternative=alternative)

    def curve_bands(
        self,
        cls: object,
        *,
        correct_only: bool = True,
        n_resamples: int = 1000,
        confidence: float = 0.95,
        seed: int = 0,
    ) -> tuple[Tensor, Tensor]:
        """Bootstrap percentile confidence band of `class_curves` (resampling images).

        Parameters
        ----------
        cls : int, numpy integer, 0-d integer Tensor or str
            Class index, or class name when the result has ``class_names``.
        correct_only : bool
            Use only the correctly classified images of class `cls` (the paper's choice).
        n_resamples : int
            Number of bootstrap resamples.
        confidence : float
            The band covers this central share of the resampled means.
        seed : int
            Seed of the resampling: equal seeds, equal bands.

        Returns
        -------
        low : Tensor, shape (R, V), float64
            Lower edge of the band.
        high : Tensor, shape (R, V), float64
            Upper edge of the band.

        Raises
        ------
        EmptySelectionError
            When no image is selected.
        """
        index, flag = self._selected(cls, correct_only, "curve_bands")
        chosen = self.selection(index, correct_only=flag)
        return bootstrap_bands(
            self.occluded[chosen, :, :, index].to(torch.float64),
            n_resamples=n_resamples,
            confidence=confidence,
            seed=seed,
        )

    def to_xarray(self) -> Any:
        """The result as an ``xarray.Dataset`` with labelled dimensions.

        Variables: ``occluded`` (image, region, fill, class), ``baseline`` (image, class),
        ``predicted`` (image) and, with labels, ``labels`` (image). Coordinates: ``region``
        = region ids, ``fill`` = fill labels, ``class`` = class names (indices without
        names), ``image`` = 0..N-1.

        Raises
        ------
        ImportError
            When xarray is not installed (``pip install "occlusion_probe[tables]"``).
        """
        xr = optional_import("xarray", "SweepResult.to_xarray")
        coords = {"image": list(range(self.num_images)), **self._coordinates()}
        variables: dict[str, Any] = {
            "occluded": (("image", "region", "fill", "class"), self.occluded.cpu().numpy()),
            "baseline": (("image", "class"), self.baseline.cpu().numpy()),
            "predicted": (("image",), self.predicted.cpu().numpy()),
        }
        if self.labels is not None:
            variables["labels"] = (("image",), self.labels.cpu().numpy())
        return xr.Dataset(variables, coords=coords, attrs={"output": self.output})

    # -- combination and storage --------------------------------------------------------------
    @classmethod
    def concatenate(cls, parts: Sequence[SweepResult]) -> SweepResult:
        """Join results of the same sweep over consecutive image subsets (along N).

        Parameters
        ----------
        parts : sequence of SweepResult
            Results of one sweep: the same regions (ids and masks), fills, classes, image
            shape, output and fidelity, all with or all without labels.

        Returns
        -------
        SweepResult
            The parts joined along the N axis, in the given order.

        Raises
        ------
        InputValueError
            When `parts` is empty or the results come from different sweeps (the message
            names what differs, e.g. ``output ('logits' vs 'softmax')``).
        InputTypeError
            When `parts` is not a sequence of SweepResult.
        """
        return concatenate_sweeps(cls, parts)

    def _stored_arrays(self) -> dict[str, Tensor | np.ndarray | None]:
        return {
            "baseline": self.baseline,
            "occluded": self.occluded,
            "labels": self.labels,
            "computed": self.computed,
            "fidelity": None if self.fidelity is None else self.fidelity.as_array(),
        }

    @classmethod
    def _from_stored(cls, fields: dict[str, Any]) -> SweepResult:
        fidelity = fields.pop("fidelity", None)
        return cls(**fields, fidelity=None if fidelity is None else Fidelity.from_array(fidelity))
