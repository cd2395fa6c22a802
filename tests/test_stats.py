"""occlusion_probe.stats: Wilcoxon per region, Holm correction, bootstrap bands."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from occlusion_probe import OcclusionProbeWarning, SweepResult, stats
from occlusion_probe.errors import InputTypeError, InputValueError
from occlusion_probe.regions import grid
from occlusion_probe.stats import SignificanceTable, bootstrap_bands, holm, significance


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- holm -------------------------------------------------------------------------------------


def test_holm_hand_computed_example() -> None:
    # sorted: 0.005 (x4) = 0.02, 0.01 (x3) = 0.03, 0.03 (x2) = 0.06, 0.04 (x1) = 0.04 -> max 0.06
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_keeps_nan_out_of_the_count() -> None:
    adjusted = holm(np.array([0.5, math.nan, 0.02, 0.9]))
    # m = 3 valid p-values: 0.02 x 3 = 0.06, 0.5 x 2 = 1.0, 0.9 x 1 -> running max 1.0
    np.testing.assert_allclose(adjusted, [1.0, math.nan, 0.06, 1.0])
    assert np.isnan(holm([math.nan, math.nan])).all()
    assert holm([]).shape == (0,)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=20))
def test_holm_properties(p_values: list[float]) -> None:
    p = np.array(p_values)
    adjusted = holm(p)
    assert ((adjusted >= p - 1e-15) & (adjusted <= 1.0)).all()
    order = np.argsort(p, kind="stable")
    assert (np.diff(adjusted[order]) >= 0).all()  # monotone in the order of the raw p-values
    np.testing.assert_allclose(adjusted.min(), min(1.0, len(p) * p.min()))


def test_holm_rejects_bad_input() -> None:
    with pytest.raises(InputValueError, match=r"p_values: expected probabilities in \[0, 1\]"):
        holm([0.1, 1.5])
    with pytest.raises(InputValueError, match="p_values: expected a 1-D"):
        holm(np.zeros((2, 2)))
    with pytest.raises(InputTypeError, match="p_values"):
        holm(["a", "b"])  # type: ignore[list-item]


# -- significance -----------------------------------------------------------------------------


@pytest.mark.parametrize("alternative", ["greater", "less", "two-sided"])
def test_significance_matches_scipy_wilcoxon(alternative: str) -> None:
    gen = _generator(3)
    before = torch.rand(25, generator=gen)
    shifts = torch.tensor([0.0, 0.05, -0.05, 0.2])
    after = before[:, None] - shifts + 0.1 * torch.randn(25, 4, generator=gen)
    table = significance(before, after, [6, 7, 10, 11], alternative=alternative)
    x = before.double().numpy()
    expected_p = []
    for column, row in enumerate(table):
        y = after[:, column].double().numpy()
        reference = scipy.stats.wilcoxon(x, y, alternative=alternative)
        expected_p.append(reference.pvalue)
        assert row.p == pytest.approx(reference.pvalue, rel=1e-12)
        assert row.mean_drop == pytest.approx(float(np.mean(x - y)), rel=1e-12)
        d = x - y
        ranks = scipy.stats.rankdata(np.abs(d))
        w_plus, w_minus = ranks[d > 0].sum(), ranks[d < 0].sum()
        assert row.effect_size == pytest.approx((w_plus - w_minus) / (w_plus + w_minus))
    np.testing.assert_allclose(table.column("p_adjusted"), holm(expected_p))
    assert table.column("region").tolist() == [6, 7, 10, 11]
    assert table.n == 25 and table.alternative == alternative


def test_significance_known_answer() -> None:
    gen = _generator(4)
    before = 0.5 + 0.4 * torch.rand(30, generator=gen)
    lowered = before - 0.05 - 0.1 * torch.rand(30, generator=gen)  # every image drops
    noise = before + 0.05 * torch.randn(30, generator=gen)  # symmetric, no effect
    table = significance(before, torch.stack([lowered, noise], dim=1), [10, 1])
    mouth, corner = table.row(10), table.row(1)
    assert mouth.effect_size == 1.0
    assert mouth.p < 1e-6 and mouth.p_adjusted < 1e-6
    assert mouth.mean_drop > 0.05
    assert corner.p > 0.05 and abs(corner.effect_size) < 0.5
    assert table.significant(0.05) == (10,)


def test_significance_unchanged_region_has_p_one_and_no_effect() -> None:
    before = torch.linspace(0.1, 0.9, 12)
    after = torch.stack([before, before - 0.1 * torch.arange(1, 13) / 12], dim=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no evidence of a drop is a result, not a warning
        table = significance(before, after, [1, 2])
    assert table[0].p == 1.0 and table[0].p_adjusted == 1.0
    assert table[0].effect_size == 0.0 and table[0].mean_drop == 0.0
    # Holm counts every region: region 2's p is doubled (m = 2)
    assert table[1].p_adjusted == pytest.approx(min(1.0, 2 * table[1].p))
    np.testing.assert_allclose(table.column("p_adjusted"), holm(table.column("p")))
    assert table.significant() == (2,)


def test_significance_single_image_warns() -> None:
    with pytest.warns(OcclusionProbeWarning, match=r"n = 1 image"):
        table = significance(torch.tensor([0.9]), torch.tensor([[0.1, 0.2]]), [1, 2])
    assert all(math.isnan(row.p) for row in table)
    assert table[0].effect_size == 1.0


def test_significance_validates_arguments() -> None:
    before, after = torch.rand(5), torch.rand(5, 3)
    with pytest.raises(InputValueError, match="alternative: expected one of"):
        significance(before, after, [1, 2, 3], alternative="bigger")
    with pytest.raises(InputValueError, match=r"after: expected shape \(5, R\)"):
        significance(before, torch.rand(4, 3), [1, 2, 3])
    with pytest.raises(InputValueError, match="region_ids: expected 3 ids"):
        significance(before, after, [1, 2])
    with pytest.raises(InputValueError, match="before: expected 1 dimensions"):
        significance(after, after, [1, 2, 3])
    with pytest.raises(InputTypeError, match="before: expected a Tensor"):
        significance([0.1, 0.2], after, [1, 2, 3])  # type: ignore[arg-type]


def test_significance_table_views() -> None:
    gen = _generator(5)
    before = torch.rand(15, generator=gen)
    after = (
        before[:, None] - torch.tensor([0.3, 0.0, -0.3]) + 0.01 * torch.randn(15, 3, generator=gen)
    )
    table = significance(before, after, [1, 2, 3])
    assert isinstance(table, SignificanceTable) and len(table) == 3
    assert [row.region for row in table] == [1, 2, 3]
    columns = table.as_dict()
    assert list(columns) == ["region", "mean_drop", "effect_size", "p", "p_adjusted"]
    assert columns["region"] == [1, 2, 3] and len(columns["p"]) == 3
    markdown = table.to_markdown()
    assert "| region | mean drop | effect size | p | p (Holm) |" in markdown
    assert markdown.count("\n| ") == 5 and "n = 15 images" in markdown  # header, rule, 3 rows
    with pytest.raises(InputValueError, match="region: unknown region id 9"):
        table.row(9)
    with pytest.raises(InputValueError, match="name: expected one of"):
        table.column("q")
    with pytest.raises(InputValueError, match="alpha"):
        table.significant(1.5)


def _result(n: int = 24, k: int = 3, v: int = 2, seed: int = 0) -> SweepResult:
    """A synthetic sweep over a 2x2 grid where occluding region 3 lowers every class output."""
    gen = _generator(seed)
    regions = grid(8, 8, 2, 2)
    baseline = torch.softmax(3 * torch.randn(n, k, generator=gen), dim=1)
    occluded = baseline[:, None, None, :] + 0.02 * torch.randn(n, 4, v, k, generator=gen)
    occluded[:, 2] -= 0.1 + 0.05 * torch.rand(n, v, k, generator=gen)
    return SweepResult(
        baseline=baseline,
        occluded=occluded,
        labels=baseline.argmax(dim=1),
        regions=regions,
        fill_labels=tuple(str(f) for f in range(v)),
        class_names=("a", "b", "c")[:k],
        image_shape=(1, 8, 8),
        output="softmax",
    )


def test_sweep_result_significance_uses_this_module() -> None:
    result = _result(n=60)
    table = result.significance("a", correct_only=True)
    chosen = result.selection(0)
    direct = stats.significance(
        result.baseline[chosen, 0], result.occluded[chosen, :, :, 0].mean(dim=2), result.regions.ids
    )
    assert table == direct
    assert table.n == int(chosen.sum())
    assert table.significant() == (3,)


# -- bootstrap bands --------------------------------------------------------------------------


def test_bands_contain_the_mean_and_match_a_naive_bootstrap() -> None:
    values = torch.rand(40, 4, 3, generator=_generator(6), dtype=torch.float64)
    low, high = bootstrap_bands(values, n_resamples=500, confidence=0.9, seed=11)
    mean = values.mean(dim=0)
    assert low.shape == high.shape == (4, 3)
    assert ((low < mean) & (mean < high)).all()
    # The same draws, one resample at a time.
    picks = torch.randint(0, 40, (500, 40), generator=_generator(11))
    means = torch.stack([values[p].mean(dim=0) for p in picks]).numpy()
    np.testing.assert_allclose(low.numpy(), np.quantile(means, 0.05, axis=0), rtol=1e-10)
    np.testing.assert_allclose(high.numpy(), np.quantile(means, 0.95, axis=0), rtol=1e-10)


def test_bands_shrink_with_more_images() -> None:
    gen = _generator(7)
    few = bootstrap_bands(torch.rand(20, 3, 2, generator=gen), n_resamples=400)
    many = bootstrap_bands(torch.rand(2000, 3, 2, generator=gen), n_resamples=400)
    width_few = (few[1] - few[0]).mean()
    width_many = (many[1] - many[0]).mean()
    assert width_many < width_few / 4  # about sqrt(100) = 10 times narrower


def test_bands_reproducible_and_seeded() -> None:
    values = torch.rand(30, 5, 2, generator=_generator(8))
    first = bootstrap_bands(values, n_resamples=200, seed=1)
    again = bootstrap_bands(values, n_resamples=200, seed=1)
    other = bootstrap_bands(values, n_resamples=200, seed=2)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    assert first[0].dtype == torch.float32


def test_bands_do_not_depend_on_chunking(monkeypatch: pytest.MonkeyPatch) -> None:
    values = torch.rand(10, 2, 3, generator=_generator(9), dtype=torch.float64)
    whole = bootstrap_bands(values, n_resamples=300)
    monkeypatch.setattr(stats, "_BOOTSTRAP_CHUNK_ELEMENTS", 64)  # chunks of 10 resamples
    chunked = bootstrap_bands(values, n_resamples=300)
    assert torch.equal(whole[0], chunked[0]) and torch.equal(whole[1], chunked[1])


def test_bands_single_image_and_validation() -> None:
    low, high = bootstrap_bands(torch.full((1, 2, 2), 0.3), n_resamples=5)
    assert torch.allclose(low, torch.full((2, 2), 0.3)) and torch.equal(low, high)
    with pytest.raises(InputValueError, match="got n = 0"):
        bootstrap_bands(torch.zeros(0, 2, 2))
    with pytest.raises(InputValueError, match=r"confidence: expected a float in \(0, 1\)"):
        bootstrap_bands(torch.rand(3, 2, 2), confidence=1.0)
    with pytest.raises(InputValueError, match="n_resamples: expected an int >= 1"):
        bootstrap_bands(torch.rand(3, 2, 2), n_resamples=0)
    with pytest.raises(InputTypeError, match="n_resamples"):
        bootstrap_bands(torch.rand(3, 2, 2), n_resamples=2.5)  # type: ignore[arg-type]
    with pytest.raises(InputValueError, match=r"values: expected shape \(n, R, V\)"):
        bootstrap_bands(torch.rand(3, 2))


def test_sweep_result_curve_bands() -> None:
    result = _result(n=60)
    low, high = result.curve_bands("b", correct_only=False, n_resamples=300)
    curves = result.class_curves("b", correct_only=False)
    assert low.shape == curves.shape == (4, 2)
    assert ((low <= curves) & (curves <= high)).all()
