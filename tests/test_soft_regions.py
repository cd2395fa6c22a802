"""Soft regions (Regions.soften): MONAI's gaussian occlusion, in sweep on both engines."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from reference_models import small_cnn
from torch import Tensor, nn

import occlusion_probe as op
from occlusion_probe import InputTypeError, InputValueError

IMAGES = torch.rand(2, 2, 12, 12, generator=torch.Generator().manual_seed(5))
MODEL = small_cnn(in_channels=2, classes=3, size=12).eval()
SOFT = op.sliding_windows(12, 12, window=4, stride=2).soften("gaussian", sigma=0.25)


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")
@pytest.mark.parametrize("size", [4, 5, (3, 6), 16])
def test_soften_weights_equal_monai_gaussian_kernel(size: int | tuple[int, int]) -> None:
    monai = pytest.importorskip("monai.visualize")
    shape = (size, size) if isinstance(size, int) else size
    soft = op.sliding_windows(16, 16, window=shape, stride=shape).soften("gaussian", sigma=0.25)
    mul, _ = monai.OcclusionSensitivity.gaussian_occlusion(torch.zeros(1, 1, *shape), shape)
    window = soft.weights[0, : shape[0], : shape[1]]
    assert torch.allclose(window, 1 - mul[0, 0].as_tensor(), atol=1e-6)
    assert torch.equal(soft.masks, soft.weights > 0)


def plain_soft(fills: list[object]) -> Tensor:
    """(n, R, V, K) from x * (1 - w) + fill * w, built per image, region and fill."""
    built = []
    for i in range(IMAGES.shape[0]):
        one = IMAGES[i : i + 1]
        for mask, weight in zip(SOFT.masks, SOFT.weights, strict=True):
            for fill in fills:
                value = fill(one, mask[None]) if callable(fill) else torch.full_like(one, fill)
                built.append(one * (1 - weight) + value * weight)
    with torch.no_grad():
        out = torch.softmax(MODEL(torch.cat(built)), dim=1)
    return out.reshape(IMAGES.shape[0], len(SOFT), len(fills), -1)


def test_soft_sweep_equals_a_plain_loop_on_both_engines() -> None:
    fills = [0.0, 0.5, op.fills.patch_mean(), op.fills.linear_imputation(noise=0.0)]
    want = plain_soft(fills)
    dense = op.sweep(MODEL, IMAGES, SOFT, fills=fills, engine="dense", progress=False)
    assert torch.allclose(dense.occluded, want, atol=1e-5)
    incremental = op.sweep(MODEL, IMAGES, SOFT, fills=fills, engine="incremental", progress=False)
    assert torch.allclose(incremental.occluded, dense.occluded, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")
def test_soft_windows_with_fill_zero_equal_monai_gaussian_mode() -> None:
    monai = pytest.importorskip("monai.visualize")
    utils = pytest.importorskip("monai.data.utils")
    image = IMAGES[:1]
    sensitivity = monai.OcclusionSensitivity(
        MODEL, mask_size=4, n_batch=64, verbose=False, mode="gaussian", overlap=0.5,
        activate=False,
    )  # fmt: skip
    with torch.no_grad():
        monai_map = sensitivity(image)[0][0].as_tensor()
    result = op.sweep(MODEL, image, SOFT, fills=0.0, output="logits", progress=False)
    # MONAI blends its windows with its sliding-window importance map (a Gaussian of
    # sigma 0.125 window), not with the occlusion weights: blend ours the same way here.
    importance = utils.compute_importance_map((4, 4), mode="gaussian", sigma_scale=0.125)
    blend = torch.zeros(len(SOFT), 12, 12, dtype=torch.float64)
    for r, (top, left) in enumerate((t, c) for t in range(0, 9, 2) for c in range(0, 9, 2)):
        blend[r, top : top + 4, left : left + 4] = importance.double()
    ours = torch.einsum("rhw,rk->khw", blend, result.occluded[0, :, 0].double()) / blend.sum(0)
    assert torch.allclose(ours.float(), monai_map.float(), atol=1e-5)


def test_soft_heatmap_weights_each_window_by_w() -> None:
    values = torch.rand(len(SOFT), dtype=torch.float64)
    weights = SOFT.weights.double()
    total = weights.sum(dim=0)
    want = torch.einsum("r,rhw->hw", values, weights) / total
    # The image's top-left pixel is in no support (MONAI's bump centres at size // 2, so a
    # 4-pixel window's top-left corner weighs 0): it gets 0.
    want = torch.where(total > 0, want, torch.zeros_like(want))
    assert float(total[0, 0]) == 0
    assert torch.allclose(SOFT.pixel_mean(values), want)


def test_soft_regions_survive_select_to_and_a_result_file(tmp_path: Path) -> None:
    picked = SOFT.select([3, 1])
    assert picked.weights is not None
    assert torch.equal(picked.weights, SOFT.weights[[2, 0]])
    assert torch.equal(SOFT.to("cpu").weights, SOFT.weights)
    result = op.sweep(MODEL, IMAGES, SOFT, fills=0.0, engine="dense", progress=False)
    loaded = op.SweepResult.load(result.save(tmp_path / "soft.npz"))
    assert loaded.regions.weights is not None
    assert torch.equal(loaded.regions.weights, SOFT.weights)
    assert torch.allclose(loaded.heatmap(0, fill=0.0), result.heatmap(0, fill=0.0))


def test_soft_regions_bad_inputs() -> None:
    regions = op.grid(12, 12, 2, 2)
    with pytest.raises(InputValueError, match="sigma: expected a finite number > 0"):
        regions.soften("gaussian", sigma=0)
    with pytest.raises(InputTypeError, match="sigma: expected a number"):
        regions.soften("gaussian", sigma="1")
    with pytest.raises(InputValueError, match='kind: expected "gaussian"'):
        regions.soften("box")
    with pytest.raises(InputValueError, match=r"Regions.weights: expected values in \[0, 1\]"):
        op.Regions(regions.masks, regions.ids, regions.masks.float() * 2)
    with pytest.raises(InputValueError, match="weights > 0 exactly on the masks"):
        op.Regions(regions.masks, regions.ids, torch.ones(4, 12, 12))
    with pytest.raises(InputTypeError, match=r"Regions\.weights: expected a floating Tensor"):
        op.Regions(regions.masks, regions.ids, regions.masks)
    labels = torch.tensor([0, 1])
    with pytest.raises(InputValueError, match="keep_only keeps or fills whole regions"):
        op.keep_only(MODEL, IMAGES, labels, SOFT, keep=[1], progress=False)
    with pytest.raises(InputValueError, match="perturbation_curve keeps or fills whole regions"):
        op.perturbation_curve(MODEL, IMAGES, SOFT, list(SOFT.ids), labels=labels, progress=False)
    with pytest.raises(InputValueError, match="soft regions cannot be combined with refine"):
        op.sweep(MODEL, IMAGES, SOFT, fills=0.0, approximate=0.9, progress=False)


def test_soft_checkpoint_fingerprint_reads_the_weights() -> None:
    from occlusion_probe.checkpoint import Fingerprint
    from occlusion_probe.data import ImageSource
    from occlusion_probe.fills import resolve_fills

    source = ImageSource(IMAGES, None, (12, 12))
    fills = resolve_fills([0.0], (2, 12, 12))
    hard = op.sliding_windows(12, 12, window=4, stride=2)

    def part(regions: op.Regions) -> str:
        return Fingerprint.of(nn.Identity(), regions, fills, "softmax", None, source).parts[
            "regions"
        ]

    narrow = hard.soften("gaussian", sigma=0.2)
    assert part(SOFT) != part(narrow)
    assert part(SOFT) == part(hard.soften("gaussian", sigma=0.25))
