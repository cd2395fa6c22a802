"""The paper's preprocessing, Global Contrast Normalization then ZCA whitening, as torch modules.

Both are modules so that they sit *in front of* the CNN inside one ``nn.Sequential``: the
occlusion analysis masks raw pixels in [0, 1] and the mask then goes through the same
normalisation the network was trained with, as in the paper.

The formulas are pylearn2's (``pylearn2.expr.preprocessing.global_contrast_normalize`` and
``pylearn2.datasets.preprocessing.ZCA``, Goodfellow et al., "Pylearn2: a machine learning
research library", arXiv:1308.4214), the library of the paper's era; each class docstring below
states its formula in full, with the settings this reproduction uses.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "DEFAULT_SQRT_BIAS",
    "ZCA",
    "GlobalContrastNormalization",
    "ZCANotFittedError",
]

DEFAULT_SQRT_BIAS = 10.0 / 255.0**2
"""GCN's default ``sqrt_bias`` for pixels in [0, 1]: the value 10 of pylearn2-era recipes for
pixels in 0..255, rescaled by 1/255^2 to our pixel scale (a variance scales with the square).
On a face it is negligible next to the pixel variance (about 0.05), so GCN with ``use_std=True,
scale=1`` gives each image unit standard deviation and values of about -2..2, the range the
paper reports; it only keeps near-uniform images (e.g. almost fully occluded ones) from having
their noise blown up to unit variance."""


def _check_float(name: str, value: object, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a float, got {type(value).__name__} {value!r}")
    if positive and not value > 0:
        raise ValueError(f"{name}: expected a positive float, got {value!r}")
    if not positive and not value >= 0:
        raise ValueError(f"{name}: expected a non-negative float, got {value!r}")
    return float(value)


class GlobalContrastNormalization(nn.Module):
    """Per-image global contrast normalisation (pylearn2's ``global_contrast_normalize``).

    For each image x with D pixels (all channels together)::

        x = x - mean(x)                                   if subtract_mean
        s = sqrt(sqrt_bias + var(x, ddof=1)) / scale      if use_std (ddof=0 when D == 1)
        s = sqrt(sqrt_bias + sum(x ** 2)) / scale         otherwise
        s = 1 where s < min_divisor
        x = x / s

    Parameters
    ----------
    scale : float
        Target standard deviation (use_std) or norm of each image; default 1.
    subtract_mean : bool
        Centre each image first; default True.
    use_std : bool
        Normalise by the standard deviation (True, default) instead of the norm. pylearn2's own
        default is False with sqrt_bias 0; the paper's "inputs of about -2..2" fit the
        standard deviation with scale 1, which is what this reproduction uses.
    sqrt_bias : float
        Added under the square root; default `DEFAULT_SQRT_BIAS` (10 / 255^2, see there).
    min_divisor : float
        Normalisers below this are replaced by 1 (uniform images stay at 0 instead of
        dividing by ~0); default 1e-8.

    Shapes
    ------
    input : Tensor, shape (N, ...) e.g. (N, 1, 48, 48)
    output : Tensor, same shape and dtype
    """

    def __init__(
        self,
        scale: float = 1.0,
        subtract_mean: bool = True,
        use_std: bool = True,
        sqrt_bias: float = DEFAULT_SQRT_BIAS,
        min_divisor: float = 1e-8,
    ) -> None:
        super().__init__()
        self.scale = _check_float("scale", scale, positive=True)
        for name, flag in (("subtract_mean", subtract_mean), ("use_std", use_std)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name}: expected a bool, got {type(flag).__name__} {flag!r}")
        self.subtract_mean = subtract_mean
        self.use_std = use_std
        self.sqrt_bias = _check_float("sqrt_bias", sqrt_bias)
        self.min_divisor = _check_float("min_divisor", min_divisor)

    def forward(self, images: Tensor) -> Tensor:
        """Normalise every image of ``images`` (shape (N, ...)) on its own."""
        if images.dim() < 2:
            raise ValueError(
                f"images: expected a batch of shape (N, ...) with at least 2 dims, got shape "
                f"{tuple(images.shape)}"
            )
        flat = images.reshape(images.shape[0], -1)
        if self.subtract_mean:
            flat = flat - flat.mean(dim=1, keepdim=True)
        if self.use_std:
            correction = 1 if flat.shape[1] > 1 else 0
            spread = flat.var(dim=1, correction=correction, keepdim=True)
        else:
            spread = flat.square().sum(dim=1, keepdim=True)
        normalizer = torch.sqrt(self.sqrt_bias + spread) / self.scale
        normalizer = torch.where(
            normalizer < self.min_divisor, torch.ones_like(normalizer), normalizer
        )
        return (flat / normalizer).reshape(images.shape)

    def extra_repr(self) -> str:
        return (
            f"scale={self.scale}, subtract_mean={self.subtract_mean}, use_std={self.use_std}, "
            f"sqrt_bias={self.sqrt_bias:.6g}, min_divisor={self.min_divisor:g}"
        )


class ZCANotFittedError(ValueError):
    """A `ZCA` module was applied before `ZCA.fit` (or loading a fitted state_dict)."""


class ZCA(nn.Module):
    """ZCA whitening fitted on a training set (pylearn2's ``ZCA`` preprocessor).

    Fitting on X (n x D)::

        m = mean(X, axis=0)
        C = (X - m)^T (X - m) / n
        C = E diag(d) E^T                          (eigen-decomposition)
        W = E diag(1 / sqrt(d + filter_bias)) E^T  (symmetric)

    and the transform is ``(x - m) W``. The fit runs in float64 (``torch.linalg.eigh``);
    ``mean`` (D,) and ``whitening`` (D, D) are stored as float32 buffers, so they are part of the
    module's ``state_dict`` and a saved model restores its whitening with its weights.

    Parameters
    ----------
    num_features : int
        D, the number of values per example (2304 for 1x48x48 images).
    filter_bias : float
        Regulariser added to the eigenvalues, > 0; default 0.1 (pylearn2's CIFAR-10 recipes).
        It bounds the gain of low-variance (noise) directions at 1 / sqrt(filter_bias).

    Shapes
    ------
    input : Tensor, shape (N, ...) with D values per example, e.g. (N, 1, 48, 48)
    output : Tensor, same shape, float32
    """

    mean: Tensor
    whitening: Tensor
    fitted: Tensor

    def __init__(self, num_features: int, filter_bias: float = 0.1) -> None:
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features: expected a positive int, got {num_features!r}")
        self.num_features = num_features
        self.filter_bias = _check_float("filter_bias", filter_bias, positive=True)
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("whitening", torch.eye(num_features))
        # Part of the state_dict so that loading a fitted model marks the module fitted.
        self.register_buffer("fitted", torch.tensor(False))
        self._is_fitted = False
        # torch declares this registration method without annotations.
        self.register_load_state_dict_post_hook(_sync_fitted_flag)  # type: ignore[no-untyped-call]

    @property
    def is_fitted(self) -> bool:
        """Whether `fit` ran or a fitted state_dict was loaded."""
        return self._is_fitted

    @torch.no_grad()
    def fit(self, examples: Tensor, chunk_size: int = 4096) -> ZCA:
        """Estimate mean and whitening matrix from `examples`.

        Parameters
        ----------
        examples : Tensor, shape (n, ...) with D = num_features values per example, n >= 2
            The training set (after any preprocessing that precedes the ZCA, e.g. GCN).
        chunk_size : int
            Rows accumulated into the covariance at a time (bounds the float64 copy).

        Returns
        -------
        ZCA
            ``self``, fitted.
        """
        if not isinstance(examples, Tensor):
            raise TypeError(
                f"examples: expected a torch.Tensor of shape (n, ...), got {type(examples).__name__}"
            )
        if examples.dim() < 2 or examples.shape[0] < 2:
            raise ValueError(
                f"examples: expected shape (n, ...) with n >= 2, got {tuple(examples.shape)}"
            )
        flat = examples.reshape(examples.shape[0], -1)
        if flat.shape[1] != self.num_features:
            raise ValueError(
                f"examples: expected {self.num_features} values per example, got "
                f"{flat.shape[1]} (shape {tuple(examples.shape)})"
            )
        count = flat.shape[0]
        mean = flat.to(torch.float64).mean(dim=0)
        covariance = torch.zeros(self.num_features, self.num_features, dtype=torch.float64)
        for start in range(0, count, chunk_size):
            centred = flat[start : start + chunk_size].to(torch.float64) - mean
            covariance += centred.T @ centred
        covariance /= count
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        # The covariance is positive semi-definite; round-off can leave eigenvalues of about
        # -1e-15, which a tiny filter_bias would not cover.
        gains = 1.0 / torch.sqrt(eigenvalues.clamp_min(0.0) + self.filter_bias)
        whitening = (eigenvectors * gains) @ eigenvectors.T
        self.mean.copy_(mean.to(self.mean.dtype))
        self.whitening.copy_(whitening.to(self.whitening.dtype))
        self.fitted.fill_(True)
        self._is_fitted = True
        return self

    def forward(self, images: Tensor) -> Tensor:
        """Whiten ``images`` (shape (N, ...), D values each) with the fitted mean and matrix."""
        if not self._is_fitted:
            raise ZCANotFittedError(
                "ZCA: expected a fitted module (call fit(training_examples) or load a fitted "
                "state_dict), got an unfitted one"
            )
        flat = images.reshape(images.shape[0], -1)
        if flat.shape[1] != self.num_features:
            raise ValueError(
                f"images: expected {self.num_features} values per example, got {flat.shape[1]} "
                f"(shape {tuple(images.shape)})"
            )
        return ((flat - self.mean) @ self.whitening).reshape(images.shape)

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, filter_bias={self.filter_bias:g}"


def _sync_fitted_flag(module: nn.Module, incompatible_keys: Any) -> None:
    """After ``load_state_dict``, mirror the loaded ``fitted`` buffer in the Python flag.

    The flag is a plain bool so that ``forward`` checks it without reading a tensor (no device
    synchronisation, and nothing data-dependent for tracing).
    """
    if isinstance(module, ZCA):
        module._is_fitted = bool(module.fitted.item())
