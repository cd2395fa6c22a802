"""The keep / remove perturbation curves of the report, under fill 0.0 and under imputation.

Tables 3 and 4 are two points of a keep curve; the report draws the whole keep and remove
curves, ranked by the sweep vs random orders, first with the paper's fill 0.0 and then with
ROAD's noisy linear imputation (`occlusion_probe.fills.linear_imputation`). With a constant
fill, an image that is mostly fill has a shape the model can read (class information
leakage, Rong, Leemann et al., ICML 2022); imputing the removed areas from their
neighbours hides that shape, so a ranked remove curve that still rises above the random
one under imputation is the model's, not the mask's.

Random orders come from a small pool shared by both fills: every image gets `draws` orders
drawn from `pool` seeded random orders of the 16 areas. Each image's order is uniform, as
with ``order="random"``, but the images share few distinct orders, so the imputation meets
few distinct masks (at most ``pool x 15`` unions, each factorised once) and the constant
and imputed curves of an image use the very same orders. Imputation runs on a seeded
subset of the images; the constant curves restricted to the same subset are shown beside
it.

Per fill, one keep call runs every order of an image: its class's ranking, that ranking
reversed and its random orders. Removing the first k areas of an order keeps the last
16 - k, the first 16 - k of the reversed order, so the remove curves are the keep curves of
the reversed orders mirrored (`op.PerturbationCurve.mirrored`), and the two ends (k = 0
and 16) run once per image: 2 + 15 (2 + draws) forwards per image, 62 with 2 draws.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

import occlusion_probe as op

__all__ = [
    "CurveSet",
    "PerturbationCurves",
    "class_orders",
    "compute_curves",
    "leakage",
    "leakage_sentence",
    "perturbation_figure",
    "perturbation_markdown",
    "perturbation_payload",
    "shared_random_orders",
    "spans",
]

BOOTSTRAP_RESAMPLES = 2000


@dataclass(frozen=True, eq=False)
class CurveSet:
    """Keep and remove curves under one fill over one set of images, ranked and random
    (the random remove curve is the random keep curve mirrored)."""

    keep: op.PerturbationCurve
    keep_random: op.PerturbationCurve
    remove: op.PerturbationCurve
    remove_random: op.PerturbationCurve

    def images(self, indices: Tensor, note: str) -> CurveSet:
        """The same curves over the images `indices` (positions into these curves' images)."""
        return CurveSet(*(_subset(curve, indices, note) for curve in self.curves()))

    def curves(self) -> tuple[op.PerturbationCurve, ...]:
        return (self.keep, self.keep_random, self.remove, self.remove_random)

    @property
    def fill(self) -> str:
        return self.keep.fill_label


def _subset(curve: op.PerturbationCurve, indices: Tensor, note: str) -> op.PerturbationCurve:
    return replace(
        curve,
        order=f"{curve.order}; {note}",
        orders=curve.orders[:, indices],
        labels=curve.labels[indices],
        predicted=curve.predicted[:, indices],
        class_outputs=curve.class_outputs[:, indices],
    )


@dataclass(frozen=True, eq=False)
class PerturbationCurves:
    """Keep and remove curves of the test images, ranked by the sweep vs random orders.

    ``keep`` ... ``remove_random``: fill 0.0 over all curve images; ``left_out``: class name
    -> test images left out (their class has no ranking); ``order_pool``: the number of
    random orders the images' random orders are drawn from; ``imputed``: the same curves
    under linear imputation over the images ``subset`` (positions into the curve images,
    increasing), with the same orders; ``imputation_seconds``: the time the imputed curves
    took.
    """

    keep: op.PerturbationCurve
    keep_random: op.PerturbationCurve
    remove: op.PerturbationCurve
    remove_random: op.PerturbationCurve
    left_out: dict[str, int]
    order_pool: int
    imputed: CurveSet | None = None
    subset: tuple[int, ...] = ()
    imputation_seconds: float = 0.0

    @property
    def constant(self) -> CurveSet:
        return CurveSet(self.keep, self.keep_random, self.remove, self.remove_random)

    @property
    def constant_on_subset(self) -> CurveSet:
        """The fill-0.0 curves over the images of the imputed ones."""
        note = f"the {len(self.subset)} images of the imputed curves"
        return self.constant.images(torch.tensor(self.subset, dtype=torch.int64), note)


def shared_random_orders(
    num_images: int, regions: op.Regions, draws: int, pool: int, seed: int
) -> Tensor:
    """Region ids (draws, num_images, R): each image's `draws` orders, distinct, drawn
    uniformly from `pool` seeded uniform random orders of the regions."""
    if not 1 <= draws <= pool:
        raise ValueError(
            f"draws, pool: expected 1 <= draws <= pool (distinct orders per image from the "
            f"pool), got draws={draws}, pool={pool}"
        )
    generator = torch.Generator().manual_seed(seed)
    r = len(regions)
    orders = torch.stack([torch.randperm(r, generator=generator) for _ in range(pool)])
    picks = torch.rand(num_images, pool, generator=generator).argsort(dim=1)[:, :draws]
    ids = torch.tensor(regions.ids, dtype=torch.int64)
    return ids[orders[picks.T]]


def class_orders(result: op.SweepResult, labels: Tensor, regions: op.Regions) -> Tensor:
    """Region ids (N, R): each image's true class's ranking in the sweep (largest mean drop
    first), the order ``op.perturbation_curve(..., order=result)`` gives it."""
    table = {
        cls: torch.tensor(result.ranking(cls), dtype=torch.int64)
        for cls in torch.unique(labels).tolist()
    }
    if not len(labels):
        return torch.zeros(0, len(regions), dtype=torch.int64)
    return torch.stack([table[int(cls)] for cls in labels])


def _draws(curve: op.PerturbationCurve, which: slice, order: str) -> op.PerturbationCurve:
    return replace(
        curve,
        order=order,
        orders=curve.orders[which],
        predicted=curve.predicted[which],
        class_outputs=curve.class_outputs[which],
    )


def _curve_set(
    model: nn.Module,
    images: Tensor,
    regions: op.Regions,
    result: op.SweepResult,
    random_orders: Tensor,
    common: Mapping[str, Any],
) -> CurveSet:
    """The four curves from one keep call over the orders: the ranking, the reversed ranking,
    and the D random orders (random_orders: region ids (D, N, R)); the two ends (k = 0 and
    16, the same for every order) run once per image: 2 + 15 (2 + D) forwards per image."""
    ranked = class_orders(result, common["labels"], regions)
    orders = torch.cat([ranked[None], ranked.flip(-1)[None], random_orders])
    keep = op.perturbation_curve(model, images, regions, orders, mode="keep", **common)
    draws = random_orders.shape[0]
    by_class = "per class: the sweep's ranking (mean drop over the fills) of the true class"
    random = f"random: {draws} orders per image from a seeded pool"
    # On a grid keeping the first 16 - k areas of an order is removing the other k, the first
    # k of the reversed order: removing in ranked order is keeping in reversed ranked order,
    # mirrored, and the reverse of a random order is random (the same images to the bit).
    reversed_keep = _draws(keep, slice(1, 2), by_class)
    random_keep = _draws(keep, slice(2, None), random)
    return CurveSet(
        _draws(keep, slice(0, 1), by_class),
        random_keep,
        replace(reversed_keep.mirrored(), order=by_class),
        replace(random_keep.mirrored(), order=f"{random}, reversed"),
    )


def compute_curves(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    result: op.SweepResult,
    regions: op.Regions,
    *,
    common: Mapping[str, Any],
    draws: int,
    pool: int,
    imputation_images: int,
    seed: int,
    left_out: dict[str, int],
) -> PerturbationCurves:
    """The curves under fill 0.0 over all `images`, and under linear imputation over a
    seeded subset of `imputation_images` of them (0: none), with shared random orders.

    common : keyword arguments of every `op.perturbation_curve` call (output, batch size,
        device, progress, class names), without `labels` and `fill`.
    """
    orders = shared_random_orders(images.shape[0], regions, draws, pool, seed)
    constant = _curve_set(
        model, images, regions, result, orders, {**common, "labels": labels, "fill": 0.0}
    )
    count = min(imputation_images, images.shape[0])
    if count <= 0:
        return PerturbationCurves(*constant.curves(), left_out=left_out, order_pool=pool)
    generator = torch.Generator().manual_seed(seed)
    subset = torch.randperm(images.shape[0], generator=generator)[:count].sort().values
    started = time.perf_counter()
    # One keep call runs every order, so the fill factorises each distinct mask once.
    imputation = op.fills.linear_imputation()
    imputed = _curve_set(
        model,
        images[subset],
        regions,
        result,
        orders[:, subset],
        {**common, "labels": labels[subset], "fill": imputation},
    )
    seconds = time.perf_counter() - started
    return PerturbationCurves(
        *constant.curves(),
        left_out=left_out,
        order_pool=pool,
        imputed=imputed,
        subset=tuple(int(i) for i in subset),
        imputation_seconds=seconds,
    )


# -- what the report reads ----------------------------------------------------------------------


def leakage(curves: CurveSet) -> dict[str, Any]:
    """Where the ranked remove curve's accuracy lies above the random one's.

    ``difference``: per k = 0..R, the ranked minus the random accuracy; ``above``: the k
    where the ranked curve is higher; ``intervals``: for each such k, the 95 % paired
    percentile bootstrap interval of the difference over the images (each image: its 0/1
    correctness at k under the ranked order minus its mean over its random orders);
    ``significant``: the k whose interval lies above 0.
    """
    ranked = curves.remove.correct.to(torch.float64).mean(dim=0)  # (N, R + 1)
    random = curves.remove_random.correct.to(torch.float64).mean(dim=0)
    differences = ranked - random
    mean = differences.mean(dim=0)
    above = [k for k in range(1, mean.shape[0] - 1) if float(mean[k]) > 0]
    intervals: dict[int, tuple[float, float]] = {}
    if above:
        low, high = op.stats.bootstrap_bands(
            differences[:, above, None], n_resamples=BOOTSTRAP_RESAMPLES, seed=0
        )
        intervals = {k: (float(low[j, 0]), float(high[j, 0])) for j, k in enumerate(above)}
    return {
        "fill": curves.fill,
        "num_images": curves.remove.num_images,
        "difference": mean.tolist(),
        "above": above,
        "intervals": {str(k): list(bounds) for k, bounds in intervals.items()},
        "significant": [k for k in above if intervals[k][0] > 0],
    }


def _auc_differences(curves: CurveSet) -> dict[str, dict[str, float | int]]:
    differences: dict[str, dict[str, float | int]] = {}
    for mode, ranked, random in (
        ("keep", curves.keep, curves.keep_random),
        ("remove", curves.remove, curves.remove_random),
    ):
        difference = ranked.compare(random, n_resamples=BOOTSTRAP_RESAMPLES)
        differences[mode] = {
            "auc": difference.auc,
            "random_auc": difference.baseline_auc,
            "difference": difference.difference,
            "low": difference.low,
            "high": difference.high,
            "confidence": difference.confidence,
            "n_resamples": difference.n_resamples,
        }
    return differences


def _curve_set_payload(curves: CurveSet) -> dict[str, Any]:
    return {
        "fill": curves.fill,
        "num_images": curves.keep.num_images,
        **{
            name: curve.as_dict()
            for name, curve in zip(
                ("keep", "keep_random", "remove", "remove_random"), curves.curves(), strict=True
            )
        },
        "auc_difference": _auc_differences(curves),
        "leakage": leakage(curves),
    }


def perturbation_payload(
    curves: PerturbationCurves | None, tables: Sequence[op.ConfusionReport]
) -> dict[str, Any] | None:
    """The perturbation curves for report.json, or None without curves.

    Keys: ``keep``, ``keep_random``, ``remove``, ``remove_random`` (each
    `PerturbationCurve.as_dict`: fraction k/16, accuracy, bands, recall, class output, AUCs),
    ``auc_difference`` (mode -> ranked minus random AUC of the accuracy with its 95 % paired
    bootstrap interval over the images, 2000 resamples), ``leakage`` (see `leakage`),
    ``table_points`` (Tables 3 and 4, `tables`, as points of the keep curve: k, kept areas,
    the table's accuracy and the ranked and random curves' accuracy at that k),
    ``num_images``, ``left_out``, ``order_pool``, and ``imputation`` (None when not run):
    ``fill``, ``num_images``, ``seconds``, ``subset`` (positions into the curve images),
    ``imputed`` and ``constant_on_subset`` (each the four curves, ``auc_difference`` and
    ``leakage`` over the subset).
    """
    if curves is None:
        return None
    constant = _curve_set_payload(curves.constant)
    points = {}
    for number, report in zip((3, 4), tables, strict=True):
        k = len(report.kept_ids)
        points[f"table{number}"] = {
            "k": k,
            "kept_areas": list(report.kept_ids),
            "table_accuracy": report.accuracy,
            "ranked_accuracy": float(curves.keep.accuracy[k]),
            "random_accuracy": float(curves.keep_random.accuracy[k]),
        }
    imputation = None
    if curves.imputed is not None:
        imputation = {
            "fill": curves.imputed.fill,
            "num_images": len(curves.subset),
            "seconds": curves.imputation_seconds,
            "subset": list(curves.subset),
            "imputed": _curve_set_payload(curves.imputed),
            "constant_on_subset": _curve_set_payload(curves.constant_on_subset),
        }
    return {
        **{name: constant[name] for name in ("keep", "keep_random", "remove", "remove_random")},
        "auc_difference": constant["auc_difference"],
        "leakage": constant["leakage"],
        "table_points": points,
        "num_images": curves.keep.num_images,
        "left_out": dict(curves.left_out),
        "order_pool": curves.order_pool,
        "imputation": imputation,
    }


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def spans(ks: Sequence[int]) -> str:
    """[9, 10, 11, 13] -> "9-11, 13"."""
    runs: list[list[int]] = []
    for k in ks:
        if runs and k == runs[-1][-1] + 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    return ", ".join(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs)


def leakage_sentence(found: Mapping[str, Any], images: str) -> str:
    """One sentence, from the numbers, on where the ranked remove curve lies above random."""
    name = "fill 0.0" if found["fill"] == "0.0" else f"`{found['fill']}`"
    above: list[int] = found["above"]
    if not above:
        return (
            f"With {name} ({images}), the ranked remove curve stays at or below the random "
            "one at every k."
        )
    gaps = found["difference"]
    worst = max(above, key=lambda k: gaps[k])
    significant: list[int] = found["significant"]
    return (
        f"With {name} ({images}), the ranked remove curve rises above the random one at "
        f"k = {spans(above)} (by up to {100 * gaps[worst]:.1f} points, at k = {worst}; "
        + (
            f"the 95 % paired bootstrap interval lies above 0 at k = {spans(significant)})."
            if significant
            else "the 95 % paired bootstrap interval includes 0 at every such k)."
        )
    )


def _auc_rows(label: str, curve_set: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for mode in ("keep", "remove"):
        difference = curve_set["auc_difference"][mode]
        rows.append(
            [
                mode,
                label,
                str(curve_set["num_images"]),
                f"{difference['auc']:.3f}",
                f"{difference['random_auc']:.3f}",
                f"{difference['difference']:+.3f} [{difference['low']:+.3f}, "
                f"{difference['high']:+.3f}]",
                f"{curve_set[mode]['auc_class_output']:.3f}",
            ]
        )
    return rows


_ROW_NAMES = {
    "keep": "keep, ranked",
    "keep_random": "keep, random",
    "remove": "remove, ranked",
    "remove_random": "remove, random",
}


def _accuracy_rows(
    label: str, curve_set: Mapping[str, Any], shown: Sequence[int]
) -> list[list[str]]:
    return [
        [f"{row}, {label}", *[_percent(curve_set[name]["accuracy"][k]) for k in shown]]
        for name, row in _ROW_NAMES.items()
    ]


def perturbation_markdown(payload: Mapping[str, Any]) -> list[str]:
    """The report section on the keep and remove curves."""
    curves = payload.get("perturbation_curves")
    parts = ["## Tables 3 and 4 as points of curves: keep and remove, ranked vs random\n"]
    if curves is None:
        return [*parts, "No curves: no test image is of a class the sweep could rank.\n"]
    left_out = curves["left_out"]
    imputation = curves["imputation"]
    parts.append(
        "Tables 3 and 4 are two points of a curve: keep only the first k areas of an order "
        "(everything else set to 0.0) for k = 0..16 (insertion), or set the first k areas "
        "to 0.0 (deletion). Ranked: each test image's areas in its true class's ranking from "
        "the sweep (largest mean drop first); random: "
        f"{curves['keep_random']['draws']} random orders per image, drawn from a pool of "
        f"{curves['order_pool']} seeded random orders of the 16 areas (each image's order is "
        "uniform; the pool keeps the distinct masks few, and the constant and imputed curves "
        "use the same orders), mean and the 2.5-97.5 percentiles of the draws. The remove "
        "curves are keep curves mirrored: on a grid, keeping the first 16 - k areas of an "
        "order is removing the last k, the first k of the reversed order, so ranked removal "
        "is keeping in reversed ranked order, and the reverse of a random order is random "
        "too. AUC: trapezoid over k / 16 in [0, 1] (keep: higher is a better "
        "ranking; remove: lower is). Difference: ranked minus random, with a 95 % paired "
        f"bootstrap interval over the images ({BOOTSTRAP_RESAMPLES} resamples). "
        f"Over {curves['num_images']} test images"
        + (
            " (left out, their class has no correctly classified test image to rank by: "
            + ", ".join(f"{name} {count}" for name, count in left_out.items())
            + "; Tables 3 and 4 count them)"
            if left_out
            else ""
        )
        + ". Figure: `perturbation_curves.png`.\n"
    )
    if imputation is not None:
        parts.append(
            "**Imputation.** A constant fill leaves the shape of what is kept for the model "
            "to read (class information leakage: Rong, Leemann et al., ICML 2022, ROAD). The "
            f"same curves with `{imputation['fill']}` (ROAD's noisy linear imputation: each "
            "filled pixel the weighted mean of its eight neighbours, 1/6 direct and 1/12 "
            "diagonal, plus noise of standard deviation 0.01) run over a seeded random "
            f"subset of {imputation['num_images']} of the {curves['num_images']} images, "
            "beside the fill-0.0 curves of the same images and orders; they took "
            f"{imputation['seconds']:.1f} s of the analysis.\n"
        )
    rows = _auc_rows("0.0", curves)
    if imputation is not None:
        rows += _auc_rows("0.0", imputation["constant_on_subset"])
        rows += _auc_rows("imputation", imputation["imputed"])
    parts.append(
        _markdown_table(
            [
                "mode",
                "fill",
                "images",
                "AUC accuracy, ranked",
                "AUC accuracy, random",
                "ranked - random [95 % CI]",
                "AUC true-class softmax, ranked",
            ],
            rows,
        )
    )
    shown = [0, 1, 2, 3, 4, 6, 8, 10, 12, 14, 16]
    accuracy_rows = _accuracy_rows(f"0.0 ({curves['num_images']} images)", curves, shown)
    if imputation is not None:
        count = imputation["num_images"]
        accuracy_rows += _accuracy_rows(
            f"0.0 ({count} images)", imputation["constant_on_subset"], shown
        )
        accuracy_rows += _accuracy_rows(
            f"imputation ({count} images)", imputation["imputed"], shown
        )
    parts.append(_markdown_table(["k", *[str(k) for k in shown]], accuracy_rows))
    parts.append(
        _markdown_table(
            ["table", "kept areas", "k", "table accuracy", "ranked keep at k", "random keep at k"],
            [
                [
                    name.replace("table", "Table "),
                    str(point["kept_areas"]),
                    str(point["k"]),
                    _percent(point["table_accuracy"]),
                    _percent(point["ranked_accuracy"]),
                    _percent(point["random_accuracy"]),
                ]
                for name, point in curves["table_points"].items()
            ],
        )
    )
    sentences = [leakage_sentence(curves["leakage"], f"{curves['num_images']} images")]
    if imputation is not None:
        count = imputation["num_images"]
        sentences.append(
            leakage_sentence(imputation["constant_on_subset"]["leakage"], f"{count} images")
        )
        sentences.append(leakage_sentence(imputation["imputed"]["leakage"], f"{count} images"))
    parts.append("**Leakage check.** " + " ".join(sentences) + "\n")
    return parts


def perturbation_figure(curves: PerturbationCurves, tables: Sequence[op.ConfusionReport]) -> Figure:
    """Keep and remove accuracy curves, ranked vs random (with its band), Tables 3 and 4
    (`tables`) marked on the keep curve; a second row under imputation when it ran."""
    marks = {
        f"Table {number}: keep {{{', '.join(map(str, sorted(report.kept_ids)))}}}": (
            len(report.kept_ids),
            report.accuracy,
        )
        for number, report in zip((3, 4), tables, strict=True)
    }
    sets = [(f"0.0, {curves.keep.num_images} images", curves.constant)]
    if curves.imputed is not None:
        count = len(curves.subset)
        sets.append((f"imputation, {count} images", curves.imputed))
    figure = Figure(figsize=(12, 4.5 * len(sets)), layout="constrained")
    axes = figure.subplots(len(sets), 2, squeeze=False)
    for row, (label, curve_set) in enumerate(sets):
        draws = curve_set.keep_random.num_draws
        op.plot.perturbation_curve(
            list(curve_set.curves()),
            labels=[
                f"ranked (class ranking), fill {label}",
                f"random, {draws} draws, fill {label}",
                f"ranked (class ranking), fill {label}",
                f"random, {draws} draws, fill {label}",
            ],
            marks=marks if row == 0 else None,
            ax=list(axes[row]),
        )
    return figure
