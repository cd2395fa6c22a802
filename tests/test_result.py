from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import FeatureAblation
from reference_models import small_cnn
from torch import nn

import occlusion_probe as op
from occlusion_probe import InputTypeError, InputValueError, OcclusionProbeWarning, SweepResult


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
            expected = torch.stack(rows).mean(0)
            torch.testing.assert_close(
                result.class_curves(cls, correct_only=correct_only), expected
            )
    torch.testing.assert_close(result.class_curves("b"), result.class_curves(1))


def test_empty_class_curve_warns_and_is_nan(result: SweepResult) -> None:
    labels = torch.zeros(12, dtype=torch.int64)
    only_zero = SweepResult(
        result.baseline, result.occluded, labels, result.regions, result.fill_labels
    )
    with pytest.warns(OcclusionProbeWarning, match="no image selected for class 2"):
        curves = only_zero.class_curves(2)
    assert curves.shape == (9, 6) and bool(curves.isnan().all())
    with pytest.raises(InputValueError, match="no image selected for class 2"):
        only_zero.ranking(2)


def test_ranking_and_mean_drop(result: SweepResult) -> None:
    drops = result.mean_drop(0, correct_only=False)
    assert result.labels is not None
    chosen = result.labels == 0
    expected = (result.baseline[chosen, None, None, 0] - result.occluded[chosen, :, :, 0]).mean(
        (0, 2)
    )
    torch.testing.assert_close(drops, expected)
    ranking = result.ranking(0, correct_only=False)
    assert sorted(ranking) == list(range(1, 10))
    assert ranking[0] == int(torch.argmax(expected)) + 1
    per_fill = result.mean_drop(0, fill=0.4, correct_only=False)
    torch.testing.assert_close(
        per_fill, (result.baseline[chosen, None, 0] - result.occluded[chosen, :, 2, 0]).mean(0)
    )
    assert result.fill_position("0.4") == result.fill_position(2) == 2


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
        (lambda r: r.class_curves(1.0), InputTypeError, "cls: expected a class index or name"),
        (
            lambda r: r.ranking(0, fill=0.3, correct_only=False),
            InputValueError,
            "fill: no fill with value 0.3",
        ),
        (
            lambda r: r.ranking(0, fill=6, correct_only=False),
            InputValueError,
            r"fill: expected a position in \[0, 5\], got 6",
        ),
        (
            lambda r: r.attribution(torch.zeros(3, dtype=torch.int64)),
            InputValueError,
            r"target: expected an int or an integer tensor of shape \(12,\)",
        ),
        (
            lambda r: r.attribution(torch.full((12,), 5)),
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
        result.attribution(targets, fill=fill_index), expected, rtol=1e-5, atol=1e-5
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
