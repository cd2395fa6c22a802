"""GCN and ZCA modules against hand-computed cases and a direct numpy version of the formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fer_paper.preprocess import (
    DEFAULT_SQRT_BIAS,
    ZCA,
    GlobalContrastNormalization,
    ZCANotFittedError,
)
from fer_paper.synthetic import make_synthetic_faces


def numpy_gcn(
    x: np.ndarray,
    scale: float = 1.0,
    subtract_mean: bool = True,
    use_std: bool = False,
    sqrt_bias: float = 0.0,
    min_divisor: float = 1e-8,
) -> np.ndarray:
    """pylearn2's global_contrast_normalize, written out for x of shape (n, D)."""
    x = x.astype(np.float64)
    if subtract_mean:
        x = x - x.mean(axis=1)[:, None]
    if use_std:
        ddof = 1 if x.shape[1] > 1 else 0
        normalizers = np.sqrt(sqrt_bias + x.var(axis=1, ddof=ddof)) / scale
    else:
        normalizers = np.sqrt(sqrt_bias + (x**2).sum(axis=1)) / scale
    normalizers[normalizers < min_divisor] = 1.0
    return x / normalizers[:, None]


def numpy_zca(train: np.ndarray, filter_bias: float) -> tuple[np.ndarray, np.ndarray]:
    """pylearn2's ZCA fit on train (n, D): mean (D,) and W (D, D)."""
    train = train.astype(np.float64)
    mean = train.mean(axis=0)
    centred = train - mean
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / train.shape[0])
    whitening = eigenvectors @ np.diag(1.0 / np.sqrt(eigenvalues + filter_bias)) @ eigenvectors.T
    return mean, whitening


def test_gcn_hand_computed_std() -> None:
    # x = 1 2 3 4: centred -1.5 -0.5 0.5 1.5, var(ddof=1) = 5/3, divisor sqrt(5/3) = 1.290994
    gcn = GlobalContrastNormalization(scale=1.0, use_std=True, sqrt_bias=0.0)
    out = gcn(torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64))
    expected = torch.tensor([[-1.161895, -0.387298, 0.387298, 1.161895]], dtype=torch.float64)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_gcn_hand_computed_norm_and_scale() -> None:
    # use_std=False: divisor sqrt(sum of squares) = sqrt(5) -> -1.5/sqrt(5) = -0.670820 ...
    gcn = GlobalContrastNormalization(use_std=False, sqrt_bias=0.0)
    out = gcn(torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64))
    expected = torch.tensor([[-0.670820, -0.223607, 0.223607, 0.670820]], dtype=torch.float64)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    # no centring, norm 5, scale 2: divisor 2.5
    gcn = GlobalContrastNormalization(scale=2.0, subtract_mean=False, use_std=False, sqrt_bias=0.0)
    out = gcn(torch.tensor([[3.0, 4.0]], dtype=torch.float64))
    torch.testing.assert_close(out, torch.tensor([[1.2, 1.6]], dtype=torch.float64))
    # sqrt_bias 11 under the root with sum of squares 25: divisor 6
    gcn = GlobalContrastNormalization(subtract_mean=False, use_std=False, sqrt_bias=11.0)
    out = gcn(torch.tensor([[3.0, 4.0]], dtype=torch.float64))
    torch.testing.assert_close(out, torch.tensor([[0.5, 4.0 / 6.0]], dtype=torch.float64))


def test_gcn_min_divisor_keeps_uniform_images_finite() -> None:
    gcn = GlobalContrastNormalization(use_std=True, sqrt_bias=0.0, min_divisor=1e-8)
    out = gcn(torch.full((2, 1, 4, 4), 0.5))
    assert torch.equal(out, torch.zeros(2, 1, 4, 4))
    # 0.7 is not exact in float32: the centred image is round-off (~6e-8), left unscaled
    out = gcn(torch.full((2, 1, 4, 4), 0.7))
    torch.testing.assert_close(out, torch.zeros(2, 1, 4, 4), atol=1e-7, rtol=0)
    # below min_divisor the divisor is 1, so a tiny-contrast image passes unscaled
    tiny = torch.tensor([[1e-10, -1e-10]], dtype=torch.float64)
    out = GlobalContrastNormalization(subtract_mean=False, use_std=False, sqrt_bias=0.0)(tiny)
    torch.testing.assert_close(out, tiny)


def test_gcn_single_pixel_uses_ddof_zero() -> None:
    gcn = GlobalContrastNormalization(subtract_mean=False, use_std=True, sqrt_bias=4.0)
    out = gcn(torch.tensor([[3.0]], dtype=torch.float64))
    # var of one value with ddof=0 is 0, divisor sqrt(4) = 2
    torch.testing.assert_close(out, torch.tensor([[1.5]], dtype=torch.float64))


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"use_std": False, "sqrt_bias": 0.0},
        {"scale": 55.0, "use_std": False, "sqrt_bias": 10.0},
        {"subtract_mean": False, "use_std": True, "sqrt_bias": 0.5},
        {"scale": 3.0, "use_std": True, "sqrt_bias": DEFAULT_SQRT_BIAS, "min_divisor": 0.5},
    ],
)
def test_gcn_matches_numpy_reference(settings: dict[str, float]) -> None:
    rng = np.random.default_rng(3)
    images = rng.random((6, 1, 5, 7))
    images[2] = 0.25  # a uniform image exercises min_divisor
    module_settings = {"use_std": True, "sqrt_bias": DEFAULT_SQRT_BIAS, **settings}
    out = GlobalContrastNormalization(**module_settings)(torch.from_numpy(images))
    expected = numpy_gcn(images.reshape(6, -1), **module_settings).reshape(images.shape)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-12, rtol=1e-10)


def test_gcn_default_maps_faces_to_unit_std() -> None:
    images, _ = make_synthetic_faces(64, seed=5)
    gcn = GlobalContrastNormalization()
    assert gcn.use_std and gcn.subtract_mean and gcn.scale == 1.0
    out = gcn(images).reshape(64, -1)
    torch.testing.assert_close(out.mean(dim=1), torch.zeros(64), atol=1e-5, rtol=0)
    # std = sqrt(v / (v + sqrt_bias)) for pixel variance v: 10/255^2 is small next to a face's
    # variance (even a low-contrast face has v > 0.005), so the std is 1 within 3 %
    std = out.std(dim=1)
    assert torch.all(std <= 1) and torch.all(std > 0.97)
    # "about -2..2": the bulk of the values
    assert float((out.abs() <= 2.5).float().mean()) > 0.95


def test_gcn_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="scale"):
        GlobalContrastNormalization(scale=0.0)
    with pytest.raises(ValueError, match="sqrt_bias"):
        GlobalContrastNormalization(sqrt_bias=-1.0)
    with pytest.raises(TypeError, match="use_std"):
        GlobalContrastNormalization(use_std=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="images"):
        GlobalContrastNormalization()(torch.ones(3))


def test_zca_hand_computed_diagonal_case() -> None:
    # mean 0, covariance diag(2/4, 8/4) = diag(0.5, 2): W = diag(1/sqrt(0.6), 1/sqrt(2.1))
    train = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    zca = ZCA(2, filter_bias=0.1).fit(train)
    torch.testing.assert_close(zca.mean, torch.zeros(2))
    torch.testing.assert_close(zca.whitening, torch.diag(torch.tensor([1.290994, 0.690066])))
    out = zca(torch.tensor([[1.0, 2.0]]))
    torch.testing.assert_close(out, torch.tensor([[1.290994, 1.380131]]))


def test_zca_hand_computed_with_mean() -> None:
    # rows (3, 1) and (1, 3): mean (2, 2); covariance [[1, -1], [-1, 1]] with eigenvalues 0, 2
    # W = 1/sqrt(fb) * P0 + 1/sqrt(2 + fb) * P2, P0 = [[.5, .5], [.5, .5]], P2 = [[.5, -.5], [-.5, .5]]
    zca = ZCA(2, filter_bias=0.25).fit(torch.tensor([[3.0, 1.0], [1.0, 3.0]]))
    a, b = 0.5 / 0.5, 0.5 / 1.5  # 0.5 / sqrt(0.25), 0.5 / sqrt(2.25)
    expected = torch.tensor([[a + b, a - b], [a - b, a + b]])
    torch.testing.assert_close(zca.mean, torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(zca.whitening, expected)
    # (3, 1) - mean = (1, -1), an eigenvector of eigenvalue 2: whitened to (1, -1) * 2 * b
    torch.testing.assert_close(zca(torch.tensor([[3.0, 1.0]])), torch.tensor([[2 * b, -2 * b]]))


def test_zca_matches_numpy_reference_and_is_symmetric() -> None:
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(12, 12))
    train = rng.normal(size=(300, 12)) @ mixing + rng.normal(size=12)
    test = rng.normal(size=(7, 12)) @ mixing
    zca = ZCA(12, filter_bias=0.1).fit(torch.from_numpy(train).reshape(300, 1, 3, 4))
    mean, whitening = numpy_zca(train, 0.1)
    assert zca.mean.dtype == torch.float32 and zca.whitening.dtype == torch.float32
    np.testing.assert_allclose(zca.mean.numpy(), mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(zca.whitening.numpy(), whitening, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(zca.whitening, zca.whitening.T)
    out = zca(torch.from_numpy(test).float().reshape(7, 1, 3, 4))
    assert out.shape == (7, 1, 3, 4)
    np.testing.assert_allclose(
        out.reshape(7, 12).numpy(), (test - mean) @ whitening, rtol=1e-4, atol=1e-4
    )


def test_zca_with_tiny_filter_bias_whitens_to_identity() -> None:
    rng = np.random.default_rng(1)
    # full-rank covariance with eigenvalues spread over three orders of magnitude
    basis, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    train = (rng.normal(size=(2000, 16)) * np.logspace(-1.5, 1.5, 16)) @ basis.T + 5.0
    zca = ZCA(16, filter_bias=1e-8).fit(torch.from_numpy(train))
    whitened = zca(torch.from_numpy(train).float()).double().numpy()
    covariance = np.cov(whitened, rowvar=False, bias=True)
    np.testing.assert_allclose(covariance, np.eye(16), atol=2e-3)
    np.testing.assert_allclose(whitened.mean(axis=0), np.zeros(16), atol=2e-3)


def test_zca_state_dict_round_trip_and_unfitted_error() -> None:
    train = torch.randn(50, 1, 2, 3, generator=torch.Generator().manual_seed(2))
    fitted = ZCA(6).fit(train)
    state = fitted.state_dict()
    assert set(state) == {"mean", "whitening", "fitted"}
    fresh = ZCA(6)
    assert not fresh.is_fitted
    with pytest.raises(ZCANotFittedError, match="fit"):
        fresh(train)
    fresh.load_state_dict(state)
    assert fresh.is_fitted
    torch.testing.assert_close(fresh(train), fitted(train))


def test_zca_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="filter_bias"):
        ZCA(4, filter_bias=0.0)
    with pytest.raises(ValueError, match="num_features"):
        ZCA(0)
    with pytest.raises(ValueError, match="4 values per example"):
        ZCA(4).fit(torch.randn(10, 5))
    with pytest.raises(ValueError, match="n >= 2"):
        ZCA(4).fit(torch.randn(1, 4))
    with pytest.raises(ValueError, match="4 values per example"):
        ZCA(4).fit(torch.randn(10, 4))(torch.randn(3, 6))
