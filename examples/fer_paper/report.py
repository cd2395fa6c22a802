"""Writing the reproduction's outputs: report.json, report.md, curves.csv/json and figures.

Every table follows the paper's (corrected) convention: rows = true class, columns =
predicted class, each row normalised to percent, so the diagonal is the per-class recall.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import Tensor

import occlusion_probe as op

from .classes import CLASS_NAMES, NUM_CLASSES
from .markdown import markdown_table, percent
from .perturbation import (
    PerturbationCurves,
    perturbation_figure,
    perturbation_markdown,
    perturbation_payload,
)

__all__ = [
    "CONVENTION",
    "EYE_AREAS",
    "MOUTH_AREAS",
    "PAPER",
    "AnalysisTables",
    "PerturbationCurves",
    "ground_truth_checks",
    "report_payload",
    "write_curves",
    "write_figures",
    "write_report",
]

CONVENTION = "rows = true class, columns = predicted class, row-normalised percent"
MOUTH_AREAS = (10, 11)
EYE_AREAS = (6, 7)

PAPER: dict[str, Any] = {
    "title": (
        "Nishime, Endo, Toma, Yamada, Akamine: Feature Learning from Facial Expression Images "
        "Using Convolutional Neural Networks"
    ),
    "train_images": 28698,
    "test_images": 3588,
    "accuracy_percent": 57.02,
    "recall_percent": {"Happiness": "about 70", "Surprise": "about 70", "Disgust": "0"},
    "figs_4_9": "Happiness drops at areas 10, 11; Anger, Sadness, Fear and Neutral also at 6, 7",
    "table3_table4": "accuracy drops below the full test accuracy; Happiness stays above 50 %",
}
"""The paper's numbers and findings that this reproduction compares against."""


@dataclass(frozen=True, eq=False)
class AnalysisTables:
    """The three confusion reports of the paper: full test set and the two keep-only runs;
    and the perturbation curves through them (None when no test image could be ranked)."""

    table2: op.ConfusionReport  # all areas visible
    table3: op.ConfusionReport  # keep areas 10, 11
    table4: op.ConfusionReport  # keep areas 6, 7, 10, 11
    curves: PerturbationCurves | None = None


def _json_safe(value: Any) -> Any:
    """NaN and infinities become None (JSON has no NaN); tensors become lists."""
    if isinstance(value, Tensor):
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def _selected_count(result: op.SweepResult, cls: int) -> int:
    return result.selected_count(cls, correct_only=True)


def class_curve_table(result: op.SweepResult) -> dict[str, list[list[float]]]:
    """Curves of every class (Figs 4-9): class name -> (R, V) nested list.

    Each entry is the mean softmax output of the class over the correctly classified test
    images of that class, per occluded area (rows, ids 1..16) and fill (columns). A class with
    no correctly classified image (the paper's Disgust) gets NaN everywhere.
    """
    curves: dict[str, list[list[float]]] = {}
    shape = (len(result.regions), len(result.fill_labels))
    for cls, name in enumerate(CLASS_NAMES):
        if _selected_count(result, cls):
            curves[name] = result.class_curves(cls).tolist()
        else:
            curves[name] = torch.full(shape, float("nan")).tolist()
    return curves


def class_rankings(result: op.SweepResult) -> tuple[dict[str, list[int]], dict[str, list[float]]]:
    """Area ids by mean drop (largest first) and the mean drop per area, for every class.

    Classes without correctly classified images get an empty ranking and NaN drops.
    """
    rankings: dict[str, list[int]] = {}
    drops: dict[str, list[float]] = {}
    for cls, name in enumerate(CLASS_NAMES):
        if _selected_count(result, cls):
            rankings[name] = result.ranking(cls)
            # In the order of area_ids (the payload's "area_ids" labels each entry).
            drops[name] = list(result.mean_drop(cls).values())
        else:
            rankings[name] = []
            drops[name] = [float("nan")] * len(result.regions)
    return rankings, drops


def ground_truth_checks(
    rankings: Mapping[str, Sequence[int]],
    accuracy: float,
    accuracy_keep_mouth: float,
    accuracy_keep_eyes_mouth: float,
) -> dict[str, bool]:
    """What the synthetic data's construction predicts, checked against the analysis.

    - ``happiness_top2_mouth``: Happiness (defined by the mouth alone) has areas {10, 11} as
      its two top-ranked areas;
    - ``anger_eyes_top3``: Anger (defined by the eyes and brows alone) has area 6 or 7 among
      its three top-ranked areas;
    - ``keep_only_order``: accuracy full > keep {6, 7, 10, 11} > keep {10, 11} > chance (1/7).
    """
    return {
        "happiness_top2_mouth": set(rankings["Happiness"][:2]) == set(MOUTH_AREAS),
        "anger_eyes_top3": bool(set(rankings["Anger"][:3]) & set(EYE_AREAS)),
        "keep_only_order": accuracy
        > accuracy_keep_eyes_mouth
        > accuracy_keep_mouth
        > 1 / NUM_CLASSES,
    }


def report_payload(
    *,
    result: op.SweepResult,
    tables: AnalysisTables,
    data_summary: Mapping[str, Any],
    training: Mapping[str, Any],
    timing: Mapping[str, float],
    ground_truth: Mapping[str, str] | None,
) -> dict[str, Any]:
    """Everything report.json holds (JSON-ready: NaN already replaced by None).

    Keys: ``accuracy`` (fraction), ``table2``/``table3``/``table4`` (7x7 row-normalised percent,
    rows = true class), ``counts_table2``/``counts_table3``/``counts_table4`` (7x7 image counts),
    ``accuracy_keep_10_11``, ``accuracy_keep_6_7_10_11`` (fractions), ``recall`` (per table,
    class name -> fraction), ``curves`` (class name -> 16x6), ``mean_drop`` (class name -> 16),
    ``ranking`` (class name -> area ids, largest drop first), ``unoccluded_output``,
    ``selected_images`` (correctly classified test images per class, used by the curves),
    ``class_names``, ``fills``, ``area_ids``, ``convention``, ``data``, ``training``,
    ``timing_seconds``, ``paper``, ``engine``, ``perturbation_curves`` (see
    `perturbation_payload`; None when no test image could be ranked), and for synthetic data
    ``ground_truth`` and ``checks``.
    """
    rankings, drops = class_rankings(result)
    unoccluded: dict[str, float] = {}
    selected: dict[str, int] = {}
    for cls, name in enumerate(CLASS_NAMES):
        chosen = result.selection(cls, correct_only=True)
        selected[name] = int(chosen.sum())
        unoccluded[name] = (
            float(result.baseline[chosen, cls].mean()) if selected[name] else float("nan")
        )
    named_tables = {"table2": tables.table2, "table3": tables.table3, "table4": tables.table4}
    payload: dict[str, Any] = {
        "accuracy": tables.table2.accuracy,
        "accuracy_keep_10_11": tables.table3.accuracy,
        "accuracy_keep_6_7_10_11": tables.table4.accuracy,
        **{name: report.percent.tolist() for name, report in named_tables.items()},
        **{f"counts_{name}": report.confusion.tolist() for name, report in named_tables.items()},
        "recall": {
            name: dict(zip(CLASS_NAMES, report.recall.tolist(), strict=True))
            for name, report in named_tables.items()
        },
        "kept_areas": {name: list(report.kept_ids) for name, report in named_tables.items()},
        "curves": class_curve_table(result),
        "mean_drop": drops,
        "ranking": rankings,
        "unoccluded_output": unoccluded,
        "selected_images": selected,
        "class_names": list(CLASS_NAMES),
        "fills": [float(label) for label in result.fill_labels],
        "area_ids": list(result.regions.ids),
        "convention": (
            f"tables: {CONVENTION}; accuracies and recalls: fractions in [0, 1]; curves: mean "
            "softmax output of the class over its correctly classified test images, rows = "
            "occluded area 1..16 (4x4 grid, row-major), columns = fill value"
        ),
        "data": dict(data_summary),
        "training": dict(training),
        "timing_seconds": dict(timing),
        "paper": PAPER,
        "engine": {"name": result.engine, "note": result.engine_note},
        "perturbation_curves": perturbation_payload(tables.curves, (tables.table3, tables.table4)),
    }
    if ground_truth is not None:
        payload["ground_truth"] = dict(ground_truth)
        payload["checks"] = ground_truth_checks(
            rankings,
            tables.table2.accuracy,
            tables.table3.accuracy,
            tables.table4.accuracy,
        )
    json_ready: dict[str, Any] = _json_safe(payload)
    return json_ready


def write_curves(out: Path, payload: Mapping[str, Any]) -> None:
    """OUT/curves.csv (one row per class and area, one column per fill) and OUT/curves.json."""
    fills = payload["fills"]
    with (out / "curves.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "area", *[f"fill_{fill:g}" for fill in fills]])
        for name in payload["class_names"]:
            for area, row in zip(payload["area_ids"], payload["curves"][name], strict=True):
                writer.writerow(
                    [name, area, *["" if value is None else f"{value:.6f}" for value in row]]
                )
    curves_json = {
        "description": (
            "mean softmax output of each class over its correctly classified test images, "
            "with one area (rows, ids 1..16) set to one fill value (columns); null where a "
            "class has no correctly classified image"
        ),
        "fills": fills,
        "area_ids": payload["area_ids"],
        "curves": payload["curves"],
        "unoccluded_output": payload["unoccluded_output"],
        "selected_images": payload["selected_images"],
    }
    (out / "curves.json").write_text(json.dumps(curves_json, indent=1), encoding="utf-8")


def _file_stem(name: str) -> str:
    return name.lower().replace(" ", "_")


def write_figures(
    out: Path, result: op.SweepResult, tables: AnalysisTables, test_images: Tensor
) -> list[str]:
    """The paper's figures as PNGs; returns the file names written.

    - ``curves_<class>.png``: Figs 4-9, one per class (a note in place of curves when no test
      image of the class is classified correctly), and ``curves_all.png`` with all seven;
    - ``heatmaps.png``: each class's mean drop per area over a correctly classified example;
    - ``table2.png``, ``table3.png``, ``table4.png``: the confusion matrices;
    - ``perturbation_curves.png``: keep and remove accuracy curves, ranked vs random (with
      its band), Tables 3 and 4 marked on the keep curve, a second row under imputation
      (when there are curves; see `fer_paper.perturbation.perturbation_figure`).

    test_images : Tensor, shape (N, 1, 48, 48), the images of the sweep, in its order (for the
        heat maps).
    """
    written: list[str] = []

    def save(figure: Figure, name: str) -> None:
        figure.savefig(out / name, dpi=110)
        written.append(name)

    combined = Figure(figsize=(22, 9), layout="constrained")
    combined_axes = combined.subplots(2, 4).flatten()
    heatmaps = Figure(figsize=(22, 9), layout="constrained")
    heatmap_axes = heatmaps.subplots(2, 4).flatten()
    for cls, name in enumerate(CLASS_NAMES):
        if _selected_count(result, cls):
            save(op.plot.class_curves(result, cls), f"curves_{_file_stem(name)}.png")
            op.plot.class_curves(result, cls, ax=combined_axes[cls])
            example = int(torch.nonzero(result.selection(cls, correct_only=True))[0])
            op.plot.heatmap(result, cls, test_images[example], ax=heatmap_axes[cls])
        else:
            single = Figure(figsize=(7.0, 4.5), layout="constrained")
            for axes in (single.add_subplot(), combined_axes[cls], heatmap_axes[cls]):
                axes.set_title(f"{name}: no correctly classified test image")
                axes.text(0.5, 0.5, "no curves", transform=axes.transAxes, ha="center")
                axes.set_axis_off()
            save(single, f"curves_{_file_stem(name)}.png")
    for axes in (combined_axes[-1], heatmap_axes[-1]):
        axes.set_axis_off()
    save(combined, "curves_all.png")
    save(heatmaps, "heatmaps.png")
    for name, report in (
        ("table2", tables.table2),
        ("table3", tables.table3),
        ("table4", tables.table4),
    ):
        save(op.plot.confusion(report, class_names=CLASS_NAMES), f"{name}.png")
    if tables.curves is not None:
        figure = perturbation_figure(tables.curves, (tables.table3, tables.table4))
        save(figure, "perturbation_curves.png")
    return written


def render_markdown(payload: Mapping[str, Any], tables: AnalysisTables) -> str:
    """report.md: our numbers next to the paper's, the tables, rankings and the data used."""
    data = payload["data"]
    recall = payload["recall"]
    synthetic = data["source"] == "synthetic"
    parts: list[str] = [
        "# FER-2013 occlusion analysis: reproduction of Nishime et al.\n",
        f"Paper: {PAPER['title']}.\n",
        "## Data set\n",
        (
            "**Synthetic default data set**: procedurally generated faces whose expressions "
            "are defined by known face parts. Its absolute numbers are not comparable with "
            "the paper's; the *pattern* is checked against the ground truth below. "
            if synthetic
            else "**Real FER-2013 data.** "
        )
        + f"Source: {data['description']}.\n",
        markdown_table(
            ["split", *CLASS_NAMES, "total"],
            [
                [split, *[str(counts[name]) for name in CLASS_NAMES], str(sum(counts.values()))]
                for split, counts in data["counts"].items()
            ],
        ),
        *[f"Note: {note}\n" for note in data.get("notes", [])],
        "## Convention\n",
        f"All confusion tables: **{CONVENTION}** (the diagonal is the per-class recall). The "
        'paper\'s tables are labelled "Predicted class" on the rows, but their rows sum to 100 '
        "and the Disgust row is non-zero although Disgust is never predicted, so the rows are "
        "the true classes.\n",
        "## Summary: paper vs this run\n",
        markdown_table(
            ["quantity", "paper", "this run"],
            [
                [
                    "test accuracy",
                    f"{PAPER['accuracy_percent']:.2f} %",
                    percent(payload["accuracy"]),
                ],
                ["Happiness recall", "about 70 %", percent(recall["table2"]["Happiness"])],
                ["Surprise recall", "about 70 %", percent(recall["table2"]["Surprise"])],
                ["Disgust recall", "0 %", percent(recall["table2"]["Disgust"])],
                [
                    "accuracy, keep areas 10, 11 (Table 3)",
                    "drops",
                    percent(payload["accuracy_keep_10_11"]),
                ],
                [
                    "Happiness recall, keep 10, 11",
                    "above 50 %",
                    percent(recall["table3"]["Happiness"]),
                ],
                [
                    "accuracy, keep areas 6, 7, 10, 11 (Table 4)",
                    "drops",
                    percent(payload["accuracy_keep_6_7_10_11"]),
                ],
                [
                    "Happiness recall, keep 6, 7, 10, 11",
                    "above 50 %",
                    percent(recall["table4"]["Happiness"]),
                ],
            ],
        ),
        "## Table 2: test set, all areas visible\n",
        tables.table2.to_markdown(CLASS_NAMES, classes="all"),
        "## Figs 4-9: occlusion curves\n",
        "Each class's curve is the mean softmax output of that class over its correctly "
        "classified test images, with one area of the 4x4 grid (ids 1..16 row-major, 12x12 "
        "pixels each; eyes in 6, 7, mouth in 10, 11) set to each fill 0.0, 0.2, ..., 1.0. "
        f"Only those images are swept ({sum(payload['selected_images'].values())} of "
        f"{sum(data['counts']['test'].values())} test images). "
        "Figures: `curves_<class>.png`, `curves_all.png`, `heatmaps.png`; numbers: "
        "`curves.csv`, `curves.json`. Ranking = areas by mean drop of the class output "
        "(over the fills), largest first.\n",
        markdown_table(
            ["class", "images", "unoccluded output", "top areas (mean drop)"],
            [
                [
                    name,
                    str(payload["selected_images"][name]),
                    "n/a"
                    if payload["unoccluded_output"][name] is None
                    else f"{payload['unoccluded_output'][name]:.3f}",
                    ", ".join(
                        f"{area} ({dict(zip(payload['area_ids'], payload['mean_drop'][name], strict=True))[area]:.3f})"
                        for area in payload["ranking"][name][:4]
                    )
                    or "no correctly classified image",
                ]
                for name in CLASS_NAMES
            ],
        ),
        f"Paper: {PAPER['figs_4_9']}.\n",
        "## Table 3: only areas 10, 11 visible (the mouth)\n",
        tables.table3.to_markdown(CLASS_NAMES, classes="all"),
        "## Table 4: only areas 6, 7, 10, 11 visible (eyes and mouth)\n",
        tables.table4.to_markdown(CLASS_NAMES, classes="all"),
        f"Paper: {PAPER['table3_table4']}. Everything outside the kept areas is set to 0.0.\n",
        *perturbation_markdown(payload),
    ]
    if "checks" in payload:
        checks = payload["checks"]
        parts += [
            "## Ground truth of the synthetic data\n",
            "Each synthetic expression is defined by the geometry of the mouth, eyes and brows "
            "only; what the construction predicts and whether the analysis recovered it:\n",
            markdown_table(
                ["class", "defined by", "top 3 areas"],
                [
                    [name, payload["ground_truth"][name], str(payload["ranking"][name][:3])]
                    for name in CLASS_NAMES
                ],
            ),
            markdown_table(
                ["check", "expected", "result"],
                [
                    [
                        "Happiness's two top-ranked areas",
                        "{10, 11}",
                        f"{payload['ranking']['Happiness'][:2]}: "
                        + ("yes" if checks["happiness_top2_mouth"] else "NO"),
                    ],
                    [
                        "Anger (eyes/brows only) has 6 or 7 in its top three",
                        "yes",
                        f"{payload['ranking']['Anger'][:3]}: "
                        + ("yes" if checks["anger_eyes_top3"] else "NO"),
                    ],
                    [
                        "accuracy full > keep {6,7,10,11} > keep {10,11} > 1/7",
                        "yes",
                        f"{percent(payload['accuracy'])} > "
                        f"{percent(payload['accuracy_keep_6_7_10_11'])} > "
                        f"{percent(payload['accuracy_keep_10_11'])} > 14.3 %: "
                        + ("yes" if checks["keep_only_order"] else "NO"),
                    ],
                ],
            ),
        ]
    training = payload["training"]
    parts += [
        "## Model and training\n",
        f"{training['description']}\n",
        "## Timing\n",
        markdown_table(
            ["stage", "seconds"],
            [[stage, f"{seconds:.1f}"] for stage, seconds in payload["timing_seconds"].items()],
        ),
        f"Sweep engine: {payload['engine']['name']} ({payload['engine']['note']}).\n",
    ]
    imputation = (payload.get("perturbation_curves") or {}).get("imputation")
    if imputation is not None:
        parts.insert(
            -1,
            f"Of the analysis, the imputed perturbation curves ({imputation['num_images']} "
            f"images) took {imputation['seconds']:.1f} s.\n",
        )
    return "\n".join(parts)


def write_report(out: Path, payload: Mapping[str, Any], tables: AnalysisTables) -> None:
    """OUT/report.json and OUT/report.md."""
    (out / "report.json").write_text(
        json.dumps(payload, indent=1, allow_nan=False), encoding="utf-8"
    )
    (out / "report.md").write_text(render_markdown(payload, tables), encoding="utf-8")
