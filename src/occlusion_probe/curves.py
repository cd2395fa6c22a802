"""perturbation_curve(): keep or remove the regions in ranked order, and watch the model.

The paper checks its finding with two points: keep only areas {10, 11} (Table 3) and only
{6, 7, 10, 11} (Table 4). Those are two points of the curve the faithfulness literature
scores an explanation by (region perturbation, Samek et al. 2017; deletion and insertion,
Petsiuk et al. 2018; random-order baselines as in ROAD): for k = 0..R, keep the first k
regions of an order and fill everything else (``mode="keep"``, insertion), or fill the first
k regions (``mode="remove"``, deletion), and record accuracy, per-class recall and the mean
output of the true class. A good ranking climbs fast when keeping and falls fast when
removing; a random order is the baseline.

The point at k is built as `keep_only` builds its images (``torch.where`` of the union of
the kept regions, the images and the fill, in the same chunks), on the model's device, in
blocks of (image, k) items through the same checked forward and fixed batch size as
`keep_only` (`occlusion_probe.batching.fixed_batch_size`), with the dense engine's block
loop (`occlusion_probe.engines.dense.run_items`): (R + 1) forwards per image and order
(the k = 0 and k = R images do not depend on the order and are run once per image, however
many random draws), and no Python loop per image.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .batching import BatchPlan, fixed_batch_size
from .data import Images, ImageSource, check_label_range
from .engines.dense import run_items
from .errors import EmptySelectionError, InputTypeError, InputValueError, describe
from .fills import Fill, FillSpec, check_fills_fit, fill_for_masks, resolve_fills, stack_fills
from .model import (
    CheckedForward,
    Model,
    OutputSpec,
    cast_images,
    check_finite_outputs,
    evaluation_mode,
    input_dtype,
    output_name,
    resolve_device,
)
from .regions import Regions
from .results import ClassReadings, PerturbationCurve, SweepResult
from .results.curve import MODES
from .selection import (
    check_bool,
    check_class_names,
    class_index,
    class_text,
    int_in_range,
    integer_value,
)
from .sweep import check_common_arguments

__all__ = ["DEFAULT_DRAWS", "perturbation_curve"]

#: Random orders drawn by ``order="random"`` unless ``draws=`` says otherwise.
DEFAULT_DRAWS = 10

# -- orders -----------------------------------------------------------------------------------


def _permutation(name: str, order: object, regions: Regions) -> Tensor:
    """Positions (R,) int64 of a sequence naming every region id exactly once."""
    if isinstance(order, (Tensor, np.ndarray)):
        if order.ndim != 1:
            raise InputValueError(
                f"{name}: expected region ids of shape (R,), one order for every image, "
                f"(N, R) or (D, N, R), orders per image, got {describe(order)}"
            )
        items: list[object] = list(order.tolist())
    elif isinstance(order, Sequence) and not isinstance(order, (str, bytes)):
        items = list(order)
    else:
        raise InputTypeError(f"{name}: expected a sequence of region ids, got {describe(order)}")
    ids = [integer_value(i) for i in items]
    bad = [items[j] for j, i in enumerate(ids) if i is None]
    if bad:
        raise InputTypeError(f"{name}: expected integer region ids, got {bad[:5]!r}")
    wanted = [int(i) for i in ids if i is not None]
    lookup = {region_id: position for position, region_id in enumerate(regions.ids)}
    shown = f"{regions.ids[0]}..{regions.ids[-1]}" if len(regions) > 8 else f"{list(regions.ids)}"
    unknown = [i for i in wanted if i not in lookup]
    if unknown:
        raise InputValueError(
            f"{name}: unknown region ids {unknown[:10]}; valid ids are {shown} "
            f"({len(regions)} regions)"
        )
    counts: dict[int, int] = {}
    for i in wanted:
        counts[i] = counts.get(i, 0) + 1
    repeated = sorted(i for i, count in counts.items() if count > 1)
    if repeated:
        raise InputValueError(
            f"{name}: region ids {repeated[:10]} appear more than once; an order names each "
            f"of the {len(regions)} regions exactly once"
        )
    if len(wanted) != len(regions):
        missing = [i for i in regions.ids if i not in counts]
        raise InputValueError(
            f"{name}: expected a permutation of all {len(regions)} region ids ({shown}), got "
            f"{len(wanted)} ids; missing {missing[:10]}"
        )
    return torch.tensor([lookup[i] for i in wanted], dtype=torch.int64)


def _per_image_orders(name: str, order: Tensor | np.ndarray, regions: Regions) -> Tensor:
    """Positions (D, N, R) int64 of region ids given per image: (N, R) or (D, N, R)."""
    ids = torch.as_tensor(order)
    if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
        raise InputTypeError(f"{name}: expected integer region ids, got {describe(order)}")
    if ids.dim() == 2:
        ids = ids[None]
    r = len(regions)
    if ids.shape[0] < 1 or ids.shape[2] != r:
        raise InputValueError(
            f"{name}: expected region ids of shape (N, {r}) or (D, N, {r}) (every one of the "
            f"{r} regions once per image and draw), got shape {tuple(order.shape)}"
        )
    known = torch.tensor(regions.ids, dtype=torch.int64)
    ordered, rank = known.sort()
    flat = ids.to(torch.int64).reshape(-1)
    slot = torch.searchsorted(ordered, flat).clamp(max=r - 1)
    unknown = ordered[slot] != flat
    if bool(unknown.any()):
        bad = torch.unique(flat[unknown])[:10].tolist()
        raise InputValueError(
            f"{name}: unknown region ids {bad}; valid ids are the {r} ids of `regions`"
        )
    positions = rank[slot].reshape(ids.shape)
    rows = positions.sort(dim=2).values != torch.arange(r)
    if bool(rows.any()):
        d, n = (int(i) for i in torch.nonzero(rows.any(dim=2))[0])
        raise InputValueError(
            f"{name}: the order of draw {d}, image {n} is no permutation of the {r} region "
            f"ids (it repeats some): {ids[d, n].tolist()}"
        )
    return positions.contiguous()


def _check_same_regions(result: ClassReadings, regions: Regions) -> None:
    theirs = result.regions
    if theirs.ids != regions.ids or not torch.equal(theirs.masks.cpu(), regions.masks.cpu()):
        raise InputValueError(
            f"order: the {type(result).__name__} was swept over other regions ({theirs!r}) "
            f"than `regions` ({regions!r}); rank with a sweep over the same regions"
        )


class _Orders:
    """The orders of each chunk's images: positions (D, n, R) int64 into the region masks."""

    def __init__(
        self,
        order: object,
        regions: Regions,
        *,
        per_image: bool,
        draws: int,
        seed: int,
        target: object,
        class_names: Sequence[str] | None,
    ) -> None:
        self.regions = regions
        self.draws = 1
        self.fixed: Tensor | None = None
        self.by_class: dict[int, Tensor] = {}
        self.readings: ClassReadings | None = None
        self.rng: np.random.Generator | None = None
        self.given: Tensor | None = None
        self.class_names = class_names
        if per_image and not isinstance(order, SweepResult):
            raise InputValueError(
                "per_image: True ranks each image by its own occlusion outputs and needs "
                f"order= a SweepResult of the same images, got order={describe(order)}"
            )
        if isinstance(order, str):
            if order != "random":
                raise InputValueError(
                    "order: expected a sequence of region ids, a mapping class -> region ids, a "
                    f'SweepResult or ClassMeanResult, or "random", got {order!r}'
                )
            self.draws = draws
            self.rng = np.random.default_rng(seed)
            self.description = f"random (seed {seed}, {draws} draws per image)"
        elif isinstance(order, ClassReadings):
            _check_same_regions(order, regions)
            if not per_image and isinstance(order, SweepResult) and order.labels is None:
                raise InputValueError(
                    "order: a SweepResult without labels cannot rank the regions per class (its "
                    "ranking reads each class's correctly classified images); pass labels= to "
                    "sweep, per_image=True to rank each image by its own outputs, or order= "
                    "region ids"
                )
            whose = "each image's true class" if target is None else "the target class"
            self.readings = order
            self.description = (
                f"per image: its own ranking in the SweepResult (mean drop over the fills of "
                f"{whose})"
                if per_image
                else f"per class: the {type(order).__name__}'s ranking (mean drop over the "
                f"fills, correctly classified images) of {whose}"
            )
        elif isinstance(order, Mapping):
            for key, value in order.items():
                index = self._class_key(key)
                self.by_class[index] = _permutation(f"order[{key!r}]", value, regions)
            self.description = "per class: given orders of each image's true class"
        elif isinstance(order, (Tensor, np.ndarray)) and order.ndim in (2, 3):
            self.given = _per_image_orders("order", order, regions)
            self.draws = int(self.given.shape[0])
            self.description = f"given per image ({self.draws} per image)"
        elif isinstance(order, (Sequence, Tensor, np.ndarray)) and not isinstance(order, bytes):
            self.fixed = _permutation("order", order, regions)
            ids = [regions.ids[p] for p in self.fixed.tolist()]
            self.description = f"given: {ids}"
        else:
            raise InputTypeError(
                "order: expected a sequence of region ids, a mapping class -> region ids, a "
                f'SweepResult or ClassMeanResult, or "random", got {describe(order)}'
            )
        self.per_image = per_image

    def _class_key(self, key: object) -> int:
        if isinstance(key, str):
            if self.class_names is None or key not in self.class_names:
                raise InputValueError(
                    f"order: the key {key!r} is no class name (class_names: "
                    f"{None if self.class_names is None else tuple(self.class_names)}); "
                    "use class indices"
                )
            return list(self.class_names).index(key)
        index = integer_value(key)
        if index is None or index < 0:
            raise InputTypeError(
                f"order: expected class indices >= 0 (or names) as keys, got {describe(key)}"
            )
        return index

    def check_images(self, num_images: int | None) -> None:
        """Before the run: a per-image ranking or orders given per image must be of the
        same images."""
        if self.given is not None and num_images is not None:
            if int(self.given.shape[1]) != num_images:
                raise InputValueError(
                    f"order: orders given for {int(self.given.shape[1])} images, but there are "
                    f"{num_images} images"
                )
        if self.per_image and num_images is not None and self.readings is not None:
            count = int(self.readings_result.num_images)
            if count != num_images:
                raise InputValueError(
                    f"order: per_image=True needs a SweepResult of the same {num_images} images, "
                    f"but it holds {count}"
                )

    @property
    def readings_result(self) -> SweepResult:
        if not isinstance(self.readings, SweepResult):  # unreachable by construction
            raise InputValueError("order: per_image=True needs a SweepResult")
        return self.readings

    def _class_rows(self, classes: Tensor, offset: int) -> Tensor:
        """Positions (n, R) of each image's class order (one lookup, no loop per image)."""
        present = sorted({int(c) for c in torch.bincount(classes).nonzero().flatten().tolist()})
        for cls in present:
            if cls not in self.by_class:
                first = offset + int(torch.nonzero(classes == cls)[0, 0])
                self.by_class[cls] = self._ranked(cls, first)
        if not present:
            return torch.zeros(0, len(self.regions), dtype=torch.int64)
        table = torch.zeros(max(present) + 1, len(self.regions), dtype=torch.int64)
        for cls in present:
            table[cls] = self.by_class[cls]
        return table[classes]

    def _ranked(self, cls: int, image: int) -> Tensor:
        """A class's order from the result's ranking; `image` is the first of that class."""
        if self.readings is None:
            raise InputValueError(
                f"order: no order for {class_text(cls, self.class_names)} (image "
                f"{image}); the mapping covers classes {sorted(self.by_class)}"
            )
        if cls >= self.readings.num_classes:
            raise InputValueError(
                f"order: the {type(self.readings).__name__} has {self.readings.num_classes} "
                f"classes, but image {image} is of class {cls}"
            )
        if self.readings.selected_count(cls) == 0:
            raise EmptySelectionError(
                f"order: the {type(self.readings).__name__} has no correctly classified image "
                f"of {class_text(cls, self.readings.class_names)} to rank the regions by "
                f"(image {image} is of that class); give images of ranked classes only, or "
                "order= a mapping class -> region ids"
            )
        ids = self.readings.ranking(cls)
        return torch.tensor(self.regions.positions(ids), dtype=torch.int64)

    def chunk(self, labels: Tensor, offset: int, tracked: Tensor) -> Tensor:
        """Positions (D, n, R) of the chunk's images `offset`..; `tracked` (n,) holds the
        class whose ranking orders each image."""
        n, r = int(labels.shape[0]), len(self.regions)
        if self.rng is not None:
            # Image-major draws: the same orders however the images are chunked.
            keys = self.rng.random((n, self.draws, r))
            positions = torch.from_numpy(np.argsort(keys, axis=-1, kind="stable"))
            return positions.transpose(0, 1).to(torch.int64)
        if self.given is not None:
            if offset + n > int(self.given.shape[1]):
                raise InputValueError(
                    f"order: orders given for {int(self.given.shape[1])} images, but the images "
                    f"go on past image {int(self.given.shape[1]) - 1}"
                )
            return self.given[:, offset : offset + n]
        if self.fixed is not None:
            return self.fixed.expand(1, n, r)
        if self.per_image:
            return self._own_rankings(labels, offset, tracked)[None]
        return self._class_rows(tracked, offset)[None]

    def _own_rankings(self, labels: Tensor, offset: int, tracked: Tensor) -> Tensor:
        result = self.readings_result
        n = int(labels.shape[0])
        if offset + n > result.num_images:
            raise InputValueError(
                f"order: per_image=True needs a SweepResult of the same images, but it holds "
                f"{result.num_images} and the images go on past image {result.num_images - 1}"
            )
        if result.labels is not None:
            theirs = result.labels[offset : offset + n]
            differ = torch.nonzero(theirs != labels).flatten()
            if differ.numel():
                raise InputValueError(
                    "order: per_image=True needs a SweepResult of the same images in the same "
                    f"order, but its labels differ at images {(differ[:10] + offset).tolist()}"
                )
        if int(tracked.max()) >= result.num_classes:
            raise InputValueError(
                f"order: the SweepResult has {result.num_classes} classes, fewer than the model"
            )
        rows = torch.arange(offset, offset + n)
        baseline = result.baseline[rows, tracked].to(torch.float64)  # (n,)
        occluded = result.occluded[rows, :, :, tracked].to(torch.float64)  # (n, R, V)
        drops = baseline[:, None] - occluded.mean(dim=2)
        keys = torch.nan_to_num(drops, nan=-float("inf"))
        return torch.sort(keys, dim=1, descending=True, stable=True).indices

    def check_count(self, seen: int) -> None:
        """After the run: a per-image ranking or orders given per image must cover exactly
        the images seen."""
        if self.given is not None and int(self.given.shape[1]) != seen:
            raise InputValueError(
                f"order: orders given for {int(self.given.shape[1])} images, but the stream "
                f"held {seen}"
            )
        if self.per_image and self.readings_result.num_images != seen:
            raise InputValueError(
                f"order: per_image=True needs a SweepResult of the same images, but it holds "
                f"{self.readings_result.num_images} and the stream held {seen}"
            )


# -- the run ----------------------------------------------------------------------------------


class _Items:
    """The perturbed images of one chunk, as flat items (image, slot).

    Per image there are S = 2 + D (R - 1) slots: slot 0 is k = 0 and slot 1 is k = R (both
    the same for every order), then k = 1..R-1 of each draw. Item (i, k, d) is
    ``torch.where(first k regions of order d of image i, images[i], fill)`` for keep (the
    other way round for remove). A region-aware fill gets each item's filled pixels as its
    region (the item's union for remove, the rest for keep).
    """

    def __init__(self, images: Tensor, fill: Fill, masks: Tensor, ranks: Tensor, mode: str) -> None:
        self.images, self.mode = images, mode
        self.region_fill = fill if fill.region is not None else None
        self.fill = images[:1] if fill.region is not None else stack_fills([fill], images)[0]
        self.masks = masks.reshape(masks.shape[0], -1).to(torch.float32)  # (R, H * W)
        self.ranks = ranks  # (D, n, R): ranks[d, i, j] = place of region j in order d of i
        self.r = int(masks.shape[0])
        self.d = int(ranks.shape[0])
        self.inner = max(self.r - 1, 0)
        self.slots = 2 + self.d * self.inner
        self.per_image_fill = self.fill.shape[0] != 1

    def index(self, start: int, stop: int) -> tuple[Tensor, Tensor, Tensor]:
        """(image, draw, k) of items [start, stop), on the images' device."""
        item = torch.arange(start, stop, device=self.images.device)
        image, slot = item // self.slots, item % self.slots
        inner = torch.clamp(slot - 2, min=0)
        width = max(self.inner, 1)
        k = torch.where(slot == 0, 0, torch.where(slot == 1, self.r, 1 + inner % width))
        draw = torch.where(slot < 2, 0, inner // width)
        return image, draw, k

    def write(self, start: int, stop: int, out: Tensor) -> None:
        image, draw, k = self.index(start, stop)
        chosen = self.ranks[draw, image] < k[:, None]  # (b, R): among the first k regions
        spatial = self.images.shape[2:]
        # Pixels in the union of the chosen regions (a count > 0; exact in float32).
        inside = ((chosen.to(torch.float32) @ self.masks) > 0.5).reshape(-1, 1, *spatial)
        kept = self.images[image]
        if self.region_fill is not None:
            filled = inside[:, 0] if self.mode == "remove" else ~inside[:, 0]
            fill = fill_for_masks(self.region_fill, kept, filled)
        else:
            fill = self.fill[image] if self.per_image_fill else self.fill
        if self.mode == "keep":
            torch.where(inside, kept, fill, out=out)
        else:
            torch.where(inside, fill, kept, out=out)

    def unfold(self, values: Tensor) -> Tensor:
        """Per-item values (n * S,) as (D, n, R + 1)."""
        n = values.shape[0] // self.slots
        per_slot = values.reshape(n, self.slots)
        out = torch.empty((self.d, n, self.r + 1), dtype=values.dtype, device=values.device)
        out[:, :, 0] = per_slot[:, 0]
        out[:, :, self.r] = per_slot[:, 1]
        if self.inner:
            out[:, :, 1 : self.r] = per_slot[:, 2:].reshape(n, self.d, self.inner).transpose(0, 1)
        return out


def perturbation_curve(
    model: Model,
    images: Images,
    regions: Regions,
    order: Sequence[int] | Mapping[object, Sequence[int]] | ClassReadings | str | Tensor,
    *,
    mode: Literal["keep", "remove"] = "keep",
    labels: Tensor | Sequence[int] | None = None,
    fill: FillSpec = 0.0,
    target: object = None,
    per_image: bool = False,
    draws: int = DEFAULT_DRAWS,
    seed: int = 0,
    output: OutputSpec = "softmax",
    batch_size: int | str = "auto",
    device: torch.device | str | None = None,
    progress: bool = True,
    class_names: Sequence[str] | None = None,
) -> PerturbationCurve:
    """Keep (or remove) the regions in order, k = 0..R of them, and record the model.

    For each image and k, the first k regions of the image's order stay visible and every
    other pixel is set to `fill` (``mode="keep"``, insertion), or those k regions are set to
    `fill` (``mode="remove"``, deletion). The keep point at k is exactly the image
    ``keep_only(..., keep=<the first k ids>)`` builds, and its predictions are the argmax of
    the same outputs; with the same batch size the confusion matrix of every point equals
    `keep_only`'s to the bit (`PerturbationCurve.report`), up to models whose outputs depend
    on the batch they run in. For a partition, the remove point at k equals `keep_only`
    keeping the other R - k regions.

    Parameters
    ----------
    model : callable, Tensor (B, C, H, W) -> Tensor (B, K) or a model output holding it
        Any classifier, called by the rules of `sweep`.
    images : Tensor, shape (N, C, H, W) or (N, H, W), or an iterable of (images, labels) batches
        Raw images in the space where `fill` makes sense, as in `sweep`.
    regions : Regions, masks (R, H, W)
        The regions the orders rank.
    order : sequence of int, mapping, SweepResult, ClassMeanResult, "random" or Tensor
        How each image's regions are ordered:

        - a sequence naming every region id once: the same order for every image;
        - a mapping class -> such a sequence (class indices, or names with `class_names`):
          each image by its true class's order;
        - a `SweepResult` or `ClassMeanResult` over the same regions: each image by its
          class's ``result.ranking(cls)`` (mean drop over the fills, correctly classified
          images; the class is the image's true class, or `target`);
        - a `SweepResult` with ``per_image=True``: each image by its own drops in that
          result (the same N images in the same order), of its true class (or `target`),
          mean over the fills, largest first (ties: the earlier region first);
        - ``"random"``: `draws` independent uniform orders per image (seeded by `seed`);
          the curves are the mean over the draws, and the bands their 2.5th to 97.5th
          percentiles;
        - a Tensor (or array) of region ids of shape (N, R), one order per image, or
          (D, N, R), D orders per image (the curves are the mean over them, with bands, as
          for ``"random"``): e.g. ``order=earlier.orders`` runs another fill with the very
          orders of an earlier curve (over the same N images).
    mode : {"keep", "remove"}
        Keep the first k regions (fill the rest), or fill the first k regions.
    labels : Tensor or sequence of int, shape (N,), or None
        True classes; None when the batches carry labels.
    fill : number, Tensor, callable or RegionFill
        A number, a tensor broadcastable to one image, a callable images -> fill images, or
        a region-aware fill (`occlusion_probe.fills`), which gets each point's filled pixels
        as its region (``fill=op.fills.linear_imputation()`` for ROAD's imputation).
    target : int or str, optional
        The class whose output `class_output` tracks (and whose ranking orders the images
        with a result as `order`); None: each image's true class.
    per_image : bool
        With a `SweepResult` as `order`: rank each image by its own occlusion outputs.
    draws : int
        Orders per image with ``order="random"`` (default 10); ignored otherwise (orders
        given per image bring their own D).
    seed : int
        Seed of the random orders (numpy's default generator; the same orders however the
        images are batched); ignored otherwise.
    output : str or callable
        What `class_outputs` records: ``"softmax"`` (the default), ``"logits"``,
        ``"probabilities"`` or a callable, as in `sweep`. The prediction is the argmax of
        the logits for ``"softmax"``, else of the recorded outputs (as in `keep_only`).
    batch_size : int or "auto"
        Perturbed images per model call, or ``"auto"``: chosen as in `keep_only`.
    device : torch.device or str, optional
        Where the images are built and the model runs, as in `sweep`.
    progress : bool
        Show a tqdm progress bar.
    class_names : sequence of str, optional
        K distinct names, kept on the result.

    Returns
    -------
    PerturbationCurve
        ``accuracy`` (R + 1,), ``recall`` (R + 1, K), ``class_output`` (R + 1,), ``auc()``,
        ``compare(random_curve)``; the model runs (R + 1) times per image and order (the two
        ends once per image).

    Raises
    ------
    InputTypeError
        When an argument has a type `perturbation_curve` cannot work with.
    InputValueError
        When an argument has an unusable value: an order with unknown or repeated region
        ids or that is not a permutation of the regions, a result swept over other regions
        (or, with ``per_image=True``, over other images), orders given per image for
        another number of images, a class without an order,
        missing labels, an unknown mode; or the model produces NaN or inf outputs.
    EmptySelectionError
        When a result ranks a class with no correctly classified image, and an image is of
        that class.

    Notes
    -----
    Unlike `sweep`, it does not shard over ``torch.distributed`` ranks (`keep_only` does
    not either); under torchrun every rank computes the whole curve.

    Examples
    --------
    >>> import torch, occlusion_probe as op
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    >>> images, labels = torch.rand(9, 1, 8, 8), torch.arange(9) % 3
    >>> ranked = op.perturbation_curve(model, images, op.grid(8, 8, 2, 2), [2, 1, 3, 4],
    ...                                labels=labels, mode="remove", progress=False)
    >>> random = op.perturbation_curve(model, images, op.grid(8, 8, 2, 2), "random",
    ...                                labels=labels, mode="remove", draws=3, progress=False)
    >>> tuple(random.accuracy_band.shape), random.num_draws
    ((2, 5), 3)
    >>> difference = ranked.compare(random, n_resamples=200)
    >>> difference.low <= difference.difference <= difference.high
    True
    """
    model = check_common_arguments(model, regions, batch_size, progress)
    if regions.weights is not None:
        raise InputValueError(
            "regions: perturbation_curve keeps or fills whole regions and does not read soft weights; "
            "got soft regions (Regions.soften): pass the regions before soften"
        )
    if mode not in MODES:
        raise InputValueError(f'mode: expected "keep" or "remove", got {mode!r}')
    flag = check_bool("per_image", per_image)
    draw_count = int_in_range("draws", draws, 1, 2**20)
    seed_value = integer_value(seed)
    if seed_value is None:
        raise InputTypeError(f"seed: expected an int, got {describe(seed)}")
    if seed_value < 0:
        raise InputValueError(f"seed: expected an int >= 0 (numpy's seeds), got {seed_value}")
    out_name = output_name(output)
    names = check_class_names(class_names)
    if target is not None and not isinstance(target, str) and integer_value(target) is None:
        raise InputTypeError(
            f"target: expected a class index (int) or name, or None, got {describe(target)}"
        )
    orders = _Orders(
        order,
        regions,
        per_image=flag,
        draws=draw_count,
        seed=seed_value,
        target=target,
        class_names=names,
    )
    source = ImageSource(images, labels, regions.spatial_shape)
    if not source.is_stream and labels is None:
        raise InputValueError(
            "labels: perturbation_curve needs the true class of every image, got None"
        )
    orders.check_images(source.num_images)
    (fill_spec,) = resolve_fills([fill], source.image_shape, "fill")
    run_device = resolve_device(device, model, source.device)
    dtype = input_dtype(model) or source.dtype
    check_fills_fit([fill_spec], dtype, "fill")
    # The first call goes through the `output` given (so that softmax over outputs that
    # already are probabilities warns as in `sweep`); the run records logits for "softmax",
    # predicts from them as `keep_only` does and applies the same softmax afterwards.
    if out_name == "softmax":
        probe = CheckedForward(model, output, single_channel=source.single_channel, dtype=dtype)
        probe.check_first(source.first_images(), run_device)
    recorded: OutputSpec = "logits" if out_name == "softmax" else output
    forward = CheckedForward(model, recorded, single_channel=source.single_channel, dtype=dtype)
    forward.check_first(source.first_images(), run_device)
    tracked_index = _target_index(target, forward.num_classes, names)
    if forward.num_classes is not None:
        check_class_names(names, forward.num_classes)
    r = len(regions)
    slots = 2 + orders.draws * max(r - 1, 0)
    total = None if source.num_images is None else source.num_images * slots
    per_call = fixed_batch_size(model, batch_size, source.image_shape, dtype, run_device, total)
    masks = regions.masks.to(run_device)
    all_labels: list[Tensor] = []
    all_orders: list[Tensor] = []
    all_predicted: list[Tensor] = []
    all_outputs: list[Tensor] = []
    seen = 0
    bar = tqdm(
        total=total,
        disable=not progress,
        unit="img",
        desc=f"perturbation curve ({mode})",
        file=sys.stderr,
    )
    try:
        with evaluation_mode(model):
            for chunk in source:
                if chunk.labels is None:
                    raise InputValueError(
                        f"images[batch {chunk.index}]: perturbation_curve needs labels with "
                        "every batch"
                    )
                n = int(chunk.images.shape[0])
                forward.where = (
                    f"batch {chunk.index}" if source.is_stream else f"chunk {chunk.index}"
                )
                if forward.num_classes is not None:
                    name = "labels" if not source.is_stream else f"labels[batch {chunk.index}]"
                    check_label_range(name, chunk.labels, forward.num_classes)
                tracked = (
                    chunk.labels
                    if tracked_index is None
                    else torch.full_like(chunk.labels, tracked_index)
                )
                positions = orders.chunk(chunk.labels, seen, tracked)  # (D, n, R)
                ranks = torch.empty_like(positions).scatter_(
                    2, positions, torch.arange(r).expand_as(positions).contiguous()
                )
                x = cast_images(chunk.images.to(run_device), dtype)
                items = _Items(x, fill_spec, masks, ranks.to(run_device), mode)
                plan = BatchPlan.fixed(per_call)
                outputs = run_items(
                    functools.partial(forward, scratch=True),
                    items.write,
                    n * items.slots,
                    source.image_shape,
                    torch.promote_types(x.dtype, items.fill.dtype),
                    run_device,
                    plan,
                    forward.num_classes or 0,
                    bar.update,
                )
                num_classes = int(outputs.shape[1])
                check_finite_outputs(
                    outputs.reshape(n, -1), seen, f"{mode}-perturbed copies (chunk {chunk.index})"
                )
                name = "labels" if not source.is_stream else f"labels[batch {chunk.index}]"
                check_label_range(name, chunk.labels, num_classes)
                tracked_index = _target_index(target, num_classes, names)
                values = torch.softmax(outputs, dim=1) if out_name == "softmax" else outputs
                image, _draw, _k = items.index(0, n * items.slots)
                column = tracked.to(run_device)[image]
                chosen = values.gather(1, column[:, None])[:, 0]
                all_predicted.append(items.unfold(outputs.argmax(dim=1)).cpu())
                all_outputs.append(items.unfold(chosen).cpu())
                all_orders.append(positions)
                all_labels.append(chunk.labels)
                seen += n
    finally:
        bar.close()
    orders.check_count(seen)
    ids = torch.tensor(regions.ids, dtype=torch.int64)
    num_classes = forward.num_classes or 0
    return PerturbationCurve(
        mode=mode,
        order=orders.description,
        region_ids=regions.ids,
        orders=ids[torch.cat(all_orders, dim=1)],
        labels=torch.cat(all_labels),
        predicted=torch.cat(all_predicted, dim=1),
        class_outputs=torch.cat(all_outputs, dim=1),
        num_classes=num_classes,
        target=tracked_index,
        class_names=check_class_names(names, num_classes),
        output=out_name,
        fill_label=fill_spec.label,
        partition=regions.is_partition,
    )


def _target_index(
    target: object, num_classes: int | None, class_names: Sequence[str] | None
) -> int | None:
    """The index of `target` (None stays None); its range is checked once K is known."""
    if target is None:
        return None
    if num_classes is None:
        if isinstance(target, str):
            return class_index(target, len(class_names or ()) or 1, class_names, name="target")
        return integer_value(target)
    return class_index(target, num_classes, class_names, name="target")
