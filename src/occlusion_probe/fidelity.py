"""How close an approximate sweep is to the exact one: `Fidelity`, `ssim`, `measure_fidelity`.

The measures, on the calibration images of an approximate sweep (a projective-field threshold,
`occlusion_probe.Approximate`; a drill-down, `occlusion_probe.Refine` with a target; or both),
the sweep's own outputs on them against their exact sweep:

- ``ssim``: mean SSIM (`ssim`) between approximate and exact per-pixel heat maps
  (`SweepResult.heatmap`) of each image's predicted class, one pair per image and fill;
- ``r2``: mean R^2 (coefficient of determination) of the same pairs: the share of the exact
  heat map's variance over its pixels that the approximate one reproduces
  (`heat_map_r2`; 1 exact, 0 no better than a constant map). SSIM alone is not enough where a
  heat map is concentrated: its flat background, most of the map, matches whatever the
  approximation did to the hot spot. On a VGG-16 trained to find a shape
  (benchmarks/trained.py) a heat map of zeros measures SSIM 0.973-0.981 against the exact
  ones, one shifted by 20 pixels 0.956-0.966, and the exact maps at 1/8 of their height
  0.976-0.983; their R^2 are -0.01, -0.87 to -1.01 and 0.23. A sweep *reaches* a target
  (`Fidelity.reached`) when both its SSIM and its R^2 do;
- ``spearman``: mean Spearman rank correlation between the approximate and exact output
  drops of that class over the regions (how well the ranking of regions is kept);
- ``max_abs_error``: the largest absolute difference of any recorded output (every class).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats as scipy_stats
from torch import Tensor

from .data import check_tensor_layout
from .errors import InputTypeError, InputValueError, describe
from .regions import Regions

__all__ = [
    "ExactReference",
    "Fidelity",
    "check_calibration_images",
    "check_fraction",
    "heat_map_r2",
    "measure_fidelity",
    "ssim",
]


def check_fraction(name: str, value: object) -> float:
    """`value` as a float in (0, 1] (an SSIM target, a fraction of cells); `name` is the
    setting the errors name.

    Raises
    ------
    InputTypeError
        When `value` is not a real number.
    InputValueError
        When it is outside (0, 1].
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise InputTypeError(f"{name}: expected a float in (0, 1], got {describe(value)}")
    if not 0.0 < float(value) <= 1.0:
        raise InputValueError(f"{name}: expected a float in (0, 1], got {value!r}")
    return float(value)


def check_calibration_images(name: str, value: object) -> int:
    """`value` as a positive number of calibration images; `name` is the setting the errors
    name.

    Raises
    ------
    InputTypeError
        When `value` is not an int.
    InputValueError
        When it is below 1.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputTypeError(f"{name}: expected a positive int, got {describe(value)}")
    if value < 1:
        raise InputValueError(f"{name}: expected a positive int, got {value}")
    return int(value)


@dataclass(frozen=True)
class Fidelity:
    """How close an approximate sweep came to the exact one, measured on calibration images:
    the sweep's own outputs on its first images against their exact sweep.

    Attributes
    ----------
    ssim : float
        Mean SSIM of the per-pixel heat maps (predicted class, each fill) against exact.
    spearman : float
        Mean Spearman correlation of the regions' output drops (predicted class, each fill)
        against exact; NaN when the drops are constant.
    max_abs_error : float
        Largest absolute difference of any recorded output against exact.
    tau : float
        The projective-field threshold used: a changed box is capped at this fraction of each
        map's height and width; 1.0 caps nothing (a drill-down without a threshold).
    calibration_images : int
        On how many images (the sweep's first) the numbers were measured.
    target : float
        The SSIM target the threshold (or, without one, the drill-down's `top`) was chosen for.
    top : float or None
        The fraction of each image's coarse cells a drill-down computed at the fine stride
        (`occlusion_probe.Refine`); None: no drill-down, every window was computed.
    r2 : float
        Mean R^2 of the heat maps against exact (`heat_map_r2`); NaN when not measured
        (result files written before it was).
    """

    ssim: float
    spearman: float
    max_abs_error: float
    tau: float
    calibration_images: int
    target: float
    top: float | None = None
    r2: float = math.nan

    def __eq__(self, other: object) -> bool:
        # NaN (a constant ranking's Spearman, an unmeasured R^2) equals NaN here, so
        # that a fidelity equals itself and its copy read back from a file.
        if not isinstance(other, Fidelity):
            return NotImplemented
        return bool(np.array_equal(self.as_array(), other.as_array(), equal_nan=True))

    def __hash__(self) -> int:
        return hash(tuple(None if math.isnan(v) else v for v in self.as_array().tolist()))

    @property
    def reached(self) -> bool:
        """Whether the heat maps reach the target: SSIM and R^2 both at least `target` (SSIM
        alone when the R^2 was not measured)."""
        explained = math.isnan(self.r2) or self.r2 >= self.target
        return self.ssim >= self.target and explained

    def as_array(self) -> np.ndarray:
        """The eight numbers in field order, float64, `top` NaN when None (how result files
        store them)."""
        return np.array(
            [
                self.ssim,
                self.spearman,
                self.max_abs_error,
                self.tau,
                self.calibration_images,
                self.target,
                math.nan if self.top is None else self.top,
                self.r2,
            ],
            dtype=np.float64,
        )

    @classmethod
    def from_array(cls, values: np.ndarray) -> Fidelity:
        """The inverse of `as_array`. Files written before drill-downs had a fidelity store six
        numbers (read as no drill-down), before the R^2 seven (read as NaN)."""
        numbers = [float(v) for v in values]
        ssim_value, spearman, error, tau, count, target = numbers[:6]
        top = numbers[6] if len(numbers) > 6 and not math.isnan(numbers[6]) else None
        r2 = numbers[7] if len(numbers) > 7 else math.nan
        return cls(ssim_value, spearman, error, tau, int(count), target, top, r2)

    def describe(self) -> str:
        """One clause for ``engine_note``."""
        parts = []
        if self.top is not None:
            parts.append(
                "drill-down computing every window (top 1)"
                if self.top >= 1.0
                else f"drill-down computing the top {self.top:g} of each image's coarse cells"
            )
        if self.tau < 1.0:
            parts.append(f"projective-field threshold tau={self.tau:g}")
        method = " with ".join(parts) if parts else "no approximation"
        verdict = "" if self.reached else ", BELOW the target"
        r2 = "" if math.isnan(self.r2) else f" and R^2 {self.r2:.4f}"
        return (
            f"APPROXIMATE: {method} (target {self.target:g} for heat-map SSIM and R^2); the "
            f"sweep's outputs on {self.calibration_images} calibration image(s) measured "
            f"heat-map SSIM {self.ssim:.4f}{r2}{verdict}, "
            f"region-ranking Spearman {self.spearman:.4f}, max abs output error "
            f"{self.max_abs_error:.3g} against exact (result.fidelity)"
        )


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, ndim: int) -> Tensor:
    """A normalised Gaussian window of `size` along each of `ndim` axes (separable)."""
    coords = torch.arange(size, dtype=dtype) - (size - 1) / 2
    weights = torch.exp(-(coords**2) / (2 * sigma**2))
    weights = weights / weights.sum()
    window = weights
    for _ in range(ndim - 1):
        window = window[..., None] * weights
    return window


_CONVOLUTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _check_map_pair(image: object, reference: object, ndim: object) -> int:
    """Raise unless `image` and `reference` are Tensors of one shape (..., *spatial) with
    `ndim` (1 to 3) spatial axes; returns `ndim`."""
    if isinstance(ndim, bool) or not isinstance(ndim, int):
        raise InputTypeError(f"ndim: expected an int 1..3, got {describe(ndim)}")
    if not 1 <= ndim <= 3:
        raise InputValueError(f"ndim: expected 1, 2 or 3 spatial axes, got {ndim}")
    if not isinstance(image, Tensor) or not isinstance(reference, Tensor):
        raise InputTypeError(
            f"image, reference: expected Tensors, got {describe(image)} and {describe(reference)}"
        )
    if image.shape != reference.shape or image.dim() < ndim:
        raise InputValueError(
            f"image, reference: expected equal shapes (..., *spatial) with {ndim} spatial "
            f"axes, got {tuple(image.shape)} and {tuple(reference.shape)}"
        )
    for name, tensor in (("image", image), ("reference", reference)):
        check_tensor_layout(name, tensor)
        if tensor.is_complex() or tensor.dtype == torch.bool:
            raise InputTypeError(f"{name}: expected a real-valued map, got {describe(tensor)}")
        if not bool(torch.isfinite(tensor).all()):
            # NaN would come back as a NaN score, read as "no threshold reached"
            raise InputValueError(f"{name}: expected finite values, got NaN or inf")
    return ndim


def _check_positive(name: str, value: object) -> float:
    """`value` as a finite float > 0, or the library's error naming `name`."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise InputTypeError(f"{name}: expected a finite number > 0, got {describe(value)}")
    number = float(value)
    if not (math.isfinite(number) and number > 0):
        raise InputValueError(f"{name}: expected a finite number > 0, got {value!r}")
    return number


def ssim(
    image: Tensor,
    reference: Tensor,
    *,
    data_range: float | None = None,
    window: int = 11,
    sigma: float = 1.5,
    ndim: int = 2,
) -> Tensor:
    """Structural similarity (Wang et al. 2004) of maps against reference maps, at any rank.

    Gaussian-weighted local statistics (an 11x11 window of sigma 1.5 by default; 11 along
    each axis for signals and volumes) over the positions where the whole window fits (no
    padding), ``K1 = 0.01``, ``K2 = 0.03``, population (not sample) covariances; the mean of
    the SSIM map is returned per pair. This is ``skimage.metrics.structural_similarity(a, b,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=...)`` up to
    skimage's border crop (skimage treats 3D arrays as volumes alike). Maps smaller than the
    window use a window of their smallest side (odd).

    Parameters
    ----------
    image, reference : Tensor, shape (..., *spatial)
        The maps to compare, same shape.
    data_range : float, optional
        L of the constants ``C1 = (K1 L)^2``, ``C2 = (K2 L)^2``. Default: per pair, the
        reference's max minus min (1 when the reference is constant).
    window, sigma : int, float
        Side of the Gaussian window and its standard deviation.
    ndim : int
        How many trailing axes are spatial: 1 (signals), 2 (images, the default) or 3
        (volumes).

    Returns
    -------
    Tensor, shape (...), float64

    Raises
    ------
    InputTypeError
        When a map is not a real Tensor, `window` not an int, `sigma` or `data_range` not a
        number.
    InputValueError
        When the shapes differ, a map holds NaN or inf, `window` < 1, or `sigma` or
        `data_range` is not a finite number > 0.

    Examples
    --------
    >>> a = torch.rand(16, 16, generator=torch.Generator().manual_seed(0))
    >>> float(ssim(a, a))
    1.0
    >>> volume = torch.rand(2, 12, 12, 12, generator=torch.Generator().manual_seed(0))
    >>> ssim(volume, volume, ndim=3).tolist()
    [1.0, 1.0]
    """
    rank = _check_map_pair(image, reference, ndim)
    if isinstance(window, (bool, np.bool_)) or not isinstance(window, (int, np.integer)):
        raise InputTypeError(f"window: expected a positive int, got {describe(window)}")
    if window < 1:
        raise InputValueError(f"window: expected a positive int, got {window}")
    sigma = _check_positive("sigma", sigma)
    if data_range is not None:
        data_range = _check_positive("data_range", data_range)
    lead = image.shape[: image.dim() - rank]
    spatial = tuple(image.shape[image.dim() - rank :])
    x = image.reshape(-1, 1, *spatial).to(torch.float64)
    y = reference.reshape(-1, 1, *spatial).to(torch.float64)
    side = min(window, *spatial)
    side -= 1 - side % 2
    kernel = _gaussian_window(side, sigma, torch.float64, rank)[None, None]
    convolve = _CONVOLUTIONS[rank]
    if data_range is None:
        flat = y.flatten(1)
        span = flat.amax(dim=1) - flat.amin(dim=1)
        span = torch.where(span > 0, span, torch.ones_like(span))
    else:
        span = torch.full((x.shape[0],), float(data_range), dtype=torch.float64)
    c1 = ((0.01 * span) ** 2).reshape(-1, *([1] * (rank + 1)))
    c2 = ((0.03 * span) ** 2).reshape(-1, *([1] * (rank + 1)))

    def local(value: Tensor) -> Tensor:
        result: Tensor = convolve(value, kernel)
        return result

    mu_x, mu_y = local(x), local(y)
    var_x = local(x * x) - mu_x**2
    var_y = local(y * y) - mu_y**2
    cov = local(x * y) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    denominator = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return (numerator / denominator).flatten(1).mean(dim=1).reshape(lead)


def heat_map_r2(image: Tensor, reference: Tensor, ndim: int = 2) -> Tensor:
    """R^2 (coefficient of determination) of maps as predictions of reference maps, over
    their pixels: ``1 - sum((reference - image)^2) / sum((reference - mean(reference))^2)``.

    1 when the maps are equal, 0 for the reference's mean everywhere, below 0 for worse; a
    map of the right shape at the wrong height or offset loses R^2 (unlike a correlation).
    Against a constant reference: 1 when equal, 0 when not (scikit-learn's ``r2_score``
    with ``force_finite=True``).

    Parameters
    ----------
    image, reference : Tensor, shape (..., *spatial)
        The maps to compare, same shape.
    ndim : int
        How many trailing axes are spatial: 1, 2 (the default) or 3.

    Returns
    -------
    Tensor, shape (...), float64

    Raises
    ------
    InputTypeError
        When a map is not a real Tensor or `ndim` not an int.
    InputValueError
        When the shapes differ, a map holds NaN or inf, or `ndim` is not 1, 2 or 3.

    Examples
    --------
    >>> a = torch.rand(16, 16, generator=torch.Generator().manual_seed(0))
    >>> float(heat_map_r2(a, a)), abs(round(float(heat_map_r2(0 * a + a.mean(), a)), 6))
    (1.0, 0.0)
    """
    rank = _check_map_pair(image, reference, ndim)
    x = image.flatten(image.dim() - rank).to(torch.float64)
    y = reference.flatten(reference.dim() - rank).to(torch.float64)
    residual = ((y - x) ** 2).sum(dim=-1)
    total = ((y - y.mean(dim=-1, keepdim=True)) ** 2).sum(dim=-1)
    explained = 1.0 - residual / torch.where(total > 0, total, torch.ones_like(total))
    # A constant reference: 1 for the same map, 0 for any other.
    same = torch.where(residual == 0, torch.ones_like(total), torch.zeros_like(total))
    return torch.where(total > 0, explained, same)


def measure_fidelity(
    regions: Regions,
    exact_baseline: Tensor,
    exact: Tensor,
    approximate: Tensor,
    tau: float,
    target: float,
    top: float | None = None,
) -> Fidelity:
    """Compare approximate occluded outputs with exact ones (see the module docstring).

    Parameters
    ----------
    regions : Regions
        The R regions of the sweep.
    exact_baseline : Tensor, shape (n, K)
        Unoccluded outputs; their argmax is the class whose heat maps are compared.
    exact, approximate : Tensor, shape (n, R, V, K)
        Occluded outputs, exact and approximate.
    tau : float
        The threshold that produced `approximate` (1.0: none).
    target : float
        The SSIM target.
    top : float, optional
        The drill-down's fraction of refined coarse cells, when a drill-down produced it.

    Returns
    -------
    Fidelity
    """
    return ExactReference(regions, exact_baseline, exact).measure(approximate, tau, target, top)


class ExactReference:
    """An exact sweep kept to measure approximations of it (`measure_fidelity`).

    Calibration compares several candidates with the same exact sweep; the exact heat maps
    are built here once (at 224x224 with 2,809 windows, one `Regions.pixel_mean` takes about
    0.5 s on 2 CPU cores).

    Parameters
    ----------
    regions : Regions
        The R regions of the sweep.
    baseline : Tensor, shape (n, K)
        Unoccluded outputs; their argmax is the class whose heat maps are compared.
    exact : Tensor, shape (n, R, V, K)
        Exact occluded outputs.
    """

    def __init__(self, regions: Regions, baseline: Tensor, exact: Tensor) -> None:
        n, r, v, _ = exact.shape
        predicted = baseline.argmax(dim=1)
        self.regions = regions
        self.exact = exact
        self._index = predicted[:, None, None, None].expand(n, r, v, 1)
        self._base = baseline.gather(1, predicted[:, None]).to(torch.float64)  # (n, 1)
        self._drops = self._drops_of(exact)
        self._heat = regions.pixel_mean(self._drops)

    @property
    def images(self) -> int:
        """How many images the exact sweep holds."""
        return int(self.exact.shape[0])

    def _drops_of(self, occluded: Tensor) -> Tensor:
        """(n, V, R) float64: the drop of each image's predicted class per fill and region."""
        chosen = occluded.gather(3, self._index)[..., 0].to(torch.float64)
        return self._base[:, None] - chosen.transpose(1, 2)

    def measure(
        self, approximate: Tensor, tau: float, target: float, top: float | None = None
    ) -> Fidelity:
        """`approximate` (n, R, V, K) against the exact sweep (`measure_fidelity`)."""
        exact = self.exact
        n, r = exact.shape[:2]
        drops_approx = self._drops_of(approximate)
        heat_approx = self.regions.pixel_mean(drops_approx)
        rank = self.regions.ndim
        similarity = float(ssim(heat_approx, self._heat, ndim=rank).mean())
        r2 = float(heat_map_r2(heat_approx, self._heat, ndim=rank).mean())
        correlations = []
        for a, b in zip(drops_approx.reshape(-1, r), self._drops.reshape(-1, r), strict=True):
            if r < 2:
                continue
            if bool((a == a[0]).all()) or bool((b == b[0]).all()):
                correlations.append(1.0 if torch.equal(a, b) else math.nan)
                continue
            correlations.append(float(scipy_stats.spearmanr(a.numpy(), b.numpy()).statistic))
        spearman = float(np.mean(correlations)) if correlations else math.nan
        error = (
            float((approximate.to(torch.float64) - exact.to(torch.float64)).abs().max())
            if exact.numel()
            else 0.0
        )
        return Fidelity(similarity, spearman, error, float(tau), n, float(target), top, r2)
