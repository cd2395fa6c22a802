from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import FeatureAblation
from reference_models import small_cnn
from torch import nn

import occlusion_probe as op
from occlusion_probe import EmptySelectionError, InputTypeError, InputValueError, SweepResult


@pytest.fixture
def result() -> SweepResult:
    model = small_cnn(classes=3).eval()
    images = torch.rand(12, 1, 12, 12, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        predicted = model(images).argmax(1)
    labels = predicted.clone()
    labels[:4] = (predicted[:4] + 1) % 3  # four wrong images, eight right ones
    return op.sweep(
        model,
        images,
        op.grid(12, 12, 3, 3),
        labels=labels,
        progress=False,
        class_names=["a", "b", "c"],
    )


def test_views(result: SweepResult) -> None:
    assert result.num_images == 12 and result.num_classes == 3
    torch.testing.assert_close(result.delta, result.baseline[:, None, None, :] - result.occluded)
    assert result.predicted.shape == (12,)
    assert result.correct.tolist() == [False] * 4 + [True] * 8


def test_class_curves_match_plain_loop(result: SweepResult) -> None:
    assert result.labels is not None
    for cls in range(3):
        for correct_only in (True, False):
            rows = [
                result.occluded[n, :, :, cls]
                for n in range(12)
                if result.labels[n] == cls and (not correct_only or bool(result.correct[n]))
            ]
            if not rows:
                continue
            expected = torch.stack(rows).double().mean(0)
            torch.testing.assert_close(
                result.class_curves(cls, correct_only=correct_only), expected
            )
    torch.testing.assert_close(result.class_curves("b"), result.class_curves(1))


def test_ranking_and_mean_drop(result: SweepResult) -> None:
    drops = result.mean_drop(0, correct_only=False)
    assert result.labels is not None
    chosen = result.labels == 0
    delta = result.baseline[chosen, None, None, 0].double() - result.occluded[chosen, :, :, 0]
    expected = delta.mean((0, 2))
    torch.testing.assert_close(drops.tensor, expected)
    assert drops.ids == result.regions.ids
    for position, region in enumerate(result.regions.ids):
        assert drops[region] == pytest.approx(float(expected[position]), rel=1e-12)
    ranking = result.ranking(0, correct_only=False)
    assert sorted(ranking) == list(range(1, 10))
    assert ranking[0] == result.regions.ids[int(torch.argmax(expected))]
    per_fill = result.mean_drop(0, fill=0.4, correct_only=False)
    torch.testing.assert_close(per_fill.tensor, delta[:, :, 2].mean(0))
    assert result.fill_position("0.4") == result.fill_position(fill_index=2) == 2
    assert result.fill_position(1) == result.fill_position(1.0) == 5  # fill 1 is the value 1.0


def test_without_labels() -> None:
    model = small_cnn(classes=3).eval()
    result = op.sweep(model, torch.rand(3, 1, 12, 12), op.grid(12, 12, 2, 2), progress=False)
    assert result.class_curves(1, correct_only=False).shape == (4, 6)
    with pytest.raises(InputValueError, match="correct_only: True needs labels"):
        result.class_curves(1)
    with pytest.raises(InputValueError, match="correct: this result has no labels"):
        _ = result.correct


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda r: r.class_curves(3),
            InputValueError,
            r"cls: expected a class index in \[0, 2\], got 3",
        ),
        (lambda r: r.class_curves("z"), InputValueError, "cls: unknown class name 'z'"),
        (lambda r: r.class_curves(1.0), InputTypeError, "cls: expected a class index"),
        (
            lambda r: r.ranking(0, fill=0.3, correct_only=False),
            InputValueError,
            "fill: no fill with value 0.3",
        ),
        (
            lambda r: r.ranking(0, fill_index=6, correct_only=False),
            InputValueError,
            r"fill_index: expected a position in \[0, 5\]",
        ),
        (
            lambda r: r.attribution(torch.zeros(3, dtype=torch.int64)),
            InputValueError,
            r"cls: expected one class, or an integer tensor of shape \(12,\)",
        ),
        (
            lambda r: r.attribution(target=torch.full((12,), 5)),
            InputValueError,
            r"target: expected class indices in \[0, 2\], got values 5..5",
        ),
    ],
)
def test_result_errors(
    result: SweepResult, call: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        call(result)  # type: ignore[operator]


@pytest.mark.parametrize("fill_index", [0, 3])
def test_attribution_equals_captum_feature_ablation(fill_index: int) -> None:
    model = small_cnn(in_channels=2, classes=4).eval()
    images = torch.rand(3, 2, 12, 12, generator=torch.Generator().manual_seed(5))
    regions = op.grid(12, 12, 3, 4)
    result = op.sweep(model, images, regions, output="logits", progress=False)
    fill = op.DEFAULT_FILLS[fill_index]
    mask = regions.label_map()[None, None].expand(1, 2, 12, 12)
    for target in (0, 3):
        expected = FeatureAblation(model).attribute(
            images, target=target, baselines=fill, feature_mask=mask
        )
        torch.testing.assert_close(
            result.attribution(target, fill=fill), expected, rtol=1e-5, atol=1e-5
        )
    targets = torch.tensor([1, 0, 2])
    expected = FeatureAblation(model).attribute(
        images, target=targets, baselines=fill, feature_mask=mask
    )
    torch.testing.assert_close(
        result.attribution(targets, fill_index=fill_index), expected, rtol=1e-5, atol=1e-5
    )


def test_attribution_mean_over_fills_and_overlap_average() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 2))
    images = torch.rand(2, 1, 6, 6)
    regions = op.sliding_windows(6, 6, window=4, stride=2)
    result = op.sweep(model, images, regions, fills=[0.0, 1.0], output="logits", progress=False)
    attribution = result.attribution(1)
    per_region = result.delta[..., 1].mean(2)  # (N, R)
    masks = regions.masks.float()
    expected = torch.einsum("nr,rhw->nhw", per_region, masks) / masks.sum(0).clamp(min=1)
    torch.testing.assert_close(attribution, expected[:, None])


def test_save_load_round_trip(tmp_path: object, result: SweepResult) -> None:
    path = result.save(tmp_path / "sweep.npz")  # type: ignore[operator]
    with np.load(path, allow_pickle=False) as data:
        assert "occluded" in data.files
    loaded = SweepResult.load(path)
    for name in ("baseline", "occluded", "labels"):
        assert torch.equal(getattr(loaded, name), getattr(result, name))
    assert torch.equal(loaded.regions.masks, result.regions.masks)
    assert loaded.regions.ids == result.regions.ids
    assert (
        loaded.fill_labels,
        loaded.class_names,
        loaded.image_shape,
        loaded.output,
        loaded.engine,
        loaded.engine_note,
    ) == (
        result.fill_labels,
        result.class_names,
        result.image_shape,
        result.output,
        result.engine,
        result.engine_note,
    )


def test_load_rejects_garbage(tmp_path: object) -> None:
    bad = tmp_path / "bad.npz"  # type: ignore[operator]
    bad.write_bytes(b"not a zip file")
    with pytest.raises(InputValueError, match="is truncated, corrupted or not an \\.npz archive"):
        SweepResult.load(bad)
    other = tmp_path / "other.npz"  # type: ignore[operator]
    np.savez(other, x=np.zeros(3))
    with pytest.raises(InputValueError, match="is not a SweepResult file"):
        SweepResult.load(other)


def test_concatenate_equals_one_sweep(result: SweepResult) -> None:
    first = SweepResult(
        result.baseline[:5],
        result.occluded[:5],
        result.labels[:5] if result.labels is not None else None,
        result.regions,
        result.fill_labels,
        result.class_names,
    )
    second = SweepResult(
        result.baseline[5:],
        result.occluded[5:],
        result.labels[5:] if result.labels is not None else None,
        result.regions,
        result.fill_labels,
        result.class_names,
    )
    joined = SweepResult.concatenate([first, second])
    assert torch.equal(joined.occluded, result.occluded)
    with pytest.raises(InputValueError, match="parts: expected at least one SweepResult"):
        SweepResult.concatenate([])


def test_constructor_checks_shapes(result: SweepResult) -> None:
    with pytest.raises(InputValueError, match=r"occluded: expected shape \(12, 9, 6, 3\)"):
        SweepResult(
            result.baseline, result.occluded[:, :4], None, result.regions, result.fill_labels
        )
    with pytest.raises(InputValueError, match="class_names: expected 3 names"):
        SweepResult(
            result.baseline, result.occluded, None, result.regions, result.fill_labels, ("a",)
        )


# -- one reading API on both result types -----------------------------------------------------


@pytest.fixture(scope="module")
def both() -> tuple[SweepResult, op.ClassMeanResult]:
    """A full result and the class-mean result of the same sweep (class 2 is never right).

    A linear model whose class-k output is the mean of pixel block k (plus a bias per image
    row) gives predictions we can steer: images 0-5 are brightest in block 0, 6-11 in
    block 1, so classes 0 and 1 have right and wrong images and class 2 only wrong ones.
    """
    weight = torch.zeros(3, 1, 12, 12)
    weight[0, :, :4], weight[1, :, 4:8], weight[2, :, 8:] = 1 / 48, 1 / 48, 1 / 48
    model = nn.Sequential(nn.Flatten(), nn.Linear(144, 3, bias=False)).eval()
    with torch.no_grad():
        model[1].weight.copy_(weight.flatten(1))
    images = 0.2 * torch.rand(15, 1, 12, 12, generator=torch.Generator().manual_seed(11))
    images[:6, :, :4] += 0.6
    images[6:12, :, 4:8] += 0.6
    images[12:, :, :4] += 0.6
    labels = torch.tensor([0, 0, 0, 0, 1, 2, 1, 1, 1, 0, 2, 1, 0, 1, 0])
    regions = op.grid(12, 12, 3, 3)
    kwargs = {"labels": labels, "progress": False, "class_names": ["a", "b", "c"]}
    full = op.sweep(model, images, regions, **kwargs)
    reduced = op.sweep(model, images, regions, reduce="class_mean", **kwargs)
    assert isinstance(full, SweepResult) and isinstance(reduced, op.ClassMeanResult)
    assert full.predicted.tolist() == [0] * 6 + [1] * 6 + [0] * 3
    return full, reduced


def _readings(full: SweepResult, cls: object, correct_only: bool) -> list[object]:
    assert full.labels is not None
    chosen = [
        n
        for n in range(full.num_images)
        if int(full.labels[n]) == int(full.class_index(cls))
        and (not correct_only or bool(full.correct[n]))
    ]
    return chosen


@pytest.mark.parametrize("correct_only", [True, False])
@pytest.mark.parametrize("cls", [0, 1, "a", np.int64(1), torch.tensor(0)])
def test_both_results_agree_with_a_plain_loop(
    both: tuple[SweepResult, op.ClassMeanResult], cls: object, correct_only: bool
) -> None:
    full, reduced = both
    index = full.class_index(cls)
    chosen = _readings(full, cls, correct_only)
    assert chosen  # the fixture selects images for classes 0 and 1
    expected_curves = sum(full.occluded[n, :, :, index].double() for n in chosen) / len(chosen)
    expected_base = sum(float(full.baseline[n, index]) for n in chosen) / len(chosen)
    for result in (full, reduced):
        assert result.selected_count(cls, correct_only=correct_only) == len(chosen)
        curves = result.class_curves(cls, correct_only=correct_only)
        assert curves.dtype == torch.float64 and curves.shape == (9, 6)
        torch.testing.assert_close(curves, expected_curves, rtol=1e-9, atol=1e-12)
        assert result.unoccluded_mean(cls, correct_only=correct_only) == pytest.approx(
            expected_base, rel=1e-9
        )
        for fill, fill_index in ((None, None), (0.2, None), ("1.0", None), (None, 3)):
            drops = result.mean_drop(
                cls, fill=fill, fill_index=fill_index, correct_only=correct_only
            )
            column = {0.2: 1, "1.0": 5}.get(fill, fill_index)  # type: ignore[arg-type]
            after = expected_curves.mean(1) if column is None else expected_curves[:, column]
            assert drops.tensor.dtype == torch.float64
            for position, region in enumerate(result.regions.ids):
                assert drops[region] == pytest.approx(
                    expected_base - float(after[position]), rel=1e-9, abs=1e-12
                )
            ranking = result.ranking(
                cls, fill=fill, fill_index=fill_index, correct_only=correct_only
            )
            assert ranking == drops.ranking()
    assert full.ranking(cls, correct_only=correct_only) == reduced.ranking(
        cls, correct_only=correct_only
    )


@pytest.mark.parametrize("which", ["full", "class_mean"])
def test_empty_selection_raises_in_every_reading(
    both: tuple[SweepResult, op.ClassMeanResult], which: str
) -> None:
    result = both[0] if which == "full" else both[1]
    assert result.selected_count("c", correct_only=True) == 0
    assert result.selected_count("c", correct_only=False) == 2
    readings = [
        lambda: result.class_curves("c"),
        lambda: result.mean_drop("c"),
        lambda: result.ranking("c", fill=0.0),
        lambda: result.unoccluded_mean("c"),
        lambda: op.plot.class_curves(result, "c"),
    ]
    if isinstance(result, SweepResult):
        readings += [lambda: result.significance("c"), lambda: result.curve_bands("c")]
    for reading in readings:
        with pytest.raises(EmptySelectionError, match="no image selected for class 'c'"):
            reading()
    assert result.class_curves("c", correct_only=False).shape == (9, 6)


@pytest.mark.parametrize("which", ["full", "class_mean"])
def test_reading_arguments_after_the_class_are_keyword_only(
    both: tuple[SweepResult, op.ClassMeanResult], which: str
) -> None:
    result = both[0] if which == "full" else both[1]
    for method in (result.class_curves, result.mean_drop, result.ranking, result.selected_count):
        with pytest.raises(TypeError, match="positional argument"):
            method(0, False)  # type: ignore[operator]
    with pytest.raises(InputTypeError, match="correct_only: expected a bool"):
        result.ranking(0, correct_only="no")  # type: ignore[arg-type]
    with pytest.raises(InputValueError, match=r"fill: no fill with value 0.3; fills are \('0.0'"):
        result.mean_drop(0, fill=0.3)
    with pytest.raises(InputValueError, match="fill, fill_index: expected at most one"):
        result.ranking(0, fill=0.2, fill_index=1)


def test_labels_element_selects_a_class(both: tuple[SweepResult, op.ClassMeanResult]) -> None:
    full, reduced = both
    assert full.labels is not None
    first = full.labels[0]  # a 0-d int64 tensor
    torch.testing.assert_close(full.class_curves(first), full.class_curves(int(first)))
    assert reduced.ranking(first) == reduced.ranking(int(first))


def test_attribution_cls_and_target(result: SweepResult) -> None:
    torch.testing.assert_close(
        result.attribution(1, fill=0.2), result.attribution(target=1, fill_index=1)
    )
    torch.testing.assert_close(result.attribution("b"), result.attribution(torch.tensor(1)))
    with pytest.raises(InputValueError, match="cls, target: expected exactly one of them"):
        result.attribution(1, target=1)
    with pytest.raises(InputValueError, match="cls, target: expected exactly one of them"):
        result.attribution()


def test_no_result_holds_inference_tensors(both: tuple[SweepResult, op.ClassMeanResult]) -> None:
    full, reduced = both
    tensors = {
        "baseline": full.baseline,
        "occluded": full.occluded,
        "labels": full.labels,
        "occluded_sum": reduced.occluded_sum,
        "baseline_sum": reduced.baseline_sum,
        "counts": reduced.counts,
        "confusion": reduced.confusion,
        "mean_drop": full.mean_drop(0).tensor,
        "curves": reduced.class_curves(0),
    }
    model = small_cnn(classes=3).eval()
    report = op.keep_only(
        model, torch.rand(4, 1, 12, 12), [0, 1, 2, 0], full.regions, keep=[5], progress=False
    )
    tensors.update(report_confusion=report.confusion, percent=report.percent, recall=report.recall)
    for name, tensor in tensors.items():
        assert tensor is not None and not tensor.is_inference(), name
    reduced.counts.add_(0)  # a user's in-place op works
    full.occluded.mul_(1.0)


def test_a_result_made_under_inference_mode_is_ordinary(result: SweepResult) -> None:
    with torch.inference_mode():
        made = SweepResult(
            result.baseline.clone(),
            result.occluded.clone(),
            None,
            result.regions,
            result.fill_labels,
        )
    assert not made.baseline.is_inference() and not made.occluded.is_inference()
    made.baseline.add_(0.0)


def test_class_names_are_checked(result: SweepResult) -> None:
    with pytest.raises(InputTypeError, match="class_names: expected a sequence of str"):
        SweepResult(
            result.baseline, result.occluded, None, result.regions, result.fill_labels, "abc"
        )  # type: ignore[arg-type]
    with pytest.raises(InputValueError, match=r"class_names: expected distinct names, got \['a'\]"):
        SweepResult(
            result.baseline,
            result.occluded,
            None,
            result.regions,
            result.fill_labels,
            ("a", "b", "a"),
        )
    model = small_cnn(classes=3).eval()
    with pytest.raises(InputTypeError, match=r"class_names: expected a sequence of str .* 'cat'"):
        op.sweep(model, torch.rand(2, 1, 12, 12), result.regions, class_names="cat", progress=False)  # type: ignore[arg-type]


# -- labelled export ----------------------------------------------------------------------------


def test_to_xarray_and_to_pandas(both: tuple[SweepResult, op.ClassMeanResult]) -> None:
    full, reduced = both
    data = full.to_xarray()
    assert data["occluded"].dims == ("image", "region", "fill", "class")
    assert list(data["region"].values) == list(full.regions.ids)
    assert list(data["fill"].values) == list(full.fill_labels)
    assert list(data["class"].values) == ["a", "b", "c"]
    assert float(data["occluded"].sel(region=5, fill="0.2", **{"class": "b"})[3]) == float(
        full.occluded[3, 4, 1, 1]
    )
    np.testing.assert_array_equal(data["labels"].values, full.labels.numpy())  # type: ignore[union-attr]
    sums = reduced.to_xarray()
    assert sums["occluded_sum"].dims == ("subset", "true_class", "region", "fill", "class")
    assert int(sums["counts"].sel(subset="correct", true_class="a")) == reduced.selected_count("a")
    series = full.mean_drop("a").to_pandas()
    assert series.index.name == "region" and series.name == "mean_drop"
    assert series.loc[5] == full.mean_drop("a")[5]
    frame = full.significance("a").to_pandas()
    assert list(frame.columns) == ["mean_drop", "effect_size", "p", "p_adjusted"]
    assert frame.loc[5, "p"] == full.significance("a").row(5).p
    report = op.confusion_report(full.labels, full.predicted, 3, class_names=["a", "b", "c"])  # type: ignore[arg-type]
    counts = report.to_pandas()
    assert counts.loc["a", "b"] == int(report.confusion[0, 1]) and counts.index.name == "true"
    assert report.to_pandas(percent=True).loc["a"].sum() == pytest.approx(100.0)


def test_export_without_pandas_or_xarray_says_how_to_install(
    both: tuple[SweepResult, op.ClassMeanResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    real = importlib.import_module

    def missing(name: str, *args: object) -> object:
        if name in ("pandas", "xarray"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib, "import_module", missing)
    full, reduced = both
    for export, module in (
        (full.to_xarray, "xarray"),
        (reduced.to_xarray, "xarray"),
        (full.mean_drop(0).to_pandas, "pandas"),
    ):
        with pytest.raises(
            ImportError,
            match=rf"needs the optional dependency '{module}'.*occlusion_probe\[tables\]",
        ):
            export()


def test_region_values_mapping(result: SweepResult) -> None:
    drops = result.mean_drop(0, correct_only=False)
    assert isinstance(drops, op.RegionValues) and len(drops) == 9
    assert list(drops) == list(result.regions.ids) and dict(drops)[1] == drops[1]
    assert drops[np.int64(3)] == drops[torch.tensor(3)] == float(drops.tensor[2])
    with pytest.raises(KeyError, match="unknown region id 0"):
        drops[0]
    with pytest.raises(InputTypeError, match="region: expected an integer region id"):
        drops[1.0]  # type: ignore[index]
    with pytest.raises(InputValueError, match=r"tensor: expected shape \(2,\)"):
        op.RegionValues((1, 2), torch.zeros(3))


class _LeftHalfOnly(nn.Module):
    """Outputs that depend on the left half of the image only."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        total = images[:, :, :, :4].sum(dim=(1, 2, 3))
        return torch.stack([total, -total, torch.zeros_like(total)], dim=1)


def test_significance_over_all_fills_gives_p_one_where_no_fill_changes_anything() -> None:
    images = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    result = op.sweep(
        _LeftHalfOnly(),
        images,
        op.grid(8, 8, 2, 2),
        labels=torch.zeros(8, dtype=torch.long),
        progress=False,
    )
    # Regions 2 and 4 (the right half) change no output under any fill, exactly.
    assert torch.equal(
        result.occluded[:, [1, 3]], result.baseline[:, None, None].expand(-1, 2, 6, -1)
    )
    # The mean over the six fills of those equal outputs is not always equal to them in
    # float32; the test must still see "no change", not rounding noise.
    averaged = result.occluded[:, [1, 3], :, 0].mean(dim=2)
    assert not torch.equal(averaged, result.baseline[:, None, 0].expand(-1, 2))
    table = result.significance(0, correct_only=False)
    for region in (2, 4):
        row = table.row(region)
        assert (row.p, row.effect_size, row.mean_drop) == (1.0, 0.0, 0.0), row
    assert table.row(1).p < 0.05 and table.row(3).p < 0.05


# -- per-pixel heat maps ----------------------------------------------------------------------


def test_heatmap_equals_captum_occlusion() -> None:
    from captum.attr import Occlusion

    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 13 * 14, 4)
    ).eval()
    images = torch.rand(3, 3, 13, 14, generator=torch.Generator().manual_seed(8))
    # (13 - 4) / 3 and (14 - 4) / 2 are whole: captum's windows are these. (Otherwise captum
    # adds a last window cut at the border, which sliding_windows does not make.)
    windows = op.sliding_windows(13, 14, window=4, stride=(3, 2))
    result = op.sweep(model, images, windows, fills=(0.0, 0.3), progress=False)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(x), dim=1)

    occlusion = Occlusion(forward)
    for cls, fill in ((1, 0.0), (3, 0.3)):
        expected = occlusion.attribute(
            images, sliding_window_shapes=(3, 4, 4), strides=(3, 3, 2), baselines=fill, target=cls
        )
        heat = result.heatmap(cls, fill=fill)
        assert heat.shape == (3, 13, 14)
        # captum's map is per input element; the windows span all channels, so it is equal
        # across channels and equal to the heat map.
        torch.testing.assert_close(expected, heat[:, None].expand(3, 3, 13, 14), rtol=0, atol=1e-5)
    # One class per image, and the mean over the fills.
    per_image = torch.tensor([0, 2, 1])
    heat = result.heatmap(per_image, fill_index=1)
    for n in range(3):
        torch.testing.assert_close(heat[n], result.heatmap(int(per_image[n]), fill=0.3)[n])
    mean = result.heatmap(2)
    torch.testing.assert_close(
        mean, (result.heatmap(2, fill=0.0) + result.heatmap(2, fill=0.3)) / 2
    )
    # attribution is the same map, in the images' shape.
    torch.testing.assert_close(result.attribution(2), mean[:, None].expand(3, 3, 13, 14))


def test_class_heatmap_is_the_mean_of_the_image_maps() -> None:
    model = small_cnn(classes=3).eval()
    images = torch.rand(6, 1, 12, 12, generator=torch.Generator().manual_seed(9))
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    windows = op.sliding_windows(12, 12, window=4, stride=2)
    full = op.sweep(model, images, windows, fills=(0.0, 1.0), labels=labels, progress=False)
    means = op.sweep(
        model, images, windows, fills=(0.0, 1.0), labels=labels, reduce="class_mean", progress=False
    )
    chosen = labels == 1
    expected = full.heatmap(1, fill=1.0)[chosen].double().mean(dim=0)
    for result in (full, means):
        got = result.class_heatmap(1, fill=1.0, correct_only=False)
        assert got.shape == (12, 12) and got.dtype == torch.float64
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_heatmap_errors() -> None:
    model = small_cnn(classes=3).eval()
    result = op.sweep(model, torch.rand(2, 1, 12, 12), op.grid(12, 12), fills=0.0, progress=False)
    with pytest.raises(
        InputValueError, match=r"cls: expected one class, or an integer tensor of shape \(2,\)"
    ):
        result.heatmap(torch.tensor([0.5, 1.0]))
    with pytest.raises(InputValueError, match=r"cls: expected class indices in \[0, 2\]"):
        result.heatmap(torch.tensor([0, 3]))
    with pytest.raises(InputValueError, match="fill"):
        result.heatmap(0, fill=0.7)
    with pytest.raises(
        InputValueError, match=r"computed: expected None or a bool tensor of shape \(2, 16\)"
    ):
        SweepResult(
            baseline=result.baseline,
            occluded=result.occluded,
            labels=None,
            regions=result.regions,
            fill_labels=result.fill_labels,
            computed=torch.ones(2, 15, dtype=torch.bool),
        )
    with pytest.raises(InputTypeError, match="fidelity: expected None or a Fidelity"):
        SweepResult(
            baseline=result.baseline,
            occluded=result.occluded,
            labels=None,
            regions=result.regions,
            fill_labels=result.fill_labels,
            fidelity=0.9,  # type: ignore[arg-type]
        )


def test_repr_is_short_at_a_thousand_classes() -> None:
    n, r, v, k = 3, 49, 2, 1000
    names = [f"class{i}" for i in range(k)]
    big = SweepResult(
        torch.rand(n, k),
        torch.rand(n, r, v, k),
        torch.tensor([0, 999, 5]),
        op.grid(14, 14, 7, 7),
        ("0.0", "1.0"),
        class_names=names,
        image_shape=(3, 14, 14),
    )
    text = repr(big)
    assert "\n" not in text and len(text) < 400
    assert "N=3 images" in text and "R=49" in text and "ids 1..49" in text
    assert "K=1000 classes (class0, class1, class2, ..., class997, class998, class999)" in text
    assert "occluded (3, 49, 2, 1000) float32" in text and "engine='dense'" in text
    assert "tensor(" not in text and repr(big) == str(big)


def _parts(result: SweepResult) -> dict[str, object]:
    return {
        "baseline": result.baseline,
        "occluded": result.occluded,
        "labels": result.labels,
        "regions": result.regions,
        "fill_labels": result.fill_labels,
        "class_names": result.class_names,
        "image_shape": result.image_shape,
        "output": result.output,
    }


def test_constructor_refuses_nan_outputs_and_bad_labels(result: SweepResult) -> None:
    for field in ("baseline", "occluded"):
        bad = getattr(result, field).clone()
        bad.view(-1)[7] = float("nan")
        with pytest.raises(InputValueError, match=f"{field}: expected finite outputs, got NaN"):
            SweepResult(**{**_parts(result), field: bad})  # type: ignore[arg-type]
    with pytest.raises(InputValueError, match=r"labels: expected class indices in \[0, 2\]"):
        SweepResult(**{**_parts(result), "labels": torch.full((12,), 3)})  # type: ignore[arg-type]
    with pytest.raises(InputValueError, match=r"got values -1\.\.2"):
        SweepResult(
            **{**_parts(result), "labels": torch.arange(12) % 3 - (torch.arange(12) == 0).long()}
        )  # type: ignore[arg-type]
    with pytest.raises(InputTypeError, match="labels: expected an integer tensor"):
        SweepResult(**{**_parts(result), "labels": torch.zeros(12)})  # type: ignore[arg-type]
    with pytest.raises(InputTypeError, match="baseline: expected a float tensor"):
        SweepResult(**{**_parts(result), "baseline": torch.zeros(12, 3, dtype=torch.int64)})  # type: ignore[arg-type]


def test_concatenate_refuses_parts_of_different_sweeps(result: SweepResult) -> None:
    logits = SweepResult(**{**_parts(result), "output": "logits"})  # type: ignore[arg-type]
    with pytest.raises(InputValueError, match=r"part 1 .* output \('logits' vs 'softmax'\)"):
        SweepResult.concatenate([result, logits])
    masks = result.regions.masks.flip(-1)  # the same ids, other regions
    flipped = SweepResult(**{**_parts(result), "regions": op.Regions(masks, result.regions.ids)})  # type: ignore[arg-type]
    with pytest.raises(InputValueError, match=r"region masks \(equal ids, other regions\)"):
        SweepResult.concatenate([result, flipped])
    with pytest.raises(InputTypeError, match="parts: expected SweepResults only"):
        SweepResult.concatenate([result, "x"])  # type: ignore[list-item]
    with pytest.raises(InputTypeError, match="parts: expected a sequence of SweepResult"):
        SweepResult.concatenate(result)  # type: ignore[arg-type]
    joined = SweepResult.concatenate([result, result])
    assert joined.num_images == 24 and torch.equal(joined.occluded[12:], result.occluded)


def test_image_ranking_equals_a_plain_sort(result: SweepResult) -> None:
    ids = list(result.regions.ids)
    for n in range(result.num_images):
        for cls in (None, 0, 2, "b"):
            index = int(result.predicted[n]) if cls is None else result.class_index(cls)
            for fill in (None, 0.4):
                drops = []
                for r in range(len(ids)):
                    values = [
                        float(result.baseline[n, index]) - float(result.occluded[n, r, v, index])
                        for v in range(len(result.fill_labels))
                        if fill is None or result.fill_labels[v] == "0.4"
                    ]
                    drops.append(sum(values) / len(values))
                expected = [ids[r] for r in sorted(range(len(ids)), key=lambda r: -drops[r])]
                got = result.image_ranking(n, cls, fill=fill)
                assert got == expected or np.allclose(
                    [drops[ids.index(i)] for i in got], [drops[ids.index(i)] for i in expected]
                )
    for bad, error in ((12, InputValueError), (-1, InputValueError), (1.0, InputTypeError)):
        with pytest.raises(error, match=r"image: expected an int in \[0, 11\]"):
            result.image_ranking(bad)


def _conv_net(rank: int, channels: int, classes: int) -> nn.Module:
    conv = {1: nn.Conv1d, 3: nn.Conv3d}[rank]
    pool = {1: nn.AdaptiveAvgPool1d, 3: nn.AdaptiveAvgPool3d}[rank]
    torch.manual_seed(rank)
    return nn.Sequential(
        conv(channels, 6, 3, padding=1), nn.ReLU(), conv(6, 6, 3, stride=2), nn.ReLU(),
        pool(2), nn.Flatten(), nn.Linear(6 * 2**rank, classes),
    ).eval()  # fmt: skip


@pytest.mark.parametrize(
    ("shape", "window", "stride"),
    [((40,), (8,), (4,)), ((9, 10, 11), (3, 4, 3), (3, 2, 2))],
    ids=["1d", "3d"],
)
def test_heatmap_at_any_rank_equals_captum_occlusion(
    shape: tuple[int, ...], window: tuple[int, ...], stride: tuple[int, ...]
) -> None:
    from captum.attr import Occlusion

    channels = 2
    model = _conv_net(len(shape), channels, 3)
    images = torch.rand(2, channels, *shape, generator=torch.Generator().manual_seed(3))
    windows = op.sliding_windows(shape, window, stride)
    result = op.sweep(model, images, windows, fills=(0.0, 0.4), engine="dense", progress=False)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(x), dim=1)

    for cls, fill in ((0, 0.0), (2, 0.4)):
        expected = Occlusion(forward).attribute(
            images,
            sliding_window_shapes=(channels, *window),
            strides=(channels, *stride),
            baselines=fill,
            target=cls,
        )
        heat = result.heatmap(cls, fill=fill)
        assert heat.shape == (2, *shape)
        torch.testing.assert_close(expected, heat[:, None].expand_as(expected), rtol=0, atol=1e-5)
        attribution = result.attribution(cls, fill=fill)
        assert attribution.shape == images.shape


@pytest.mark.parametrize("rank", [1, 3])
def test_attribution_at_any_rank_equals_captum_feature_ablation(rank: int) -> None:
    from captum.attr import FeatureAblation

    shape = (24,) if rank == 1 else (6, 7, 8)
    model = _conv_net(rank, 1, 4)
    images = torch.rand(3, 1, *shape, generator=torch.Generator().manual_seed(5))
    regions = op.grid(shape, 3 if rank == 1 else (2, 2, 3))
    result = op.sweep(model, images, regions, fills=0.25, output="logits", engine="dense", progress=False)  # fmt: skip
    mask = regions.label_map()[None, None]
    expected = FeatureAblation(model).attribute(images, target=1, baselines=0.25, feature_mask=mask)
    torch.testing.assert_close(result.attribution(1, fill=0.25), expected, rtol=0, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")
def test_volume_heatmap_matches_monai_occlusion_sensitivity() -> None:
    monai = pytest.importorskip("monai.visualize")
    model = _conv_net(3, 1, 3)
    volume = torch.rand(1, 1, 12, 12, 12, generator=torch.Generator().manual_seed(6))
    sensitivity = monai.OcclusionSensitivity(
        model, mask_size=4, n_batch=64, verbose=False, mode=0.0, overlap=0.5, activate=False
    )
    with torch.no_grad():
        monai_map = sensitivity(volume)[0][0].as_tensor()  # (K, D, H, W): occluded outputs
    windows = op.sliding_windows((12, 12, 12), window=4, stride=2)
    result = op.sweep(model, volume, windows, fills=0.0, output="logits", engine="dense", progress=False)  # fmt: skip
    # MONAI's map holds, per voxel and class, the occluded output averaged over the windows
    # covering the voxel: the unoccluded output minus the heat map (the mean drop).
    ours = torch.stack([result.baseline[0, k] - result.heatmap(k)[0] for k in range(3)])
    torch.testing.assert_close(ours.float(), monai_map.float(), rtol=0, atol=1e-5)
