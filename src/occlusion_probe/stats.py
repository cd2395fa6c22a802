"""Statistics on sweep results: paired significance tests per region and bootstrap bands.

`significance` runs, per region, a paired Wilcoxon signed-rank test of the unoccluded output
against the occluded output over the same images, reports a matched-pairs rank-biserial effect
size and Holm-corrects the p-values across regions. `bootstrap_bands` gives percentile
bootstrap confidence bands of the mean curves (resampling images). `SweepResult.significance`
and `SweepResult.curve_bands` call these with the right slices of a result.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import scipy.stats
import torch
from torch import Tensor

from .errors import InputTypeError, InputValueError, OcclusionProbeWarning, describe
from .tables import optional_import

__all__ = [
    "SignificanceRow",
    "SignificanceTable",
    "bootstrap_bands",
    "holm",
    "significance",
]

_ALTERNATIVES = ("greater", "less", "two-sided")

# Bootstrap work is chunked so that one chunk's count matrix and means stay near this many
# elements (about 128 MiB in float64): large enough to be vectorised, small enough for a laptop.
_BOOTSTRAP_CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class SignificanceRow:
    """The test of one region.

    Attributes
    ----------
    region : int
        The region id.
    mean_drop : float
        Mean over the images of ``before - after``: positive when occluding lowers the output.
    effect_size : float
        Matched-pairs rank-biserial correlation ``(W+ - W-) / (W+ + W-)`` over the nonzero
        differences, in [-1, 1]: 1 when occluding lowers the output of every image, 0 when
        it changes no output.
    p : float
        p-value of the Wilcoxon signed-rank test: 1 when occluding changes no output (no
        evidence of a drop); NaN only when the test is undefined (fewer than 2 images, NaN
        in the outputs).
    p_adjusted : float
        Holm-Bonferroni adjusted p-value across the regions of the table.
    """

    region: int
    mean_drop: float
    effect_size: float
    p: float
    p_adjusted: float


@dataclass(frozen=True)
class SignificanceTable:
    """Per-region significance of an occlusion effect, one `SignificanceRow` per region.

    Attributes
    ----------
    rows : tuple of SignificanceRow
        One row per region, in region order.
    n : int
        Number of images (pairs) each test used.
    alternative : str
        ``"greater"`` (occluding lowers the output), ``"less"`` or ``"two-sided"``.

    Examples
    --------
    >>> import torch
    >>> before = torch.ones(12)
    >>> after = torch.stack([before - 0.1 * torch.arange(1, 13), before], dim=1)
    >>> table = significance(before, after, region_ids=[1, 2])  # region 2 never changes
    >>> table.rows[0].effect_size, table.rows[1].p, table.rows[1].effect_size, table.significant()
    (1.0, 1.0, 0.0, (1,))
    """

    rows: tuple[SignificanceRow, ...]
    n: int
    alternative: str

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[SignificanceRow]:
        return iter(self.rows)

    def __getitem__(self, position: int) -> SignificanceRow:
        return self.rows[position]

    def row(self, region: int) -> SignificanceRow:
        """The row of region id `region`.

        Parameters
        ----------
        region : int
            A region id of the table.

        Returns
        -------
        SignificanceRow
            The test of that region.

        Raises
        ------
        InputValueError
            When the table has no row for `region`.
        """
        for candidate in self.rows:
            if candidate.region == region:
                return candidate
        raise InputValueError(
            f"region: unknown region id {region!r}; the table has {[r.region for r in self.rows]}"
        )

    def as_dict(self) -> dict[str, list[float] | list[int]]:
        """Columns as lists, one per field of `SignificanceRow`.

        Returns
        -------
        dict of str to list
            ``{"region": [...], "mean_drop": [...], "effect_size": [...], ...}``.
        """
        return {
            field.name: [getattr(r, field.name) for r in self.rows]
            for field in fields(SignificanceRow)
        }

    def column(self, name: str) -> np.ndarray:
        """One column as a numpy array, e.g. ``table.column("p_adjusted")``.

        Parameters
        ----------
        name : str
            A field of `SignificanceRow`: ``"region"``, ``"mean_drop"``, ``"effect_size"``,
            ``"p"`` or ``"p_adjusted"``.

        Returns
        -------
        ndarray, shape (R,)
            int64 for ``"region"``, float64 otherwise.

        Raises
        ------
        InputValueError
            When `name` is not a column.
        """
        names = [field.name for field in fields(SignificanceRow)]
        if name not in names:
            raise InputValueError(f"name: expected one of {names}, got {name!r}")
        dtype = np.int64 if name == "region" else np.float64
        return np.array([getattr(r, name) for r in self.rows], dtype=dtype)

    def to_pandas(self) -> Any:
        """The table as a ``pandas.DataFrame`` indexed by region id (index name ``"region"``).

        Columns: ``mean_drop``, ``effect_size``, ``p``, ``p_adjusted`` (float64).

        Raises
        ------
        ImportError
            When pandas is not installed (``pip install "occlusion_probe[tables]"``).
        """
        pd = optional_import("pandas", "SignificanceTable.to_pandas")
        columns = {
            name: self.column(name) for name in ("mean_drop", "effect_size", "p", "p_adjusted")
        }
        return pd.DataFrame(columns, index=pd.Index(self.column("region"), name="region"))

    def significant(self, alpha: float = 0.05) -> tuple[int, ...]:
        """Ids of the regions whose Holm-adjusted p-value is below `alpha` (NaN never is).

        Parameters
        ----------
        alpha : float
            Significance level, in (0, 1).

        Returns
        -------
        tuple of int
            The region ids, in table order.

        Raises
        ------
        InputValueError
            When `alpha` is not in (0, 1).
        """
        if not 0.0 < alpha < 1.0:
            raise InputValueError(f"alpha: expected a level in (0, 1), got {alpha!r}")
        return tuple(r.region for r in self.rows if r.p_adjusted < alpha)

    def to_markdown(self) -> str:
        """The table as GitHub markdown: region | mean drop | effect size | p | p (Holm).

        Returns
        -------
        str
            A line naming the test, then the table; undefined p-values show as ``n/a``.
        """
        lines = [
            f"Wilcoxon signed-rank test, alternative = {self.alternative}, n = {self.n} images, "
            "Holm-corrected across regions",
            "",
            "| region | mean drop | effect size | p | p (Holm) |",
            "| ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in self.rows:
            lines.append(
                f"| {r.region} | {r.mean_drop:.4g} | {r.effect_size:.3f} | "
                f"{_format_p(r.p)} | {_format_p(r.p_adjusted)} |"
            )
        return "\n".join(lines) + "\n"


def _format_p(p: float) -> str:
    if math.isnan(p):
        return "n/a"
    return f"{p:.3g}"


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-Bonferroni step-down adjusted p-values.

    With the m non-NaN p-values sorted ascending,
    ``p_adj(i) = max_{j <= i} min(1, (m - j + 1) p(j))`` (1-based), mapped back to the input
    order. NaN entries stay NaN and do not count in m.

    Parameters
    ----------
    p_values : sequence or ndarray of float, shape (m,)
        Values in [0, 1] or NaN.

    Returns
    -------
    ndarray of float64, shape (m,)
        The adjusted p-values, in the input order.

    Raises
    ------
    InputTypeError
        When `p_values` cannot be read as floats.
    InputValueError
        When `p_values` is not 1-D or a value is outside [0, 1].

    Examples
    --------
    >>> holm([0.01, 0.04, 0.03, 0.005]).round(4).tolist()
    [0.03, 0.06, 0.06, 0.02]
    """
    try:
        p = np.asarray(p_values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InputTypeError(
            f"p_values: expected a sequence of floats, got {describe(p_values)}"
        ) from error
    if p.ndim != 1:
        raise InputValueError(f"p_values: expected a 1-D sequence, got shape {p.shape}")
    valid = ~np.isnan(p)
    if np.any((p[valid] < 0.0) | (p[valid] > 1.0)):
        raise InputValueError(
            f"p_values: expected probabilities in [0, 1] (or NaN), got min {p[valid].min()} "
            f"and max {p[valid].max()}"
        )
    adjusted = np.full_like(p, np.nan)
    positions = np.flatnonzero(valid)
    m = positions.size
    if m == 0:
        return adjusted
    # A stable sort keeps equal p-values in input order, so ties get equal adjusted values
    # after the running maximum anyway.
    order = positions[np.argsort(p[positions], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


def _as_float64(name: str, value: object, dims: int) -> np.ndarray:
    if isinstance(value, Tensor):
        array = value.detach().to("cpu", torch.float64).numpy()
    elif isinstance(value, np.ndarray):
        array = value.astype(np.float64)
    else:
        raise InputTypeError(
            f"{name}: expected a Tensor with {dims} dimensions, got {describe(value)}"
        )
    if array.ndim != dims:
        raise InputValueError(f"{name}: expected {dims} dimensions, got shape {tuple(array.shape)}")
    return array


def _rank_biserial(differences: np.ndarray) -> float:
    if np.isnan(differences).any():
        return math.nan
    nonzero = differences[differences != 0]
    if nonzero.size == 0:
        return 0.0  # no image changes: no effect in either direction
    ranks = scipy.stats.rankdata(np.abs(nonzero))
    positive = float(ranks[nonzero > 0].sum())
    negative = float(ranks[nonzero < 0].sum())
    return (positive - negative) / (positive + negative)


def significance(
    before: Tensor,
    after: Tensor,
    region_ids: Sequence[int],
    alternative: str = "greater",
) -> SignificanceTable:
    """Paired Wilcoxon signed-rank test per region, Holm-corrected across regions.

    Parameters
    ----------
    before : Tensor, shape (n,)
        Unoccluded output of each image (one class).
    after : Tensor, shape (n, R)
        Output of the same images with region r occluded.
    region_ids : sequence of int, length R
        The id of the region of each column of `after`.
    alternative : {"greater", "less", "two-sided"}
        ``"greater"``: occluding lowers the output (``before > after``), the paper's question.

    Returns
    -------
    SignificanceTable
        One `SignificanceRow` per region, in the order of `region_ids`.

    Raises
    ------
    InputTypeError
        When `before` or `after` is not a Tensor or ndarray.
    InputValueError
        When `alternative` is unknown, the shapes do not pair up, or `region_ids` does not
        hold R ids.

    Warns
    -----
    OcclusionProbeWarning
        When the test is undefined for a region (n < 2, or NaN in the data): that region's
        p is NaN, the warning says why, and the other regions are corrected among
        themselves. A region whose occlusion changes no output is not undefined: its p is 1
        and its effect size 0 (no evidence of a drop), and it counts in the correction.

    Notes
    -----
    Per region r: ``scipy.stats.wilcoxon(before, after[:, r], alternative=alternative)``
    (zero differences dropped, the ``"wilcox"`` method),
    ``mean_drop = mean(before - after[:, r])`` and the matched-pairs rank-biserial effect size.

    Examples
    --------
    >>> import torch
    >>> before = torch.linspace(0.5, 0.9, 10)
    >>> table = significance(before, torch.stack([before - 0.2, before + 0.1], 1), [10, 11])
    >>> [round(row.effect_size) for row in table], table.significant()
    ([1, -1], (10,))
    """
    if alternative not in _ALTERNATIVES:
        raise InputValueError(f"alternative: expected one of {_ALTERNATIVES}, got {alternative!r}")
    x = _as_float64("before", before, 1)
    y = _as_float64("after", after, 2)
    n = x.shape[0]
    if y.shape[0] != n:
        raise InputValueError(
            f"after: expected shape ({n}, R) to pair with before of shape ({n},), got {tuple(y.shape)}"
        )
    ids = [int(i) for i in region_ids]
    if len(ids) != y.shape[1]:
        raise InputValueError(
            f"region_ids: expected {y.shape[1]} ids (one per column of after), got {len(ids)}"
        )
    mean_drops: list[float] = []
    effects: list[float] = []
    p_values: list[float] = []
    undefined: list[str] = []
    for column, region in enumerate(ids):
        differences = x - y[:, column]
        mean_drops.append(float(differences.mean()) if n else math.nan)
        effects.append(_rank_biserial(differences))
        reason = None
        if n < 2:
            reason = f"n = {n} image(s)"
        elif np.isnan(differences).any():
            reason = "NaN in the outputs"
        elif not np.any(differences != 0):
            # Occluding the region changes no output: no evidence of a drop (p = 1), and the
            # region still counts in the Holm correction, as every region tested does.
            p_values.append(1.0)
            continue
        if reason is not None:
            undefined.append(f"region {region} ({reason})")
            p_values.append(math.nan)
            continue
        test = scipy.stats.wilcoxon(x, y[:, column], alternative=alternative)
        p_values.append(float(test.pvalue))
    if undefined:
        warnings.warn(
            "significance: the Wilcoxon test is undefined for "
            + ", ".join(undefined)
            + "; their p-values are NaN",
            OcclusionProbeWarning,
            stacklevel=2,
        )
    adjusted = holm(p_values)
    rows = tuple(
        SignificanceRow(region, drop, effect, p, float(p_adj))
        for region, drop, effect, p, p_adj in zip(
            ids, mean_drops, effects, p_values, adjusted, strict=True
        )
    )
    return SignificanceTable(rows=rows, n=n, alternative=alternative)


def bootstrap_bands(
    values: Tensor,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Percentile bootstrap confidence band of the mean over images.

    Parameters
    ----------
    values : Tensor, shape (n, R, V)
        One value per image, region and fill (e.g. the occluded output of one class).
    n_resamples : int, >= 1
        Number of bootstrap resamples (each draws n images with replacement).
    confidence : float in (0, 1)
        The band covers the central `confidence` share of the resampled means.
    seed : int
        Seed of the ``torch.Generator`` that draws the resamples: equal seeds, equal bands.

    Returns
    -------
    low : Tensor, shape (R, V)
        Lower edge of the band.
    high : Tensor, shape (R, V)
        Upper edge of the band. Both are in the floating dtype of `values` (float32 for
        integer input), on the device of `values`.

    Raises
    ------
    InputTypeError
        When an argument has the wrong type.
    InputValueError
        When `values` is not 3-D or has no image, ``n_resamples < 1``, or `confidence` is not
        in (0, 1).

    Examples
    --------
    >>> import torch
    >>> low, high = bootstrap_bands(torch.rand(30, 16, 6), n_resamples=200)
    >>> tuple(low.shape), bool((low <= high).all())
    ((16, 6), True)
    """
    if not isinstance(values, Tensor):
        raise InputTypeError(
            f"values: expected a Tensor of shape (n, R, V), got {describe(values)}"
        )
    if values.dim() != 3:
        raise InputValueError(f"values: expected shape (n, R, V), got shape {tuple(values.shape)}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)):
        raise InputTypeError(f"n_resamples: expected an int >= 1, got {describe(n_resamples)}")
    if n_resamples < 1:
        raise InputValueError(f"n_resamples: expected an int >= 1, got {n_resamples}")
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float, np.floating)):
        raise InputTypeError(f"confidence: expected a float in (0, 1), got {describe(confidence)}")
    if not 0.0 < float(confidence) < 1.0:
        raise InputValueError(f"confidence: expected a float in (0, 1), got {confidence}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputTypeError(f"seed: expected an int, got {describe(seed)}")
    n, regions, fills = values.shape
    if n == 0:
        raise InputValueError(
            "values: expected at least one image (n >= 1), got n = 0; a band over no images "
            "is undefined"
        )
    out_dtype = values.dtype if values.is_floating_point() else torch.float32
    device = values.device
    flat = values.detach().reshape(n, regions * fills).to(torch.float64)
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    chunk = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // max(n, regions * fills))
    means = []
    for start in range(0, int(n_resamples), chunk):
        size = min(chunk, int(n_resamples) - start)
        # Draw image indices on the CPU generator (reproducible on every device), then turn
        # each resample into per-image counts so that all means are one matrix product.
        picks = torch.randint(0, n, (size, n), generator=generator)
        counts = torch.zeros(size, n, dtype=torch.float64).scatter_add_(
            1, picks, torch.ones(size, n, dtype=torch.float64)
        )
        means.append(counts.to(device) @ flat / n)
    resampled = torch.cat(means)  # (n_resamples, R * V)
    tail = (1.0 - float(confidence)) / 2.0
    low = _linear_quantile(resampled, tail)
    high = _linear_quantile(resampled, 1.0 - tail)
    return (
        low.reshape(regions, fills).to(out_dtype),
        high.reshape(regions, fills).to(out_dtype),
    )


def _linear_quantile(samples: Tensor, level: float) -> Tensor:
    """Quantile along dim 0 with linear interpolation (numpy's default method).

    ``torch.quantile`` refuses inputs above 2**24 elements, which many regions times many
    resamples reach; sorting has no such limit. A column holding NaN gives NaN.
    """
    ordered = samples.sort(dim=0).values
    position = level * (samples.shape[0] - 1)
    below = math.floor(position)
    above = min(below + 1, samples.shape[0] - 1)
    weight = position - below
    result = ordered[below] + weight * (ordered[above] - ordered[below])
    return torch.where(samples.isnan().any(dim=0), math.nan, result)
