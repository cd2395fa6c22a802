"""The paper's CNN and the full model ``nn.Sequential(GCN + ZCA, CNN)``.

The paper describes a LeNet-style network (convolution + pooling stages, then fully connected
layers) on 48x48 inputs, but the figure with its exact sizes is lost. This reproduction fixes
the architecture to::

    conv 1->32 5x5 pad 2, ReLU, maxpool 2      48x48 -> 24x24
    conv 32->64 5x5 pad 2, ReLU, maxpool 2     24x24 -> 12x12
    conv 64->128 3x3 pad 1, ReLU, maxpool 2    12x12 -> 6x6
    Flatten                                    128 * 6 * 6 = 4608
    Linear 4608->1024, ReLU, Dropout(0.5)
    Linear 1024->7                             logits of An Di Fe Ha Sa Su Ne

a common FER-2013 baseline of that shape (about 5 M parameters). It is one flat
``nn.Sequential`` of standard layers, the form occlusion_probe's incremental engine works on.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from .classes import NUM_CLASSES
from .preprocess import ZCA, GlobalContrastNormalization

__all__ = [
    "IMAGE_SHAPE",
    "build_model",
    "build_preprocess",
    "fit_preprocess",
    "load_model",
    "paper_cnn",
]

IMAGE_SHAPE = (1, 48, 48)
_NUM_PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2]


def paper_cnn(num_classes: int = NUM_CLASSES) -> nn.Sequential:
    """The CNN of the module docstring: input (N, 1, 48, 48) -> logits (N, num_classes)."""
    return nn.Sequential(
        nn.Conv2d(1, 32, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 128, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(128 * 6 * 6, 1024),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(1024, num_classes),
    )


def build_preprocess(filter_bias: float = 0.1) -> nn.Sequential:
    """An unfitted ``nn.Sequential(GlobalContrastNormalization(), ZCA(2304, filter_bias))``.

    GCN uses its documented defaults (scale 1, subtract_mean, use_std, sqrt_bias 10/255^2).
    Load a saved state_dict into the full model, or call `fit_preprocess`, before use.
    """
    return nn.Sequential(GlobalContrastNormalization(), ZCA(_NUM_PIXELS, filter_bias=filter_bias))


@torch.no_grad()
def fit_preprocess(train_images: Tensor, filter_bias: float = 0.1) -> nn.Sequential:
    """GCN + ZCA with the ZCA fitted on the GCN-normalised training images.

    Parameters
    ----------
    train_images : Tensor, shape (n, 1, 48, 48), float in [0, 1]
        The training set, as the paper fits its whitening on the training data only.
    filter_bias : float
        ZCA's eigenvalue regulariser.

    Returns
    -------
    nn.Sequential
        ``(GlobalContrastNormalization, ZCA)``, fitted, on the CPU.
    """
    if not isinstance(train_images, Tensor) or tuple(train_images.shape[1:]) != IMAGE_SHAPE:
        raise ValueError(
            f"train_images: expected a Tensor of shape (n, 1, 48, 48), got "
            f"{tuple(getattr(train_images, 'shape', ()))} ({type(train_images).__name__})"
        )
    gcn = GlobalContrastNormalization()
    zca = ZCA(_NUM_PIXELS, filter_bias=filter_bias)
    zca.fit(gcn(train_images.float().cpu()))
    return nn.Sequential(gcn, zca)


def build_model(gcn_zca_preprocess: nn.Module, num_classes: int = NUM_CLASSES) -> nn.Sequential:
    """The full model ``nn.Sequential(gcn_zca_preprocess, paper_cnn())``.

    Parameters
    ----------
    gcn_zca_preprocess : nn.Module
        Usually `fit_preprocess` (or `build_preprocess` before loading weights).
    num_classes : int
        Output units; 7 for FER-2013.

    Returns
    -------
    nn.Sequential
        Maps raw images (N, 1, 48, 48) in [0, 1] to logits (N, num_classes); element 0 is the
        preprocessing, element 1 the CNN.
    """
    if not isinstance(gcn_zca_preprocess, nn.Module):
        raise TypeError(
            f"gcn_zca_preprocess: expected an nn.Module, got {type(gcn_zca_preprocess).__name__}"
        )
    return nn.Sequential(gcn_zca_preprocess, paper_cnn(num_classes))


def load_model(weights: str | os.PathLike[str]) -> nn.Sequential:
    """The full model with the weights saved by ``torch.save(model.state_dict(), weights)``.

    Loaded with ``torch.load(..., weights_only=True)`` (no pickled code runs). The state_dict
    holds the fitted ZCA buffers as well, so GCN + ZCA + CNN come back exactly as saved.
    Returns the model on the CPU in eval mode.
    """
    model = build_model(build_preprocess())
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()
