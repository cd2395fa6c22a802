from __future__ import annotations

import re

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from reference_models import small_cnn
from torch import Tensor, nn

import occlusion_probe as op
from occlusion_probe import (
    AucDifference,
    EmptySelectionError,
    InputTypeError,
    InputValueError,
    PerturbationCurve,
)

GRID = op.grid(8, 8)  # 16 areas of 2x2 pixels, ids 1..16 as in the paper
MOUTH = GRID.union([10, 11])
REST = [i for i in GRID.ids if i not in (10, 11)]


class MouthReader(nn.Module):
    """Reads only areas 10 and 11: class 0 when their mean is above 0.5, else class 1."""

    def forward(self, x: Tensor) -> Tensor:
        level = x[:, 0][:, MOUTH].mean(dim=1) - 0.5
        return torch.stack([8 * level, -8 * level], dim=1)


def mouth_data(n: int = 40, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Balanced classes: the mouth areas are 0.9 for class 0, 0.1 for class 1; the rest noise.
    Filled with 0, one hidden mouth area is enough to make a class-0 image class 1."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, 8, 8, generator=generator)
    labels = torch.arange(n) % 2
    images[:, 0][:, MOUTH] = torch.where(labels[:, None] == 0, 0.9, 0.1)
    return images, labels


def curve(model: object, images: object, order: object, **kwargs: object) -> PerturbationCurve:
    kwargs.setdefault("progress", False)
    return op.perturbation_curve(model, images, GRID, order, **kwargs)  # type: ignore[arg-type]


# --- what the issue asks -------------------------------------------------------------------


def test_mouth_first_keeps_full_accuracy_at_two_and_removing_it_gives_chance() -> None:
    images, labels = mouth_data()
    model = MouthReader()
    keep = curve(model, images, [10, 11, *REST], labels=labels, mode="keep")
    remove = curve(model, images, [10, 11, *REST], labels=labels, mode="remove")
    # keep: all filled (chance: everything is class 1), one mouth area is not enough, both are.
    assert keep.accuracy[:3].tolist() == [0.5, 0.5, 1.0]
    assert keep.accuracy[2:].tolist() == [1.0] * 15
    assert remove.accuracy[:3].tolist() == [1.0, 0.5, 0.5]
    assert remove.accuracy[2:].tolist() == [0.5] * 15
    # the recall tells which class survives: class 1 (dark mouth) always, class 0 only with it
    assert remove.recall[2].tolist() == [0.0, 1.0]
    assert keep.recall[2].tolist() == [1.0, 1.0]
    random_keep = curve(model, images, "random", labels=labels, mode="keep", draws=8)
    random_remove = curve(model, images, "random", labels=labels, mode="remove", draws=8)
    assert keep.auc() > random_keep.auc() > 0.5
    assert remove.auc() < random_remove.auc() < 1.0
    assert torch.all(random_keep.accuracy <= keep.accuracy)
    assert torch.all(random_remove.accuracy >= remove.accuracy)
    # the band holds the mean; its shape is (2, R + 1)
    band = random_keep.accuracy_band
    assert band.shape == (2, 17)
    assert torch.all(band[0] <= random_keep.accuracy + 1e-12)
    assert torch.all(random_keep.accuracy <= band[1] + 1e-12)


def test_random_orders_average_to_the_expected_curve() -> None:
    # Class 0 survives keeping k regions only when both mouth areas are among them:
    # P = k (k - 1) / (R (R - 1)) for a uniform order.
    images, labels = mouth_data(200)
    random = curve(MouthReader(), images, "random", labels=labels, draws=20, seed=3)
    k = torch.arange(17, dtype=torch.float64)
    expected = 0.5 + 0.5 * k * (k - 1) / (16 * 15)
    torch.testing.assert_close(random.accuracy, expected, atol=0.03, rtol=0)
    assert random.num_draws == 20 and random.orders.shape == (20, 200, 16)
    # every stored order is a permutation of the ids
    assert torch.equal(random.orders.sort(dim=2).values[0, 0], torch.arange(1, 17))


def test_auc_equals_a_hand_computation() -> None:
    images, labels = mouth_data()
    keep = curve(MouthReader(), images, [10, 11, *REST], labels=labels)
    # points 0.5, 0.5, 1, 1, ... at k / 16: (0.5 + 0.5) / 2 / 16 + (0.5 + 1) / 2 / 16 + 14 / 16
    assert keep.auc() == pytest.approx((0.5 + 0.75 + 14) / 16, abs=1e-15)
    remove = curve(MouthReader(), images, [10, 11, *REST], labels=labels, mode="remove")
    assert remove.auc() == pytest.approx((0.75 + 15 * 0.5) / 16, abs=1e-15)
    values = remove.class_output.numpy()
    assert remove.auc("class_output") == pytest.approx(float(np.trapezoid(values, dx=1 / 16)))
    assert remove.auc("recall", cls=1) == pytest.approx(1.0)
    assert remove.auc("recall", cls=0) == pytest.approx((1.0 + 0.0) / 2 / 16)  # 1, 0, 0, ...


def test_ends_keep_all_is_the_unoccluded_accuracy_and_keep_none_is_all_filled() -> None:
    model = small_cnn(classes=3).eval()
    images = torch.rand(12, 1, 12, 12, generator=torch.Generator().manual_seed(4))
    labels = torch.arange(12) % 3
    regions = op.grid(12, 12, 3, 3)
    result = op.perturbation_curve(
        model, images, regions, list(regions.ids), labels=labels, progress=False
    )
    with torch.no_grad():
        plain = model(images).argmax(1)
        filled = model(torch.zeros_like(images)).argmax(1)
    assert float(result.accuracy[-1]) == float((plain == labels).double().mean())
    assert torch.equal(result.predicted[0, :, -1], plain)
    assert torch.equal(result.predicted[0, :, 0], filled)
    remove = op.perturbation_curve(
        model, images, regions, list(regions.ids), labels=labels, mode="remove", progress=False
    )
    assert torch.equal(remove.predicted[0, :, 0], plain)
    assert torch.equal(remove.predicted[0, :, -1], filled)


@pytest.mark.parametrize("batch_size", [1, 5, "auto"])
def test_each_point_equals_keep_only_for_its_set(batch_size: int | str) -> None:
    model = small_cnn(classes=4).eval()
    images = torch.rand(10, 1, 12, 12, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 0])
    regions = op.grid(12, 12, 3, 3)
    order = [5, 1, 9, 2, 8, 3, 7, 4, 6]
    keep = op.perturbation_curve(
        model, images, regions, order, labels=labels, fill=0.25, batch_size=batch_size,
        progress=False,
    )  # fmt: skip
    remove = op.perturbation_curve(
        model, images, regions, order, labels=labels, fill=0.25, mode="remove",
        batch_size=batch_size, progress=False,
    )  # fmt: skip
    for k in range(len(regions) + 1):
        kept = op.keep_only(
            model, images, labels, regions, keep=order[:k], fill=0.25, batch_size=batch_size,
            progress=False,
        )  # fmt: skip
        assert torch.equal(keep.report(k).confusion, kept.confusion), k
        assert keep.report(k).kept_ids == tuple(order[:k])
        assert float(keep.accuracy[k]) == kept.accuracy
        # a grid is a partition: removing the first k is keeping the other R - k
        rest = op.keep_only(
            model, images, labels, regions, keep=order[k:], fill=0.25, batch_size=batch_size,
            progress=False,
        )  # fmt: skip
        assert torch.equal(remove.report(k).confusion, rest.confusion), k
        assert torch.equal(keep.recall[k], kept.recall)
    assert torch.equal(keep.confusion[0, 3], keep.report(3).confusion)


def test_outputs_equal_the_model_on_the_keep_only_image() -> None:
    model = small_cnn(classes=4).eval()
    images = torch.rand(6, 1, 12, 12, generator=torch.Generator().manual_seed(5))
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    regions = op.grid(12, 12, 3, 3)
    order = [9, 8, 7, 6, 5, 4, 3, 2, 1]
    result = op.perturbation_curve(
        model, images, regions, order, labels=labels, fill=0.5, batch_size=1, progress=False
    )
    with torch.no_grad():
        for k in range(10):
            visible = regions.union(order[:k])
            made = torch.where(visible, images, torch.tensor(0.5))
            expected = torch.softmax(model(made), dim=1)[torch.arange(6), labels]
            outputs = torch.stack([torch.softmax(model(m[None]), dim=1)[0] for m in made])
            assert torch.equal(result.class_outputs[0, :, k], outputs[torch.arange(6), labels])
            torch.testing.assert_close(result.class_outputs[0, :, k], expected)
    mean = result.class_outputs[0].double().mean(dim=0)
    assert torch.equal(result.class_output, mean)


def test_batch_size_and_chunking_do_not_change_the_result() -> None:
    images, labels = mouth_data(30)
    model = MouthReader()
    one = curve(model, images, "random", labels=labels, draws=3, seed=7, batch_size=1)
    auto = curve(model, images, "random", labels=labels, draws=3, seed=7)
    stream = curve(
        model, [(images[:7], labels[:7]), (images[7:], labels[7:])], "random", draws=3, seed=7
    )
    for other in (auto, stream):
        assert torch.equal(one.orders, other.orders)
        assert torch.equal(one.predicted, other.predicted)
        assert torch.equal(one.class_outputs, other.class_outputs)
    different = curve(model, images, "random", labels=labels, draws=3, seed=8)
    assert not torch.equal(one.orders, different.orders)


@pytest.mark.parametrize("n", [1, 2])
def test_one_and_two_images(n: int) -> None:
    images, labels = mouth_data(n)
    result = curve(MouthReader(), images, [10, 11, *REST], labels=labels)
    assert result.num_images == n
    assert result.accuracy.shape == (17,) and result.recall.shape == (17, 2)
    assert float(result.accuracy[-1]) == 1.0
    random = curve(MouthReader(), images, "random", labels=labels, draws=2)
    difference = result.compare(random, n_resamples=50)
    assert difference.low <= difference.difference <= difference.high


def test_zero_images_is_the_library_error() -> None:
    with pytest.raises(InputValueError, match=re.escape("images: expected at least one image")):
        curve(MouthReader(), torch.rand(0, 1, 8, 8), list(GRID.ids), labels=torch.zeros(0))


@settings(max_examples=15, deadline=None)
@given(st.permutations(list(range(1, 17))), st.sampled_from(["keep", "remove"]))
def test_the_ends_do_not_depend_on_the_order(order: list[int], mode: str) -> None:
    images = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    labels = torch.tensor([0, 1, 2, 0])
    model = small_cnn(classes=3, size=8).eval()
    first = curve(model, images, order, labels=labels, mode=mode)
    plain = curve(model, images, list(GRID.ids), labels=labels, mode=mode)
    for end in (0, 16):
        assert torch.equal(first.predicted[..., end], plain.predicted[..., end])
        assert torch.equal(first.class_outputs[..., end], plain.class_outputs[..., end])
    assert first.auc() == pytest.approx(first.auc())
    assert 0.0 <= first.auc() <= 1.0


# --- orders from sweeps --------------------------------------------------------------------


def test_order_from_a_sweep_ranks_each_image_by_its_class() -> None:
    images, labels = mouth_data(20)
    model = MouthReader()
    result = op.sweep(model, images, GRID, labels=labels, progress=False)
    ranked = curve(model, images, result, labels=labels)
    # class 0 images (mouth at 0.9) lose class 0 when 10 or 11 is filled: those rank first
    assert set(ranked.orders[0, 0, :2].tolist()) == {10, 11}
    assert ranked.orders[0, 0].tolist() == result.ranking(0)
    assert ranked.orders[0, 1].tolist() == result.ranking(1)
    assert ranked.accuracy[2] == 1.0
    assert "per class" in ranked.order
    means = op.sweep(model, images, GRID, labels=labels, reduce="class_mean", progress=False)
    assert torch.equal(curve(model, images, means, labels=labels).orders, ranked.orders)
    mapping = curve(model, images, {0: result.ranking(0), 1: result.ranking(1)}, labels=labels)
    assert torch.equal(mapping.orders, ranked.orders)


def test_per_image_order_uses_each_images_own_drops() -> None:
    model = small_cnn(classes=3, size=8).eval()
    images = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(11))
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    result = op.sweep(model, images, GRID, labels=labels, progress=False)
    own = curve(model, images, result, labels=labels, per_image=True)
    for i in range(6):
        drops = result.delta[i, :, :, labels[i]].double().mean(dim=1)
        expected = [GRID.ids[j] for j in torch.sort(drops, descending=True, stable=True).indices]
        assert own.orders[0, i].tolist() == expected
    tracked = curve(model, images, result, labels=labels, per_image=True, target=2)
    drops = result.delta[0, :, :, 2].double().mean(dim=1)
    assert tracked.orders[0, 0, 0] == GRID.ids[int(drops.argmax())]
    assert tracked.target == 2
    with torch.no_grad():
        out = torch.softmax(model(images), dim=1)[:, 2]
    torch.testing.assert_close(tracked.class_outputs[0, :, -1], out)


def test_compare_gives_a_bootstrap_interval_of_the_auc_difference() -> None:
    images, labels = mouth_data(40)
    model = MouthReader()
    keep = curve(model, images, [10, 11, *REST], labels=labels)
    random = curve(model, images, "random", labels=labels, draws=4)
    difference = keep.compare(random, n_resamples=500, seed=1)
    assert isinstance(difference, AucDifference)
    assert difference.auc == pytest.approx(keep.auc())
    assert difference.baseline_auc == pytest.approx(random.auc())
    assert difference.difference == pytest.approx(keep.auc() - random.auc())
    assert 0 < difference.low <= difference.difference <= difference.high
    assert difference == keep.compare(random, n_resamples=500, seed=1)
    recall = keep.compare(random, "recall", cls=0, n_resamples=200)
    assert recall.num_images == 20
    assert recall.difference == pytest.approx(
        keep.auc("recall", cls=0) - random.auc("recall", cls=0)
    )
    payload = keep.as_dict()
    assert payload["auc_accuracy"] == keep.auc() and len(payload["accuracy"]) == 17


# --- bad input -----------------------------------------------------------------------------


def test_bad_orders_get_the_library_errors() -> None:
    images, labels = mouth_data(4)
    model = MouthReader()
    cases: list[tuple[object, type[Exception], str]] = [
        ([10, 11, 17, *REST[:-1]], InputValueError, "order: unknown region ids [17]"),
        ([10, 10, *REST], InputValueError, "order: region ids [10] appear more than once"),
        ([10, 11], InputValueError, "order: expected a permutation of all 16 region ids"),
        ([10.0, 11, *REST], InputTypeError, "order: expected integer region ids, got [10.0]"),
        ("best", InputValueError, "or \"random\", got 'best'"),
        (3, InputTypeError, "order: expected a sequence of region ids, a mapping"),
        ({0: [10, 11, *REST]}, InputValueError, "order: no order for class 1"),
        ({0: [10, 11]}, InputValueError, "order[0]: expected a permutation"),
    ]
    for order, error, message in cases:
        with pytest.raises(error, match=re.escape(message)):
            curve(model, images, order, labels=labels)


def test_orders_given_per_image_replay_an_earlier_curve() -> None:
    images, labels = mouth_data(6)
    model = small_cnn(classes=2, size=8).eval()
    random = curve(
        model, images, "random", labels=labels, draws=3, seed=7, fill=0.25, batch_size=16
    )
    replay = curve(model, images, random.orders, labels=labels, fill=0.25, batch_size=7)
    assert replay.num_draws == 3 and "given per image" in replay.order
    assert torch.equal(replay.orders, random.orders)
    assert torch.equal(replay.predicted, random.predicted)
    assert torch.equal(replay.class_outputs, random.class_outputs)
    stream = [(images[:4], labels[:4]), (images[4:], labels[4:])]
    streamed = curve(model, stream, random.orders.numpy(), fill=0.25, batch_size=16)
    assert torch.equal(streamed.class_outputs, random.class_outputs)
    # One order per image (N, R): each image as a curve of its own fixed order.
    first = random.orders[0]
    per_image = curve(model, images, first, labels=labels, mode="remove", batch_size=16)
    for i in range(images.shape[0]):
        alone = curve(
            model,
            images[i : i + 1],
            first[i].tolist(),
            labels=labels[i : i + 1],
            mode="remove",
            batch_size=16,
        )
        assert torch.equal(per_image.class_outputs[:, i], alone.class_outputs[:, 0])
        assert torch.equal(per_image.predicted[:, i], alone.predicted[:, 0])


def test_bad_orders_given_per_image_get_the_library_errors() -> None:
    images, labels = mouth_data(4)
    model = MouthReader()
    good = torch.stack([torch.randperm(16, generator=torch.Generator().manual_seed(i)) + 1
                        for i in range(4)])  # fmt: skip
    repeated = good.clone()
    repeated[2, 0] = repeated[2, 1]
    unknown = good.clone()
    unknown[1, 3] = 17
    cases: list[tuple[object, type[Exception], str]] = [
        (good.float(), InputTypeError, "order: expected integer region ids, got Tensor"),
        (
            good[:, :15],
            InputValueError,
            "order: expected region ids of shape (N, 16) or (D, N, 16)",
        ),
        (good[None, :0][:0], InputValueError, "order: expected region ids of shape"),
        (unknown, InputValueError, "order: unknown region ids [17]"),
        (repeated, InputValueError, "order: the order of draw 0, image 2 is no permutation"),
        (good[:3], InputValueError, "order: orders given for 3 images, but there are 4 images"),
        (good[None, None], InputValueError, "order: expected region ids of shape (R,), one"),
    ]
    for order, error, message in cases:
        with pytest.raises(error, match=re.escape(message)):
            curve(model, images, order, labels=labels)
    stream = [(images[:2], labels[:2]), (images[2:], labels[2:])]
    with pytest.raises(InputValueError, match=re.escape("go on past image 2")):
        curve(model, stream, good[:3])
    with pytest.raises(InputValueError, match=re.escape("but the stream held 4")):
        curve(model, stream, torch.cat([good, good[:1]]))


def test_a_ranking_from_another_grid_or_other_images_is_refused() -> None:
    images, labels = mouth_data(4)
    model = MouthReader()
    coarse = op.sweep(model, images, op.grid(8, 8, 2, 2), labels=labels, progress=False)
    with pytest.raises(InputValueError, match="order: the SweepResult was swept over other"):
        curve(model, images, coarse, labels=labels)
    other = op.sweep(model, images[:3], GRID, labels=labels[:3], progress=False)
    with pytest.raises(InputValueError, match="per_image=True needs a SweepResult of the same 4"):
        curve(model, images, other, labels=labels, per_image=True)
    swapped = op.sweep(model, images, GRID, labels=1 - labels, progress=False)
    with pytest.raises(InputValueError, match=r"its labels differ at images \[0, 1, 2, 3\]"):
        curve(model, images, swapped, labels=labels, per_image=True)
    with pytest.raises(InputValueError, match="per_image: True ranks each image"):
        curve(model, images, [10, 11, *REST], labels=labels, per_image=True)


def test_a_class_the_sweep_cannot_rank_is_named() -> None:
    images, labels = mouth_data(4)
    model = MouthReader()
    # only class 1 images swept: class 0 has no correctly classified image to rank by
    result = op.sweep(model, images[1::2], GRID, labels=labels[1::2], progress=False)
    with pytest.raises(EmptySelectionError, match="no correctly classified image of class 0"):
        curve(model, images, result, labels=labels)


def test_bad_arguments_get_the_library_errors() -> None:
    images, labels = mouth_data(4)
    model = MouthReader()
    order = [10, 11, *REST]
    with pytest.raises(InputValueError, match='mode: expected "keep" or "remove", got \'drop\''):
        curve(model, images, order, labels=labels, mode="drop")
    with pytest.raises(InputValueError, match="labels: perturbation_curve needs the true class"):
        curve(model, images, order)
    with pytest.raises(InputValueError, match=r"draws: expected an int in \[1, "):
        curve(model, images, "random", labels=labels, draws=0)
    with pytest.raises(InputTypeError, match="per_image"):
        curve(model, images, order, labels=labels, per_image=1)
    with pytest.raises(InputValueError, match=r"target: expected a class index in \[0, 1\]"):
        curve(model, images, order, labels=labels, target=5)
    with pytest.raises(InputValueError, match="batch_size"):
        curve(model, images, order, labels=labels, batch_size=0)
    with pytest.raises(InputValueError, match=r"labels: expected class labels in \[0, 1\]"):
        curve(model, images, order, labels=labels + 1)
    result = curve(model, images, order, labels=labels)
    with pytest.raises(InputValueError, match='metric: expected "accuracy"'):
        result.auc("loss")
    with pytest.raises(InputValueError, match='cls: metric="recall" needs the class'):
        result.auc("recall")
    with pytest.raises(InputValueError, match=r"k: expected an int in \[0, 16\], got 17"):
        result.report(17)
    removed = curve(model, images, order, labels=labels, mode="remove")
    with pytest.raises(InputValueError, match="baseline: expected a curve of the same mode"):
        result.compare(removed)
    with pytest.raises(InputTypeError, match="baseline: expected a PerturbationCurve"):
        result.compare(0.5)  # type: ignore[arg-type]


def test_train_mode_is_restored_and_nan_outputs_are_named() -> None:
    model = small_cnn(classes=3, size=8).train()
    images = torch.rand(3, 1, 8, 8)
    curve(model, images, list(GRID.ids), labels=torch.tensor([0, 1, 2]))
    assert model.training

    class Nan(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            out = x.flatten(1)[:, :2].clone()
            out[x.flatten(1).sum(1) == 0] = float("nan")
            return out

    with pytest.raises(InputValueError, match="model: produced NaN or inf outputs for keep"):
        curve(Nan(), images, list(GRID.ids), labels=torch.tensor([0, 1, 0]))


def test_mirrored_is_the_other_mode_with_reversed_orders() -> None:
    model = small_cnn(classes=3, size=8).eval()
    images = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(12))
    labels = torch.tensor([0, 1, 2, 0, 1])
    order = [3, 16, 1, 10, 11, 6, 7, 2, 4, 5, 8, 9, 12, 13, 14, 15]
    keep = curve(model, images, order, labels=labels, batch_size=1)
    remove = curve(model, images, order[::-1], labels=labels, mode="remove", batch_size=1)
    mirrored = keep.mirrored()
    assert mirrored.mode == "remove" and "reversed" in mirrored.order
    assert torch.equal(mirrored.orders, remove.orders)
    assert torch.equal(mirrored.predicted, remove.predicted)
    assert torch.equal(mirrored.class_outputs, remove.class_outputs)
    assert torch.equal(mirrored.mirrored().predicted, keep.predicted)
    random = curve(model, images, "random", labels=labels, draws=3).mirrored()
    assert random.mode == "remove" and random.num_draws == 3
    windows = op.sliding_windows(8, 8, 4, 2)
    overlapping = op.perturbation_curve(
        model, images, windows, list(windows.ids), labels=labels, progress=False
    )
    with pytest.raises(InputValueError, match="mirrored: keeping R - k regions equals"):
        overlapping.mirrored()


def test_signature_of_the_contract() -> None:
    import inspect

    parameters = inspect.signature(op.perturbation_curve).parameters
    assert tuple(parameters)[:4] == ("model", "images", "regions", "order")
    for name in ("mode", "labels", "fill", "output", "batch_size", "device", "progress"):
        assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY, name
    assert parameters["mode"].default == "keep" and parameters["fill"].default == 0.0


def test_streamed_batches_give_the_tensor_result_for_every_kind_of_order() -> None:
    images, labels = mouth_data(12)
    model = MouthReader()
    result = op.sweep(model, images, GRID, labels=labels, progress=False)
    batches = [(images[:5], labels[:5]), (images[5:], labels[5:])]
    for order, per_image in ((result, True), (result, False), ([10, 11, *REST], False)):
        whole = curve(model, images, order, labels=labels, per_image=per_image)
        streamed = curve(model, batches, order, per_image=per_image)
        assert torch.equal(whole.orders, streamed.orders)
        assert torch.equal(whole.predicted, streamed.predicted)
        assert torch.equal(whole.class_outputs, streamed.class_outputs)
    with pytest.raises(InputValueError, match="it holds 12 and the stream held 5"):
        curve(model, batches[:1], result, per_image=True)
    with pytest.raises(InputValueError, match="perturbation_curve needs labels with every batch"):
        curve(model, [images[:5]], [10, 11, *REST])
