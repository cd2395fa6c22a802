"""fer_paper.perturbation: shared random orders, the imputed curves on a subset, the leakage
check and its sentence (tiny model and images; the full pipeline is in test_fer2013_quick)."""

from __future__ import annotations

import pytest
import torch
from fer_paper.perturbation import (
    CurveSet,
    compute_curves,
    leakage,
    leakage_sentence,
    shared_random_orders,
    spans,
)
from torch import nn

import occlusion_probe as op

REGIONS = op.grid(8, 8, rows=2, cols=2)


def test_shared_random_orders_come_from_the_pool() -> None:
    orders = shared_random_orders(300, op.grid(8, 8), draws=2, pool=5, seed=3)
    assert orders.shape == (2, 300, 16)
    assert torch.equal(orders.sort(dim=2).values, torch.arange(1, 17).expand(2, 300, 16))
    distinct = torch.unique(orders.reshape(-1, 16), dim=0)
    assert distinct.shape[0] == 5
    # An image's draws are distinct orders of the pool.
    assert bool((orders[0] != orders[1]).any(dim=1).all())
    # Every pool order serves some image first (300 images, 5 orders).
    assert torch.unique(orders[0], dim=0).shape[0] == 5
    assert torch.equal(orders, shared_random_orders(300, op.grid(8, 8), 2, 5, seed=3))
    assert not torch.equal(orders, shared_random_orders(300, op.grid(8, 8), 2, 5, seed=4))
    with pytest.raises(ValueError, match="expected 1 <= draws <= pool"):
        shared_random_orders(3, op.grid(8, 8), draws=3, pool=2, seed=0)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()


def test_imputed_curves_use_the_constant_curves_orders_on_their_subset() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(10, 1, 8, 8, generator=generator)
    model = _model()
    labels = model(images).argmax(dim=1)  # every class present is ranked
    result = op.sweep(model, images, REGIONS, fills=[0.0], labels=labels, progress=False)
    common = {"output": "softmax", "batch_size": 16, "device": "cpu", "progress": False}
    curves = compute_curves(
        model, images, labels, result, REGIONS, common=common, draws=2, pool=3,
        imputation_images=4, seed=1, left_out={},
    )  # fmt: skip
    assert curves.imputed is not None and len(curves.subset) == 4
    subset = torch.tensor(curves.subset)
    assert torch.equal(subset, subset.sort().values)
    assert torch.equal(curves.imputed.keep_random.orders, curves.keep_random.orders[:, subset])
    assert curves.imputed.fill == "linear_imputation(noise=0.01, seed=0)"
    # The constant curves on the subset equal a run over the subset's images alone.
    alone = op.perturbation_curve(
        model, images[subset], REGIONS, curves.keep_random.orders[:, subset],
        labels=labels[subset], **common,
    )  # fmt: skip
    view = curves.constant_on_subset
    assert torch.equal(view.keep_random.class_outputs, alone.class_outputs)
    assert torch.equal(view.remove_random.predicted, alone.mirrored().predicted)
    # The imputed remove curve at k = 1 fills the top area of each image's class ranking.
    fill = op.fills.linear_imputation()
    for position, i in enumerate(curves.subset):
        top = result.ranking(int(labels[i]))[0]
        occluded = fill(images[i : i + 1], REGIONS.union([top])[None])
        logits = model(occluded)
        assert int(curves.imputed.remove.predicted[0, position, 1]) == int(logits.argmax())
    none = compute_curves(
        model, images, labels, result, REGIONS, common=common, draws=2, pool=3,
        imputation_images=0, seed=1, left_out={},
    )  # fmt: skip
    assert none.imputed is None and torch.equal(none.keep.predicted, curves.keep.predicted)
    # One keep call over ranking, reversed ranking and random orders gives the curves the
    # library gives from the sweep's ranking and from the orders, mode by mode.
    for mode, got in (("keep", curves.keep), ("remove", curves.remove)):
        want = op.perturbation_curve(
            model, images, REGIONS, result, mode=mode, labels=labels, fill=0.0, **common
        )
        assert torch.equal(got.orders, want.orders)
        assert torch.equal(got.predicted, want.predicted)
        torch.testing.assert_close(got.class_outputs, want.class_outputs)
    random = op.perturbation_curve(
        model, images, REGIONS, curves.keep_random.orders, labels=labels, **common
    )
    for got, want in ((curves.keep_random, random), (curves.remove_random, random.mirrored())):
        assert got.mode == want.mode and torch.equal(got.orders, want.orders)
        assert torch.equal(got.predicted, want.predicted)


def _remove_curves(ranked: list[list[int]], random: list[list[int]]) -> CurveSet:
    """Curves of 4 regions whose correctness per image and k is given: (N, 5) 0/1 lists."""
    labels = torch.zeros(len(ranked), dtype=torch.int64)

    def make(correct: list[list[int]], mode: str) -> op.PerturbationCurve:
        hits = torch.tensor(correct)
        return op.PerturbationCurve(
            mode=mode, order="given", region_ids=(1, 2, 3, 4),
            orders=torch.arange(1, 5).expand(1, len(correct), 4), labels=labels,
            predicted=1 - hits[None], class_outputs=hits[None].float(), num_classes=2,
        )  # fmt: skip

    return CurveSet(
        make(ranked, "keep"), make(random, "keep"), make(ranked, "remove"), make(random, "remove")
    )


def test_leakage_finds_where_ranked_removal_beats_random_and_says_so() -> None:
    ranked = [[1, 0, 1, 1, 0]] * 20
    random = [[1, 1, 0, 0, 0]] * 20
    found = leakage(_remove_curves(ranked, random))
    assert found["above"] == [2, 3] and found["significant"] == [2, 3]
    assert found["difference"][1] == -1.0 and found["difference"][2] == 1.0
    assert found["intervals"] == {"2": [1.0, 1.0], "3": [1.0, 1.0]}  # every image alike
    sentence = leakage_sentence(found, "20 images")
    assert sentence.startswith("With fill 0.0 (20 images), the ranked remove curve rises")
    assert "rises above the random one at k = 2-3 (by up to 100.0 points, at k = 2" in sentence
    assert "interval lies above 0 at k = 2-3" in sentence
    # 11 images above, 9 below at k = 2: above on average, not significantly.
    mixed = leakage(
        _remove_curves(
            [[1, 0, 1, 0, 0]] * 11 + [[1, 0, 0, 0, 0]] * 9,
            [[1, 1, 0, 0, 0]] * 11 + [[1, 1, 1, 0, 0]] * 9,
        )
    )
    assert mixed["above"] == [2] and mixed["significant"] == []
    low, high = mixed["intervals"]["2"]
    assert low < 0 < mixed["difference"][2] < high
    assert "includes 0 at every such k" in leakage_sentence(mixed, "20 images")
    flat = leakage(_remove_curves(random, random))
    assert flat["above"] == [] and flat["intervals"] == {}
    assert "stays at or below the random one at every k" in leakage_sentence(flat, "n")


def test_spans() -> None:
    assert spans([9, 10, 11, 13]) == "9-11, 13"
    assert spans([4]) == "4"
    assert spans([]) == ""
