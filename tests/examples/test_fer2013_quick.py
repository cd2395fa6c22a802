"""End to end: ``examples/fer2013.py --quick`` on the synthetic faces recovers the ground truth.

The pipeline runs once in-process (module fixture) with the --quick settings; the tests check
report.json's keys and shapes, the files written, the weights round trip, and what the
synthetic data's construction predicts: Happiness (mouth only) ranks areas {10, 11} first,
Anger (eyes and brows only) has area 6 or 7 in its top three, and the keep-only accuracies
order as full > {6, 7, 10, 11} > {10, 11} > chance.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fer2013 import parse_args
from fer_paper import pipeline
from fer_paper.classes import CLASS_NAMES
from fer_paper.model import load_model
from fer_paper.perturbation import leakage_sentence
from fer_paper.pipeline import (
    QUICK_SETTINGS,
    DistributedLaunchError,
    RunConfig,
    RunSettings,
    load_data,
    prepare_model,
    run,
)

import occlusion_probe as op

pytestmark = pytest.mark.slow

CHANCE = 1 / 7


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunConfig, dict[str, Any]]:
    config = RunConfig(
        out=tmp_path_factory.mktemp("fer2013-quick"),
        quick=True,
        seed=0,
        device="cpu",
        progress=False,
    )
    return config, run(config)


def test_report_keys_and_shapes(quick_run: tuple[RunConfig, dict[str, Any]]) -> None:
    config, payload = quick_run
    on_disk = json.loads((config.out / "report.json").read_text(encoding="utf-8"))
    assert on_disk == payload
    for key in ("accuracy", "accuracy_keep_10_11", "accuracy_keep_6_7_10_11"):
        assert 0.0 <= payload[key] <= 1.0
    for key in ("table2", "table3", "table4"):
        table = np.array(payload[key], dtype=float)
        assert table.shape == (7, 7)
        # rows = true class, row-normalised percent: every class occurs in the test set
        np.testing.assert_allclose(table.sum(axis=1), 100.0, atol=1e-9)
        counts = np.array(payload[f"counts_{key}"])
        assert counts.sum() == QUICK_SETTINGS.synthetic_test
        assert math.isclose(
            np.trace(counts) / counts.sum(),
            payload[
                {
                    "table2": "accuracy",
                    "table3": "accuracy_keep_10_11",
                    "table4": "accuracy_keep_6_7_10_11",
                }[key]
            ],
        )
    assert payload["class_names"] == list(CLASS_NAMES)
    assert payload["area_ids"] == list(range(1, 17))
    assert payload["fills"] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert set(payload["curves"]) == set(CLASS_NAMES) == set(payload["ranking"])
    for name in CLASS_NAMES:
        curves = payload["curves"][name]
        assert len(curves) == 16 and all(len(row) == 6 for row in curves)
        if payload["selected_images"][name]:
            assert sorted(payload["ranking"][name]) == list(range(1, 17))
            assert all(0.0 <= value <= 1.0 for row in curves for value in row)
        else:
            assert payload["ranking"][name] == []
            assert all(value is None for row in curves for value in row)
    data = payload["data"]
    assert data["source"] == "synthetic"
    assert sum(data["counts"]["train"].values()) == QUICK_SETTINGS.synthetic_train
    assert sum(data["counts"]["test"].values()) == QUICK_SETTINGS.synthetic_test
    assert data["counts"]["test"]["Disgust"] < data["counts"]["test"]["Happiness"]
    assert "rows = true class" in payload["convention"]


def test_synthetic_ground_truth_is_recovered(quick_run: tuple[RunConfig, dict[str, Any]]) -> None:
    _, payload = quick_run
    ranking = payload["ranking"]
    assert set(ranking["Happiness"][:2]) == {10, 11}, ranking["Happiness"]
    assert {6, 7} & set(ranking["Anger"][:3]), ranking["Anger"]
    accuracies = (
        payload["accuracy"],
        payload["accuracy_keep_6_7_10_11"],
        payload["accuracy_keep_10_11"],
        CHANCE,
    )
    assert accuracies[0] > accuracies[1] > accuracies[2] > accuracies[3], accuracies
    # occluding the mouth lowers Happiness far more than occluding a corner of the image
    drops = dict(zip(payload["area_ids"], payload["mean_drop"]["Happiness"], strict=True))
    assert min(drops[10], drops[11]) > 3 * max(abs(drops[1]), abs(drops[4]))
    assert payload["checks"] == {
        "happiness_top2_mouth": True,
        "anger_eyes_top3": True,
        "keep_only_order": True,
    }


def test_perturbation_curves_through_tables_3_and_4(
    quick_run: tuple[RunConfig, dict[str, Any]],
) -> None:
    config, payload = quick_run
    curves = payload["perturbation_curves"]
    assert curves["left_out"] == {} and curves["num_images"] == QUICK_SETTINGS.synthetic_test
    for name in ("keep", "keep_random", "remove", "remove_random"):
        assert len(curves[name]["accuracy"]) == 17 and 0 <= curves[name]["auc_accuracy"] <= 1
    assert curves["keep_random"]["draws"] == QUICK_SETTINGS.curve_draws
    # k = 16 keeps every area: the unoccluded accuracy; both modes meet there and at k = 0
    assert curves["keep"]["accuracy"][16] == pytest.approx(payload["accuracy"])
    assert curves["remove"]["accuracy"][0] == pytest.approx(payload["accuracy"])
    assert curves["keep"]["accuracy"][0] == curves["remove"]["accuracy"][16]
    # the sweep's ranking beats random orders: keeping climbs faster, removing falls faster
    keep, remove = curves["auc_difference"]["keep"], curves["auc_difference"]["remove"]
    assert keep["low"] > 0 and remove["high"] < 0, (keep, remove)
    assert keep["low"] <= keep["difference"] <= keep["high"]
    points = curves["table_points"]
    assert points["table3"]["k"] == 2 and points["table3"]["kept_areas"] == [10, 11]
    assert points["table4"]["k"] == 4
    assert points["table3"]["table_accuracy"] == payload["accuracy_keep_10_11"]
    report = (config.out / "report.md").read_text(encoding="utf-8")
    assert "Tables 3 and 4 as points of curves" in report
    assert "perturbation_curves.png" in payload["figures"]


def test_perturbation_curves_under_imputation(
    quick_run: tuple[RunConfig, dict[str, Any]],
) -> None:
    config, payload = quick_run
    curves = payload["perturbation_curves"]
    assert curves["order_pool"] == QUICK_SETTINGS.order_pool
    imputation = curves["imputation"]
    count = QUICK_SETTINGS.imputation_images
    assert imputation["num_images"] == count == len(imputation["subset"])
    assert imputation["fill"] == "linear_imputation(noise=0.01, seed=0)"
    assert imputation["seconds"] > 0
    imputed, constant = imputation["imputed"], imputation["constant_on_subset"]
    for part, fill in ((imputed, imputation["fill"]), (constant, "0.0")):
        assert part["num_images"] == count and part["fill"] == fill
        for name in ("keep", "keep_random", "remove", "remove_random"):
            assert part[name]["fill"] == fill and len(part[name]["accuracy"]) == 17
        assert part["keep_random"]["draws"] == QUICK_SETTINGS.curve_draws
        # The ends: nothing filled is the unoccluded image under either fill.
        assert part["keep"]["accuracy"][16] == part["remove"]["accuracy"][0]
        found = part["leakage"]
        above = [
            k
            for k in range(1, 16)
            if part["remove"]["accuracy"][k] > part["remove_random"]["accuracy"][k] + 1e-12
        ]
        assert found["above"] == above
        assert set(found["significant"]) <= set(above)
    # The imputed ranked keep curve beats its random orders: the ranking still shows.
    assert imputed["auc_difference"]["keep"]["difference"] > 0
    report = (config.out / "report.md").read_text(encoding="utf-8")
    assert "**Imputation.**" in report and "**Leakage check.**" in report
    # The leakage sentences are the numbers' own.
    total = f"{curves['num_images']} images"
    assert leakage_sentence(curves["leakage"], total) in report
    for part in (constant, imputed):
        assert leakage_sentence(part["leakage"], f"{count} images") in report
    assert f"imputed perturbation curves ({count} images) took" in report
    subset = imputation["subset"]
    assert len(subset) == len(set(subset)) and subset == sorted(subset)


def test_output_files(quick_run: tuple[RunConfig, dict[str, Any]]) -> None:
    config, payload = quick_run
    out = config.out
    for name in ("report.md", "curves.csv", "curves.json", "weights.pt", "sweep.npz"):
        assert (out / name).is_file(), name
    for name in payload["figures"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert {
        "curves_all.png",
        "curves_happiness.png",
        "table2.png",
        "table3.png",
        "table4.png",
    } <= set(payload["figures"])
    lines = (out / "curves.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "class,area,fill_0,fill_0.2,fill_0.4,fill_0.6,fill_0.8,fill_1"
    assert len(lines) == 1 + 7 * 16
    curves = json.loads((out / "curves.json").read_text(encoding="utf-8"))
    assert curves["curves"] == payload["curves"]
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "rows = true class, columns = predicted class, row-normalised percent" in report
    assert "Synthetic default data set" in report and "57.02 %" in report
    # the saved sweep is the one the report was made from
    result = op.SweepResult.load(out / "sweep.npz")
    assert result.ranking("Happiness") == payload["ranking"]["Happiness"]


def test_weights_restore_the_model(quick_run: tuple[RunConfig, dict[str, Any]]) -> None:
    config, _ = quick_run
    data, _ = load_data(config)
    model = load_model(config.out / "weights.pt")
    result = op.SweepResult.load(config.out / "sweep.npz")
    with torch.inference_mode():
        outputs = torch.softmax(model(data.test_images), dim=1)
    # The sweep covers exactly the correctly classified test images, in test-set order.
    correct = outputs.argmax(dim=1) == data.test_labels
    assert result.labels is not None and torch.equal(result.labels, data.test_labels[correct])
    torch.testing.assert_close(outputs[correct], result.baseline, atol=1e-5, rtol=1e-4)


def test_weights_flag_skips_training(
    quick_run: tuple[RunConfig, dict[str, Any]], tmp_path: Path
) -> None:
    config, payload = quick_run
    data, _ = load_data(config)
    reloaded = RunConfig(
        out=tmp_path, quick=True, device="cpu", progress=False, weights=config.out / "weights.pt"
    )
    model, summary = prepare_model(reloaded, data, tmp_path)
    assert summary["weights"] == f"loaded from {config.out / 'weights.pt'}"
    assert "epochs" not in summary
    assert (tmp_path / "weights.pt").is_file()
    with torch.inference_mode():
        predicted = model(data.test_images).argmax(dim=1)
    assert float((predicted == data.test_labels).float().mean()) == pytest.approx(
        payload["accuracy"]
    )


def write_random_csv(path: Path, rows: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    usages = ["Training"] * (rows - 12) + ["PublicTest"] * 8 + ["PrivateTest"] * 4
    lines = ["emotion,pixels,Usage"]
    for index, usage in enumerate(usages):
        pixels = " ".join(map(str, rng.integers(0, 256, 2304)))
        lines.append(f"{index % 7},{pixels},{usage}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_csv_run_reports_real_data(tmp_path: Path) -> None:
    csv_path = tmp_path / "fer2013.csv"
    write_random_csv(csv_path, 60, seed=0)
    config = RunConfig(
        out=tmp_path / "out", csv=csv_path, quick=True, epochs=1, device="cpu", progress=False
    )
    payload = run(config)
    assert payload["data"]["source"] == "csv" and payload["data"]["test_split"] == "PublicTest"
    assert sum(payload["data"]["counts"]["test"].values()) == 8
    assert sum(payload["data"]["counts"]["train"].values()) == 48
    assert "checks" not in payload and "ground_truth" not in payload
    report = (config.out / "report.md").read_text(encoding="utf-8")
    assert "Real FER-2013 data" in report
    # random pixels: classes that are never classified correctly have no curves, not errors
    for name in CLASS_NAMES:
        if payload["selected_images"][name] == 0:
            assert payload["ranking"][name] == []


def test_quick_takes_seeded_subsets_of_real_data(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    csv_path = tmp_path / "fer2013.csv"
    write_random_csv(csv_path, 60, seed=1)
    monkeypatch.setattr(
        pipeline,
        "QUICK_SETTINGS",
        RunSettings(7, 7, 1, 1, real_train_limit=20, real_test_limit=5),
    )
    config = RunConfig(csv=csv_path, quick=True)
    data, ground_truth = load_data(config)
    assert ground_truth is None
    assert data.train_images.shape[0] == 20 and data.test_images.shape[0] == 5
    assert "20 of 48 training and 5 of 8 test images" in data.description
    again, _ = load_data(config)
    assert torch.equal(again.train_images, data.train_images)
    full, _ = load_data(RunConfig(csv=csv_path))
    assert full.train_images.shape[0] == 48 and "quick run" not in full.description


def test_command_line_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = parse_args([])
    assert config == RunConfig()
    assert config.out == Path("fer2013-output") and config.csv is None and not config.quick
    config = parse_args(
        [
            "--csv",
            "f.csv",
            "--test-split",
            "PrivateTest",
            "--skip-bad-rows",
            "--seed",
            "3",
            "--quick",
        ]
    )
    assert (config.csv, config.test_split, config.skip_bad_rows, config.seed, config.quick) == (
        Path("f.csv"),
        "PrivateTest",
        True,
        3,
        True,
    )
    for argv in (["--csv", "a", "--data-dir", "b"], ["--skip-bad-rows"], ["--device", "tpu"]):
        with pytest.raises(SystemExit):
            parse_args(argv)
    for variable in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(DistributedLaunchError, match="torchrun"):
        run(RunConfig(out=tmp_path, distributed=True, quick=True, progress=False))
