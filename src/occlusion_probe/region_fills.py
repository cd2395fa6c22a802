"""Region-aware fills: fills that see the region they fill.

A region-aware fill gets the images, Tensor of shape (n, C, *spatial), and a boolean mask,
Tensor of shape (n or 1, *spatial), True on the pixels to fill, and returns a full-size fill
image, Tensor of shape (n, C, *spatial), of which only the masked positions are used (the
values elsewhere are unspecified). *spatial is (L,) for signals, (H, W) for images and
(D, H, W) for volumes: every built-in works at every rank.

Built-ins (public through ``occlusion_probe.fills``):

* `patch_mean` — the mean of the masked pixels, per image and channel (MONAI's
  ``mean_patch`` averages over the channels too: ``patch_mean(over_channels=True)``);
* `image_mean` — the mean of the whole image, per image and channel (MONAI's ``mean_img``:
  ``image_mean(over_channels=True)``);
* `blur` — the image blurred with a separable Gaussian along every spatial axis, taken
  inside the region;
* `linear_imputation` (in `occlusion_probe.imputation`) — ROAD's noisy linear imputation.

Write your own by subclassing `RegionFill` and defining ``__call__`` and ``label``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .errors import InputTypeError, InputValueError, describe

__all__ = ["Blur", "ImageMean", "PatchMean", "RegionFill", "blur", "image_mean", "patch_mean"]


class RegionFill(ABC):
    """A fill that receives the images and the mask of the region it fills.

    Subclasses define ``__call__(images, masks)`` and ``label``; `sweep`, `keep_only` and
    `perturbation_curve` call it with the images of one chunk (in the model's dtype, on its
    device) and the region's mask, and take the result only at the masked positions.
    Results must not depend on how the images are chunked: a fill is a function of one
    image and one mask. ``fingerprint`` (the class and ``label`` by default) names the fill
    in checkpoints, so the label must spell out every parameter.
    """

    @property
    @abstractmethod
    def label(self) -> str:
        """The fill in words, with its parameters, e.g. ``"blur(sigma=2.0)"``."""

    @abstractmethod
    def __call__(self, images: Tensor, masks: Tensor) -> Tensor:
        """Fill images, Tensor of shape (n, C, *spatial), for `images` (n, C, *spatial) and
        `masks` (n or 1, *spatial), bool; only the masked positions are used."""

    @property
    def fingerprint(self) -> str:
        """What identifies the fill's values in a checkpoint: its class and label."""
        kind = type(self)
        return f"{kind.__module__}.{kind.__qualname__}:{self.label}"

    def regions(self, images: Tensor, masks: Tensor) -> list[Tensor]:
        """The values inside each of k masks shared by all images.

        images : Tensor, shape (n, C, *spatial)
        masks : Tensor, shape (k, *spatial), bool
        returns : k tensors, shape (n, C, m_j), the values at mask j's True positions in
            row-major order

        The default calls the fill once per mask; built-ins share work between masks.
        """
        out = []
        for mask in masks:
            made = self(images, mask[None])
            if not isinstance(made, Tensor) or made.shape != images.shape:
                got = tuple(made.shape) if isinstance(made, Tensor) else describe(made)
                raise InputValueError(
                    f"fills: the region-aware fill {self.label!r} returned shape {got}, "
                    f"expected {tuple(images.shape)}"
                )
            out.append(made.flatten(2)[:, :, mask.flatten()])
        return out


def check_images_and_masks(name: str, images: Tensor, masks: Tensor) -> None:
    """Refuse images that are not (n, C, *spatial) floats or masks that do not fit them."""
    if not isinstance(images, Tensor) or not images.is_floating_point() or images.dim() < 3:
        raise InputTypeError(
            f"{name}: expected images as a floating-point Tensor (n, C, *spatial), "
            f"got {describe(images)}"
        )
    if not isinstance(masks, Tensor) or masks.dtype != torch.bool:
        raise InputTypeError(f"{name}: expected a bool mask Tensor, got {describe(masks)}")
    spatial = tuple(images.shape[2:])
    if masks.dim() != images.dim() - 1 or tuple(masks.shape[1:]) != spatial:
        raise InputValueError(
            f"{name}: expected masks of shape (n or 1, *{spatial}) for images of shape "
            f"{tuple(images.shape)}, got shape {tuple(masks.shape)}"
        )
    if masks.shape[0] not in (1, images.shape[0]):
        raise InputValueError(
            f"{name}: expected 1 or {images.shape[0]} masks (one per image), got {masks.shape[0]}"
        )


def _check_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InputTypeError(f"{name}: expected a bool, got {describe(value)}")
    return value


@dataclass(frozen=True)
class PatchMean(RegionFill):
    """The mean of the masked pixels, per image and channel (or over channels too)."""

    over_channels: bool = False

    @property
    def label(self) -> str:
        return "patch_mean(over_channels=True)" if self.over_channels else "patch_mean"

    def __call__(self, images: Tensor, masks: Tensor) -> Tensor:
        check_images_and_masks(self.label, images, masks)
        n, c = images.shape[:2]
        weight = masks.unsqueeze(1).to(images.dtype).flatten(2)  # (n or 1, 1, P)
        flat = images.flatten(2)  # (n, C, P)
        total = (flat * weight).sum(dim=2)  # (n, C)
        count = weight.sum(dim=2).clamp(min=1.0)  # (n or 1, 1)
        if self.over_channels:
            mean = total.sum(dim=1, keepdim=True) / (count * c)
        else:
            mean = total / count
        view = (n, mean.shape[1]) + (1,) * (images.dim() - 2)
        return mean.reshape(view).expand(images.shape)

    def regions(self, images: Tensor, masks: Tensor) -> list[Tensor]:
        flat = images.flatten(2)
        out = []
        for mask in masks:
            picked = flat[:, :, mask.flatten()]  # (n, C, m)
            dims = (1, 2) if self.over_channels else (2,)
            out.append(picked.mean(dim=dims, keepdim=True).expand(picked.shape))
        return out


@dataclass(frozen=True)
class ImageMean(RegionFill):
    """The mean of the whole image, per image and channel (or over channels too)."""

    over_channels: bool = False

    @property
    def label(self) -> str:
        return "image_mean(over_channels=True)" if self.over_channels else "image_mean"

    def __call__(self, images: Tensor, masks: Tensor) -> Tensor:
        check_images_and_masks(self.label, images, masks)
        dims = tuple(range(1 if self.over_channels else 2, images.dim()))
        return images.mean(dim=dims, keepdim=True).expand(images.shape)


def gaussian_kernel(sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """scipy.ndimage's Gaussian: radius ``int(4 sigma + 0.5)``, weights summing to 1."""
    radius = int(4.0 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (weights / weights.sum()).to(dtype=dtype, device=device)


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """`images` (n, C, *spatial) blurred along every spatial axis by a Gaussian of `sigma`.

    Equals ``scipy.ndimage.gaussian_filter(x, sigma, mode="nearest", truncate=4.0)`` on the
    spatial axes: the border pixel repeats outwards.
    """
    kernel = gaussian_kernel(sigma, images.dtype, images.device)
    radius = (kernel.numel() - 1) // 2
    out = images
    for axis in range(2, images.dim()):
        moved = out.movedim(axis, -1)
        shape = moved.shape
        rows = moved.reshape(-1, 1, shape[-1])
        padded = torch.nn.functional.pad(rows, (radius, radius), mode="replicate")
        smoothed = torch.nn.functional.conv1d(padded, kernel.view(1, 1, -1))
        out = smoothed.reshape(shape).movedim(-1, axis)
    return out


@dataclass(frozen=True)
class Blur(RegionFill):
    """The image blurred with a Gaussian of standard deviation `sigma` pixels."""

    sigma: float

    @property
    def label(self) -> str:
        return f"blur(sigma={self.sigma!r})"

    def __call__(self, images: Tensor, masks: Tensor) -> Tensor:
        check_images_and_masks(self.label, images, masks)
        return gaussian_blur(images, self.sigma)

    def regions(self, images: Tensor, masks: Tensor) -> list[Tensor]:
        # One blur serves every mask.
        blurred = gaussian_blur(images, self.sigma).flatten(2)
        return [blurred[:, :, mask.flatten()] for mask in masks]


def positive_float(name: str, value: object, *, allow_zero: bool = False) -> float:
    """`value` as a finite float > 0 (>= 0 with `allow_zero`), else the library's error."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputTypeError(f"{name}: expected a number, got {describe(value)}")
    number = float(value)
    low_ok = number >= 0 if allow_zero else number > 0
    if not math.isfinite(number) or not low_ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise InputValueError(f"{name}: expected a finite number {bound}, got {number}")
    return number


def patch_mean(over_channels: bool = False) -> PatchMean:
    """Fill each region with the mean of its own pixels, per image and channel.

    Parameters
    ----------
    over_channels : bool
        Average over the channels too (one value per image and region), as MONAI's
        ``OcclusionSensitivity(mode="mean_patch")`` does.

    Examples
    --------
    >>> import torch, occlusion_probe as op
    >>> images = torch.arange(8.0).reshape(1, 2, 2, 2)
    >>> mask = torch.tensor([[[True, True], [False, False]]])
    >>> op.fills.patch_mean()(images, mask)[0, :, 0, 0].tolist()
    [0.5, 4.5]
    """
    return PatchMean(_check_flag("over_channels", over_channels))


def image_mean(over_channels: bool = False) -> ImageMean:
    """Fill each region with its image's mean, per channel (or over channels too, as
    MONAI's ``mode="mean_img"``).

    Examples
    --------
    >>> import torch, occlusion_probe as op
    >>> images = torch.arange(8.0).reshape(1, 2, 2, 2)
    >>> op.fills.image_mean()(images, torch.ones(1, 2, 2, dtype=torch.bool))[0, :, 0, 0].tolist()
    [1.5, 5.5]
    """
    return ImageMean(_check_flag("over_channels", over_channels))


def blur(sigma: float) -> Blur:
    """Fill each region with the image blurred by a Gaussian of `sigma` pixels.

    The blur is separable: one 1-d Gaussian (radius ``int(4 sigma + 0.5)``, weights summing
    to 1) along each spatial axis in turn, the border value repeated outwards, so it equals
    ``scipy.ndimage.gaussian_filter(x, sigma=(0, 0, sigma, ...), mode="nearest",
    truncate=4.0)`` at every rank: signals (n, C, L), images (n, C, H, W) and volumes
    (n, C, D, H, W). Only the pixels inside the region are used.

    Raises
    ------
    InputTypeError
        When `sigma` is not a number.
    InputValueError
        When `sigma` is not finite and > 0.

    Examples
    --------
    >>> import torch, occlusion_probe as op
    >>> flat = torch.ones(1, 1, 5, 5)
    >>> torch.allclose(op.fills.blur(1.0)(flat, flat[:, 0] > 0), flat)
    True
    """
    return Blur(positive_float("sigma", sigma))
