"""PerturbationCurve: accuracy, recall and class output as regions are kept or removed.

`occlusion_probe.perturbation_curve` computes it (see `occlusion_probe.curves`); this module
holds the result and what to read from it: the curves, their bands over random draws, the
areas under them and the paired bootstrap comparison of two curves.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from ..errors import EmptySelectionError, InputTypeError, InputValueError, describe
from ..selection import check_class_names, class_index, class_text, int_in_range
from ..stats import bootstrap_bands
from .confusion import ConfusionReport, confusion_report
from .readings import ordinary_tensor
from .summary import class_summary

__all__ = ["BAND_PERCENTILES", "METRICS", "MODES", "AucDifference", "PerturbationCurve"]

MODES = ("keep", "remove")
METRICS = ("accuracy", "class_output", "recall")
# The band of a random order: these percentiles of the draws' curves.
BAND_PERCENTILES = (2.5, 97.5)


@dataclass(frozen=True)
class AucDifference:
    """The area under one curve minus the area under another (a random order's), with a
    paired percentile bootstrap interval over the images.

    Attributes
    ----------
    metric : str
        ``"accuracy"``, ``"class_output"`` or ``"recall"``.
    auc : float
        The area under the curve compared (`PerturbationCurve.auc`).
    baseline_auc : float
        The area under the baseline curve (usually ``order="random"``).
    difference : float
        ``auc - baseline_auc``.
    low, high : float
        The percentile bootstrap interval of `difference`: the images are resampled with
        replacement (the same images for both curves: they are paired), `n_resamples` times.
    n_resamples : int
        The number of bootstrap resamples.
    confidence : float
        The share of the resampled differences the interval holds (0.95: the 2.5th to the
        97.5th percentile).
    num_images : int
        The images resampled (for ``"recall"``, those of the class).
    """

    metric: str
    auc: float
    baseline_auc: float
    difference: float
    low: float
    high: float
    n_resamples: int
    confidence: float
    num_images: int


def _trapezoid(values: Tensor) -> Tensor:
    """The area under curves sampled at k / R for k = 0..R, along the last axis."""
    r = values.shape[-1] - 1
    return (values[..., :-1] + values[..., 1:]).sum(dim=-1) / (2 * r)


@dataclass(frozen=True, eq=False)
class PerturbationCurve:
    """Accuracy, recall and class output as regions are kept (or removed) in order.

    Point k (k = 0..R) keeps the first k regions of each image's order and fills everything
    else (``mode="keep"``), or fills the first k regions (``mode="remove"``). For keep, k = 0
    is the all-filled image and k = R keeps every region (the unoccluded image when the
    regions cover every pixel); for remove it is the reverse. With several orders per image
    (``order="random"``: D draws) the curves are the mean over the draws, and the bands hold
    the 2.5th to 97.5th percentiles of the draws' curves.

    Attributes
    ----------
    mode : str
        ``"keep"`` or ``"remove"``.
    order : str
        How the orders were chosen, in words.
    region_ids : tuple of int, length R
        The regions, in the order of the masks.
    orders : Tensor, shape (D, N, R), int64
        ``orders[d, n]``: the region ids in the order draw d used for image n.
    labels : Tensor, shape (N,), int64
        True classes.
    predicted : Tensor, shape (D, N, R + 1), int64
        The predicted class of image n at point k of draw d: the argmax of the model's
        class outputs (for ``output="softmax"`` of the logits, which softmax keeps in order).
    class_outputs : Tensor, shape (D, N, R + 1), float
        The recorded output (after `output`) of the tracked class: `target`, or each
        image's true class.
    num_classes : int
        K.
    target : int or None
        The class whose output is tracked; None: each image's true class.
    class_names : tuple of str or None
        The K class names, if given.
    output : str
        What `class_outputs` holds: ``"softmax"``, ``"logits"``, ``"probabilities"`` or
        the name of a callable.
    fill_label : str
        The fill, in words.
    partition : bool
        Whether the regions cover every pixel exactly once (`mirrored` needs it).

    Examples
    --------
    >>> import torch, occlusion_probe as op
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    >>> curve = op.perturbation_curve(model, torch.rand(6, 1, 8, 8), op.grid(8, 8, 2, 2),
    ...                               [4, 3, 2, 1], labels=torch.arange(6) % 3, progress=False)
    >>> tuple(curve.accuracy.shape), tuple(curve.recall.shape), curve.fraction.tolist()
    ((5,), (5, 3), [0.0, 0.25, 0.5, 0.75, 1.0])
    >>> 0.0 <= curve.auc() <= 1.0
    True
    """

    mode: str
    order: str
    region_ids: tuple[int, ...]
    orders: Tensor
    labels: Tensor
    predicted: Tensor
    class_outputs: Tensor
    num_classes: int
    target: int | None = None
    class_names: tuple[str, ...] | None = None
    output: str = "softmax"
    fill_label: str = "0.0"
    partition: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputValueError(f'mode: expected "keep" or "remove", got {self.mode!r}')
        r = len(self.region_ids)
        d, n = int(self.orders.shape[0]), int(self.labels.shape[0])
        shapes = {
            "orders": (tuple(self.orders.shape), (d, n, r)),
            "predicted": (tuple(self.predicted.shape), (d, n, r + 1)),
            "class_outputs": (tuple(self.class_outputs.shape), (d, n, r + 1)),
        }
        for name, (got, wanted) in shapes.items():
            if got != wanted or d < 1:
                raise InputValueError(
                    f"{name}: expected shape {wanted} (D >= 1 draws, N images, R = {r} "
                    f"regions), got {got}"
                )
        for name in ("orders", "labels", "predicted", "class_outputs"):
            object.__setattr__(self, name, ordinary_tensor(getattr(self, name).cpu()))
        object.__setattr__(
            self, "class_names", check_class_names(self.class_names, self.num_classes)
        )

    def __repr__(self) -> str:
        target = "each image's true class" if self.target is None else f"class {self.target}"
        order = self.order if len(self.order) <= 60 else self.order[:57] + "..."
        ids = self.region_ids
        shown = f"ids {ids[0]}..{ids[-1]}" if ids else "no ids"
        return (
            f"PerturbationCurve(mode={self.mode!r}, order={order!r}, "
            f"N={self.num_images} images, D={self.num_draws} draws, R={self.num_regions} "
            f"regions ({shown}), {class_summary(self.num_classes, self.class_names)}, "
            f"fill={self.fill_label!r}, output={self.output!r}, tracking {target}, "
            f"accuracy {self.auc():.3f} AUC)"
            if self.num_images and self.num_regions
            else f"PerturbationCurve(mode={self.mode!r}, N={self.num_images} images, "
            f"R={self.num_regions} regions)"
        )

    # -- sizes and axes -----------------------------------------------------------------------
    @property
    def num_images(self) -> int:
        """N, the number of images."""
        return int(self.labels.shape[0])

    @property
    def num_draws(self) -> int:
        """D, the number of orders per image (1 unless ``order="random"``)."""
        return int(self.orders.shape[0])

    @property
    def num_regions(self) -> int:
        """R, the number of regions."""
        return len(self.region_ids)

    @property
    def kept(self) -> Tensor:
        """k = 0..R, the regions kept (mode keep) or removed (mode remove): shape (R + 1,)."""
        return torch.arange(self.num_regions + 1)

    @property
    def fraction(self) -> Tensor:
        """k / R, the x axis of the curves and of `auc`: Tensor, shape (R + 1,), float64."""
        return self.kept.to(torch.float64) / self.num_regions

    @property
    def correct(self) -> Tensor:
        """Whether image n is classified correctly at point k of draw d: (D, N, R + 1), bool."""
        return self.predicted == self.labels[None, :, None]

    # -- curves -------------------------------------------------------------------------------
    def values(self, metric: str = "accuracy", *, cls: object = None) -> Tensor:
        """The curve of each draw: Tensor, shape (D, R + 1), float64.

        Parameters
        ----------
        metric : {"accuracy", "class_output", "recall"}
            Accuracy over all images; the mean tracked class output; or the recall of
            class `cls` (its images' accuracy).
        cls : int, numpy integer, 0-d integer Tensor or str
            The class of ``"recall"`` (index or name); only with ``"recall"``.

        Raises
        ------
        InputValueError
            When `metric` is unknown, `cls` is missing for ``"recall"`` or given for
            another metric.
        EmptySelectionError
            When no image is of class `cls`.
        """
        per_image, _ = self._per_image(metric, cls)
        return per_image.mean(dim=1)

    @property
    def accuracy(self) -> Tensor:
        """Accuracy at each point, mean over the draws: Tensor, shape (R + 1,), float64."""
        return self.values("accuracy").mean(dim=0)

    @property
    def accuracy_band(self) -> Tensor:
        """The 2.5th and 97.5th percentiles of the draws' accuracy curves: (2, R + 1)."""
        return self.band("accuracy")

    @property
    def recall(self) -> Tensor:
        """Per-class recall at each point, mean over the draws: Tensor, shape (R + 1, K),
        float64; 0 for a class with no image (as in `ConfusionReport`)."""
        counts = torch.bincount(self.labels, minlength=self.num_classes).to(torch.float64)
        hits = torch.zeros(self.num_draws, self.num_regions + 1, self.num_classes)
        hits = hits.to(torch.float64)
        correct = self.correct.to(torch.float64)  # (D, N, R + 1)
        index = self.labels[None, None, :].expand(self.num_draws, self.num_regions + 1, -1)
        hits.scatter_add_(2, index, correct.transpose(1, 2))
        recall = torch.where(counts > 0, hits / counts.clamp(min=1), torch.zeros_like(hits))
        return recall.mean(dim=0)

    @property
    def class_output(self) -> Tensor:
        """Mean output of the tracked class at each point, over images and draws: Tensor,
        shape (R + 1,), float64."""
        return self.values("class_output").mean(dim=0)

    @property
    def class_output_band(self) -> Tensor:
        """The 2.5th and 97.5th percentiles of the draws' class-output curves: (2, R + 1)."""
        return self.band("class_output")

    def band(self, metric: str = "accuracy", *, cls: object = None) -> Tensor:
        """The spread of the draws: the 2.5th and 97.5th percentiles (linear interpolation)
        of the D curves of `metric` at each point: Tensor, shape (2, R + 1), float64 (both
        rows equal the curve when D = 1). Arguments as in `values`."""
        levels = torch.tensor([p / 100 for p in BAND_PERCENTILES], dtype=torch.float64)
        return torch.quantile(self.values(metric, cls=cls), levels, dim=0)

    @property
    def confusion(self) -> Tensor:
        """Confusion counts at each point of each draw: Tensor, shape (D, R + 1, K, K),
        int64; ``[d, k, t, p]`` counts images of true class t predicted as p."""
        k = self.num_classes
        cells = self.labels[None, :, None] * k + self.predicted  # (D, N, R + 1)
        flat = cells.transpose(1, 2).reshape(-1, self.num_images)
        offsets = torch.arange(flat.shape[0])[:, None] * k * k
        counts = torch.bincount((flat + offsets).flatten(), minlength=flat.shape[0] * k * k)
        return counts.reshape(self.num_draws, self.num_regions + 1, k, k)

    def report(self, k: int, *, draw: int = 0) -> ConfusionReport:
        """The confusion report of point `k` of draw `draw`, as `keep_only` gives it.

        Its ``kept_ids`` are the kept regions when every image used the same order (for
        remove: the regions after the first k), else empty.

        Raises
        ------
        InputTypeError, InputValueError
            When `k` is not an int in [0, R] or `draw` not in [0, D).
        """
        point = int_in_range("k", k, 0, self.num_regions)
        which = int_in_range("draw", draw, 0, self.num_draws - 1)
        orders = self.orders[which]
        kept: tuple[int, ...] = ()
        if self.num_images and bool((orders == orders[:1]).all()):
            ids = [int(i) for i in orders[0].tolist()]
            kept = tuple(ids[:point] if self.mode == "keep" else ids[point:])
        return confusion_report(
            self.labels, self.predicted[which, :, point], self.num_classes, self.class_names, kept
        )

    def mirrored(self) -> PerturbationCurve:
        """The curve of the other mode with every order reversed, from the same forwards.

        For a partition, keeping the first R - k regions of an order is removing the last k,
        which are the first k of the reversed order: the same image to the bit. So point k
        of the mirrored curve is point R - k of this one. The reverse of a uniform random
        order is uniform, so ``random_keep.mirrored()`` is a random-order remove curve at no
        cost; a ranked keep curve mirrors into removal least important first (Samek et al.'s
        LeRF, against MoRF: ``mode="remove"`` with the ranking itself).

        Raises
        ------
        InputValueError
            When the regions are not a partition (they overlap or leave pixels uncovered).
        """
        if not self.partition:
            raise InputValueError(
                "mirrored: keeping R - k regions equals removing the other k only when the "
                "regions cover every pixel exactly once, and these overlap or leave gaps; "
                "compute the other mode with perturbation_curve"
            )
        other = "remove" if self.mode == "keep" else "keep"
        return replace(
            self,
            mode=other,
            order=f"{self.order}, reversed (mirrored from the {self.mode} curve)",
            orders=self.orders.flip(2),
            predicted=self.predicted.flip(2),
            class_outputs=self.class_outputs.flip(2),
        )

    # -- areas --------------------------------------------------------------------------------
    def auc(self, metric: str = "accuracy", *, cls: object = None) -> float:
        """The area under the mean curve of `metric` over k / R from 0 to 1 (trapezoid).

        For accuracy and recall (and probabilities) it lies in [0, 1]. Arguments as in
        `values`.

        Examples
        --------
        Points 0, 0.5, 1 at k / R = 0, 0.5, 1 give (0 + 0.5) / 4 + (0.5 + 1) / 4 = 0.5.
        """
        per_image, _ = self._per_image(metric, cls)
        return float(_trapezoid(per_image.mean(dim=1)).mean())

    def compare(
        self,
        baseline: PerturbationCurve,
        metric: str = "accuracy",
        *,
        cls: object = None,
        n_resamples: int = 2000,
        confidence: float = 0.95,
        seed: int = 0,
    ) -> AucDifference:
        """The AUC of this curve minus that of `baseline` (e.g. ``order="random"``), with a
        paired percentile bootstrap interval over the images.

        Each image's area (its 0/1 correctness or its class output, trapezoid over k / R,
        mean over its draws) is computed for both curves; the AUC is the mean of those
        areas, so the difference is the mean of the per-image differences, and the
        interval resamples images with replacement (`occlusion_probe.stats.bootstrap_bands`
        with `n_resamples`, `confidence` and `seed`). For ``"recall"`` only the images of
        class `cls` are resampled.

        Parameters
        ----------
        baseline : PerturbationCurve
            A curve of the same mode over the same images (same labels, regions and target).
        metric, cls
            As in `values`.
        n_resamples : int
            Bootstrap resamples (default 2000).
        confidence : float in (0, 1)
            The share of the resampled differences the interval holds (default 0.95).
        seed : int
            Seed of the resampling: equal seeds, equal intervals.

        Returns
        -------
        AucDifference

        Raises
        ------
        InputTypeError
            When `baseline` is no `PerturbationCurve`, or a bootstrap argument has the wrong
            type.
        InputValueError
            When the two curves are not of the same mode, images, regions and target, or an
            argument has an unusable value.
        """
        if not isinstance(baseline, PerturbationCurve):
            raise InputTypeError(
                f"baseline: expected a PerturbationCurve, got {describe(baseline)}"
            )
        mismatch = [
            what
            for what, same in (
                ("mode", baseline.mode == self.mode),
                ("region_ids", baseline.region_ids == self.region_ids),
                ("target", baseline.target == self.target),
                ("num_classes", baseline.num_classes == self.num_classes),
                (
                    "labels",
                    baseline.labels.shape == self.labels.shape
                    and torch.equal(baseline.labels, self.labels),
                ),
            )
            if not same
        ]
        if mismatch:
            raise InputValueError(
                f"baseline: expected a curve of the same mode, regions, target and images "
                f"(the same labels) as this one, but its {', '.join(mismatch)} differ "
                f"(mode {baseline.mode!r} vs {self.mode!r}, {baseline.num_images} vs "
                f"{self.num_images} images)"
            )
        mine, chosen = self._per_image(metric, cls)
        theirs, _ = baseline._per_image(metric, cls)
        areas = _trapezoid(mine).mean(dim=0)  # (n,)
        baseline_areas = _trapezoid(theirs).mean(dim=0)
        differences = areas - baseline_areas
        low, high = bootstrap_bands(
            differences[:, None, None], n_resamples=n_resamples, confidence=confidence, seed=seed
        )
        return AucDifference(
            metric=metric,
            auc=float(areas.mean()),
            baseline_auc=float(baseline_areas.mean()),
            difference=float(differences.mean()),
            low=float(low),
            high=float(high),
            n_resamples=int(n_resamples),
            confidence=float(confidence),
            num_images=int(chosen.sum()),
        )

    def as_dict(self) -> dict[str, Any]:
        """The curves as plain lists and numbers (for JSON): mode, order, draws, images,
        fraction, accuracy, accuracy_band, recall, class_output, class_output_band and the
        AUCs of accuracy and class output."""
        return {
            "mode": self.mode,
            "order": self.order,
            "draws": self.num_draws,
            "num_images": self.num_images,
            "fill": self.fill_label,
            "output": self.output,
            "target": "true class" if self.target is None else self.target,
            "fraction": self.fraction.tolist(),
            "accuracy": self.accuracy.tolist(),
            "accuracy_band": self.accuracy_band.tolist(),
            "recall": self.recall.tolist(),
            "class_output": self.class_output.tolist(),
            "class_output_band": self.class_output_band.tolist(),
            "auc_accuracy": self.auc("accuracy"),
            "auc_class_output": self.auc("class_output"),
        }

    def _per_image(self, metric: str, cls: object) -> tuple[Tensor, Tensor]:
        """(values (D, n, R + 1) float64 of the selected images, selection (N,) bool)."""
        if metric not in METRICS:
            raise InputValueError(
                f'metric: expected "accuracy", "class_output" or "recall", got {metric!r}'
            )
        if metric != "recall":
            if cls is not None:
                raise InputValueError(
                    f'cls: only "recall" reads one class, but metric={metric!r} was given '
                    f"with cls={cls!r}"
                )
            chosen = torch.ones(self.num_images, dtype=torch.bool)
            source = self.correct if metric == "accuracy" else self.class_outputs
            return source.to(torch.float64), chosen
        if cls is None:
            raise InputValueError('cls: metric="recall" needs the class, e.g. cls=3, got None')
        index = class_index(cls, self.num_classes, self.class_names)
        chosen = self.labels == index
        if not bool(chosen.any()):
            raise EmptySelectionError(
                f"cls: no image of {class_text(index, self.class_names)} among the "
                f"{self.num_images} images of this curve; its recall is undefined"
            )
        return self.correct[:, chosen].to(torch.float64), chosen
