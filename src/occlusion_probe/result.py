"""SweepResult: every class output of every occluded image, and what to read from it."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from . import resultfile
from .errors import InputTypeError, InputValueError, describe
from .regions import Regions

if TYPE_CHECKING:
    from .stats import SignificanceTable

__all__ = ["OcclusionProbeWarning", "SweepResult"]


class OcclusionProbeWarning(UserWarning):
    """Doubtful but legal input or an undefined statistic (e.g. a curve over zero images)."""


def class_index(cls: object, num_classes: int, class_names: Sequence[str] | None) -> int:
    """Validate a class given by index or name; returns the index."""
    if isinstance(cls, str):
        if class_names is None or cls not in class_names:
            raise InputValueError(f"cls: unknown class name {cls!r}; known names are {class_names}")
        return list(class_names).index(cls)
    if isinstance(cls, bool) or not isinstance(cls, (int, np.integer)):
        raise InputTypeError(f"cls: expected a class index or name, got {describe(cls)}")
    if not 0 <= int(cls) < num_classes:
        raise InputValueError(f"cls: expected a class index in [0, {num_classes - 1}], got {cls}")
    return int(cls)


@dataclass(frozen=True, eq=False)
class SweepResult:
    """All class outputs of a sweep over images x regions x fills.

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
        The K class names given to `sweep`, if any.
    image_shape : tuple of int
        Shape of one image as given to `sweep`: (C, H, W), or (H, W) for single-channel input.
    output : str
        ``"softmax"``, ``"logits"`` or the name of the callable applied to the model output.
    engine : str
        The engine that computed ``occluded``: ``"dense"`` or ``"incremental"``.
    engine_note : str
        Why that engine was used (e.g. why ``engine="auto"`` fell back to dense).

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

    def __post_init__(self) -> None:
        n, k = self.baseline.shape
        expected = (n, len(self.regions), len(self.fill_labels), k)
        if tuple(self.occluded.shape) != expected:
            raise InputValueError(
                f"occluded: expected shape {expected} (N, R, V, K), got {tuple(self.occluded.shape)}"
            )
        if self.labels is not None and tuple(self.labels.shape) != (n,):
            raise InputValueError(f"labels: expected shape ({n},), got {tuple(self.labels.shape)}")
        if self.class_names is not None and len(self.class_names) != k:
            raise InputValueError(
                f"class_names: expected {k} names (one per class output), got {len(self.class_names)}"
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
    def _class_index(self, cls: int | str) -> int:
        return class_index(cls, self.num_classes, self.class_names)

    def fill_position(self, fill: int | float | str) -> int:
        """Position on the V axis of a fill given as its position, value or label.

        Parameters
        ----------
        fill : int, float or str
            A position on the V axis (int), a fill value (float, e.g. ``0.2``) or a fill label
            (str, one of ``fill_labels``).

        Returns
        -------
        int
            The position of the fill in ``fill_labels``.

        Raises
        ------
        InputTypeError
            When `fill` is a bool or of another type.
        InputValueError
            When no fill has that position, value or label.
        """
        if isinstance(fill, bool):
            raise InputTypeError(
                f"fill: expected an int position, float value or label, got {fill!r}"
            )
        if isinstance(fill, (int, np.integer)):
            if not 0 <= int(fill) < len(self.fill_labels):
                raise InputValueError(
                    f"fill: expected a position in [0, {len(self.fill_labels) - 1}], got {fill}"
                )
            return int(fill)
        if isinstance(fill, float):
            for position, label in enumerate(self.fill_labels):
                try:
                    if float(label) == fill:
                        return position
                except ValueError:
                    continue
            raise InputValueError(f"fill: no fill with value {fill}; fills are {self.fill_labels}")
        if isinstance(fill, str):
            if fill not in self.fill_labels:
                raise InputValueError(f"fill: unknown fill {fill!r}; fills are {self.fill_labels}")
            return self.fill_labels.index(fill)
        raise InputTypeError(
            f"fill: expected an int position, float value or label, got {describe(fill)}"
        )

    def selection(self, cls: int | str, correct_only: bool = True) -> Tensor:
        """Which images the class statistics of `cls` use.

        With labels: the images whose true class is `cls` (and, if `correct_only`, that are
        classified correctly: the paper's choice). Without labels: all images
        (``correct_only`` must then be False).

        Parameters
        ----------
        cls : int or str
            Class index, or class name when the result has ``class_names``.
        correct_only : bool
            Keep only the correctly classified images of class `cls`.

        Returns
        -------
        Tensor, shape (N,), bool
            True for the selected images.

        Raises
        ------
        InputValueError
            When `correct_only` is True but the result has no labels, or `cls` is unknown.
        """
        index = self._class_index(cls)
        if self.labels is None:
            if correct_only:
                raise InputValueError(
                    "correct_only: True needs labels; pass labels= to sweep, or correct_only=False "
                    "to use every image"
                )
            return torch.ones(self.num_images, dtype=torch.bool)
        chosen = self.labels == index
        if correct_only:
            chosen = chosen & self.correct
        return chosen

    def class_curves(self, cls: int | str, correct_only: bool = True) -> Tensor:
        """Mean output of class `cls` per region and fill over the selected images (Figs 4-9).

        Parameters
        ----------
        cls : int or str
            Class index, or class name when the result has ``class_names``.
        correct_only : bool
            Use only the correctly classified images of class `cls` (the paper's choice); see
            `selection`.

        Returns
        -------
        Tensor, shape (R, V)
            ``curves[r, v]``: mean output of class `cls` with region r set to fill v. NaN when
            no image is selected.

        Warns
        -----
        OcclusionProbeWarning
            When no image is selected (e.g. a class the model never gets right).

        Examples
        --------
        >>> import torch, occlusion_probe as op
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48 * 48, 7))
        >>> images, labels = torch.rand(14, 1, 48, 48), torch.arange(14) % 7
        >>> result = op.sweep(model, images, op.grid(48, 48), labels=labels, progress=False)
        >>> curves = result.class_curves(3, correct_only=False)
        >>> tuple(curves.shape)  # 16 areas x 6 fills
        (16, 6)
        >>> tuple(curves[9].shape)  # class-3 output with area 10 occluded, one value per fill
        (6,)
        """
        index = self._class_index(cls)
        chosen = self.selection(index, correct_only)
        count = int(chosen.sum())
        if count == 0:
            warnings.warn(
                f"class_curves: no image selected for class {cls!r} "
                f"(correct_only={correct_only}); the curves are NaN",
                OcclusionProbeWarning,
                stacklevel=2,
            )
            return torch.full(
                (len(self.regions), len(self.fill_labels)), float("nan"), dtype=self.occluded.dtype
            )
        return self.occluded[chosen, :, :, index].mean(dim=0)

    def mean_drop(
        self, cls: int | str, fill: int | float | str | None = None, correct_only: bool = True
    ) -> Tensor:
        """Mean drop of class `cls` per region over the selected images.

        The mean of ``delta[..., cls]`` over the selected images (see `selection`) and, when
        `fill` is None, over the fills.

        Parameters
        ----------
        cls : int or str
            Class index, or class name when the result has ``class_names``.
        fill : int, float or str, optional
            One fill, by position (int), value (float) or label (str); None (the default)
            averages over the fills.
        correct_only : bool
            Use only the correctly classified images of class `cls` (the paper's choice); see
            `selection`.

        Returns
        -------
        Tensor, shape (R,)
            The mean drop of each region: positive when occluding it lowers the output.

        Raises
        ------
        InputValueError
            When no image is selected for `cls`.
        """
        index = self._class_index(cls)
        chosen = self.selection(index, correct_only)
        if int(chosen.sum()) == 0:
            raise InputValueError(
                f"cls: no image selected for class {cls!r} (correct_only={correct_only}); "
                "nothing to rank"
            )
        drops = self.delta[chosen, :, :, index]
        if fill is not None:
            drops = drops[:, :, self.fill_position(fill)]
            return drops.mean(dim=0)
        return drops.mean(dim=(0, 2))

    def ranking(
        self, cls: int | str, fill: int | float | str | None = None, correct_only: bool = True
    ) -> list[int]:
        """Region ids ordered by mean drop of class `cls`, largest first.

        Parameters
        ----------
        cls : int or str
            Class index, or class name when the result has ``class_names``.
        fill : int, float or str, optional
            One fill, by position (int), value (float) or label (str); None (the default)
            averages over the fills.
        correct_only : bool
            Use only the correctly classified images of class `cls` (the paper's choice); see
            `selection`.

        Returns
        -------
        list of int
            All R region ids, by decreasing `mean_drop` (ties: lower position first).

        Raises
        ------
        InputValueError
            When no image is selected for `cls`.
        """
        drops = self.mean_drop(cls, fill=fill, correct_only=correct_only)
        order = torch.sort(drops, descending=True, stable=True).indices
        return [self.regions.ids[i] for i in order.tolist()]

    def attribution(self, target: int | Tensor, fill: int | float | str | None = None) -> Tensor:
        """Per-pixel attribution with captum's sign convention (output drop when occluded).

        Each pixel gets ``baseline[n, target] - occluded[n, r, v, target]`` of the region r
        that covers it, averaged over the fills when `fill` is None and over the regions
        when several cover it (overlapping windows, as captum's ``Occlusion`` averages);
        uncovered pixels get 0. For a partition and one fill this equals captum's
        ``FeatureAblation(forward).attribute(images, target=target, baselines=fill,
        feature_mask=regions.label_map())``.

        Parameters
        ----------
        target : int or str, or Tensor of shape (N,)
            The class whose output drop is attributed: one class index (or name) for all
            images, or an integer tensor with one class index per image.
        fill : int, float or str, optional
            One fill, by position (int), value (float) or label (str); None (the default)
            averages over the fills.

        Returns
        -------
        Tensor, shape (N, C, H, W) or (N, H, W)
            Shaped like the images given to `sweep`.

        Raises
        ------
        InputValueError
            When a target tensor is not an integer tensor of shape (N,) or holds class indices
            out of range.

        Examples
        --------
        >>> import torch, occlusion_probe as op
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
        >>> result = op.sweep(model, torch.rand(2, 3, 8, 8), op.grid(8, 8, 2, 2), progress=False)
        >>> tuple(result.attribution(1, fill=0.0).shape)
        (2, 3, 8, 8)
        """
        n = self.num_images
        if isinstance(target, Tensor):
            if target.shape != (n,) or target.is_floating_point():
                raise InputValueError(
                    f"target: expected an int or an integer tensor of shape ({n},), got {describe(target)}"
                )
            if n and (int(target.min()) < 0 or int(target.max()) >= self.num_classes):
                raise InputValueError(
                    f"target: expected class indices in [0, {self.num_classes - 1}], got values "
                    f"{int(target.min())}..{int(target.max())}"
                )
            targets = target.to(torch.int64).cpu()
        else:
            targets = torch.full((n,), self._class_index(target), dtype=torch.int64)
        index = targets[:, None, None, None].expand(n, len(self.regions), len(self.fill_labels), 1)
        drops = self.delta.gather(3, index)[..., 0]  # (N, R, V)
        if fill is None:
            per_region = drops.mean(dim=2)
        else:
            per_region = drops[:, :, self.fill_position(fill)]
        masks = self.regions.masks.to(per_region.dtype)
        coverage = masks.sum(dim=0).clamp(min=1.0)
        pixels = torch.einsum("nr,rhw->nhw", per_region, masks) / coverage
        if len(self.image_shape) == 3:
            return pixels[:, None].expand(n, *self.image_shape).clone()
        return pixels

    def significance(
        self,
        cls: int | str,
        fill: int | float | str | None = None,
        correct_only: bool = True,
        alternative: str = "greater",
    ) -> SignificanceTable:
        """Per region, a paired Wilcoxon signed-rank test of unoccluded vs occluded output.

        The test compares the output of class `cls` over the selected images, one test per
        region, Holm-corrected across regions. See `occlusion_probe.stats.significance` for
        the columns.

        Parameters
        ----------
        cls : int or str
            Class index, or class name when the result has ``class_names``.
        fill : int, float or str, optional
            One fill, by position (int), value (float) or label (str); with None (the default)
            the occluded output is averaged over the fills per image first.
        correct_only : bool
            Use only the correctly classified images of class `cls` (the paper's choice); see
            `selection`.
        alternative : {"greater", "less", "two-sided"}
            ``"greater"`` tests whether occluding lowers the output.

        Returns
        -------
        SignificanceTable
            One row per region.
        """
        from .stats import significance

        index = self._class_index(cls)
        chosen = self.selection(index, correct_only)
        before = self.baseline[chosen, index]
        after = self.occluded[chosen, :, :, index]
        after = after.mean(dim=2) if fill is None else after[:, :, self.fill_position(fill)]
        return significance(before, after, self.regions.ids, alternative=alternative)

    def curve_bands(
        self,
        cls: int | str,
        correct_only: bool = True,
        n_resamples: int = 1000,
        confidence: float = 0.95,
        seed: int = 0,
    ) -> tuple[Tensor, Tensor]:
        """Bootstrap percentile confidence band of `class_curves` (resampling images).

        Parameters
        ----------
        cls : int or str
            Class index, or class name when the result has ``class_names``.
        correct_only : bool
            Use only the correctly classified images of class `cls` (the paper's choice); see
            `selection`.
        n_resamples : int
            Number of bootstrap resamples.
        confidence : float
            The band covers this central share of the resampled means.
        seed : int
            Seed of the resampling: equal seeds, equal bands.

        Returns
        -------
        low : Tensor, shape (R, V)
            Lower edge of the band.
        high : Tensor, shape (R, V)
            Upper edge of the band.

        Raises
        ------
        InputValueError
            When no image is selected for `cls`.
        """
        from .stats import bootstrap_bands

        index = self._class_index(cls)
        chosen = self.selection(index, correct_only)
        return bootstrap_bands(
            self.occluded[chosen, :, :, index],
            n_resamples=n_resamples,
            confidence=confidence,
            seed=seed,
        )

    # -- combination and storage --------------------------------------------------------------
    @classmethod
    def concatenate(cls, parts: Sequence[SweepResult]) -> SweepResult:
        """Join results of the same sweep over consecutive image subsets (along N).

        Parameters
        ----------
        parts : sequence of SweepResult
            Results with the same regions, fills and classes, all with or all without labels.

        Returns
        -------
        SweepResult
            The parts joined along the N axis, in the given order.

        Raises
        ------
        InputValueError
            When `parts` is empty or the results come from different sweeps.
        """
        if not parts:
            raise InputValueError("parts: expected at least one SweepResult, got none")
        first = parts[0]
        for part in parts[1:]:
            if (
                part.fill_labels != first.fill_labels
                or part.regions.ids != first.regions.ids
                or part.num_classes != first.num_classes
                or (part.labels is None) != (first.labels is None)
            ):
                raise InputValueError(
                    "parts: the results come from different sweeps (regions, fills, classes or labels differ)"
                )
        labels = None
        if first.labels is not None:
            labels = torch.cat([p.labels for p in parts if p.labels is not None])
        return cls(
            baseline=torch.cat([p.baseline for p in parts]),
            occluded=torch.cat([p.occluded for p in parts]),
            labels=labels,
            regions=first.regions,
            fill_labels=first.fill_labels,
            class_names=first.class_names,
            image_shape=first.image_shape,
            output=first.output,
            engine=first.engine,
            engine_note=first.engine_note,
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the result to an ``.npz`` file (no pickles), atomically.

        Parameters
        ----------
        path : str or os.PathLike
            The file to write; an existing file is replaced.

        Returns
        -------
        Path
            `path` as a `pathlib.Path`.

        Raises
        ------
        ResultFileError
            When a field could not be loaded again (e.g. labels outside [0, K - 1]).

        Notes
        -----
        The file holds every array, the metadata, ``format_version`` and a SHA-256
        ``checksum`` over all of them (see `occlusion_probe.resultfile`).

        Examples
        --------
        >>> import pathlib, tempfile, torch, occlusion_probe as op
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
        >>> result = op.sweep(model, torch.rand(2, 1, 8, 8), op.grid(8, 8, 2, 2), progress=False)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = result.save(pathlib.Path(folder) / "sweep.npz")
        ...     loaded = op.SweepResult.load(path)
        >>> torch.equal(loaded.occluded, result.occluded), loaded.fill_labels == result.fill_labels
        (True, True)
        """
        return resultfile.write_sweep_result(
            path, self.baseline, self.occluded, self.labels, self._metadata()
        )

    def _metadata(self) -> dict[str, object]:
        return {
            "regions": self.regions,
            "fill_labels": self.fill_labels,
            "class_names": self.class_names,
            "image_shape": self.image_shape,
            "output": self.output,
            "engine": self.engine,
            "engine_note": self.engine_note,
        }

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SweepResult:
        """Read a result written by `save` (``allow_pickle=False``: nothing is executed).

        Parameters
        ----------
        path : str or os.PathLike
            A file written by `save`.

        Returns
        -------
        SweepResult
            The saved result.

        Raises
        ------
        ResultFileError
            When the file is missing, a directory, truncated or corrupted (its checksum does not
            match), not a SweepResult file, of another format version, or has a field with an
            invalid value; the message names the file and the field. A subclass of
            `InputValueError`.

        Warns
        -----
        OcclusionProbeWarning
            For a format-1 file (no checksum; its fields are still validated).
        """
        return cls(**resultfile.read_sweep_result(path))
