"""The built-in fills on signals (n, C, L) and volumes (n, C, D, H, W), against plain loops,
scipy and a dense solve of the imputation system written from the documented stencil."""

from __future__ import annotations

import itertools
import math

import hypothesis.strategies as st
import numpy as np
import pytest
import scipy.ndimage
import torch
from hypothesis import given, settings
from torch import Tensor, nn

import occlusion_probe as op
from occlusion_probe import InputTypeError, InputValueError
from occlusion_probe.fills import disjoint_layers, layer_fills, resolve_fills, stack_fills
from occlusion_probe.imputation import neighbour_weights

# The documented weights, by how many axes a neighbour's offset moves along.
STENCILS = {
    1: {1: 1 / 2},
    2: {1: 1 / 6, 2: 1 / 12},
    3: {1: 1 / 14, 2: 1 / 28, 3: 1 / 56},
}

GENERATOR = torch.Generator().manual_seed(0)
SIGNALS = torch.rand(3, 2, 17, generator=GENERATOR)
VOLUMES = torch.rand(2, 2, 5, 6, 4, generator=GENERATOR)


def dense_imputation(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Noiseless linear imputation of one image (C, *spatial) and mask (*spatial), written
    from the rule: per removed position i with in-image neighbours N(i),
    sum_{j in N(i)} w_j x_j - (sum_{j in N(i)} w_j) x_i = 0; one dense solve."""
    rank = removed.ndim
    unknown = [p for p in np.ndindex(*removed.shape) if removed[p]]
    index = {p: i for i, p in enumerate(unknown)}
    matrix = np.zeros((len(unknown), len(unknown)))
    right = np.zeros((len(unknown), image.shape[0]))
    for i, p in enumerate(unknown):
        for offset in itertools.product((-1, 0, 1), repeat=rank):
            moved = sum(o != 0 for o in offset)
            q = tuple(a + o for a, o in zip(p, offset, strict=True))
            if moved == 0 or not all(0 <= a < s for a, s in zip(q, removed.shape, strict=True)):
                continue
            weight = STENCILS[rank][moved]
            matrix[i, i] -= weight
            if removed[q]:
                matrix[i, index[q]] += weight
            else:
                right[i] -= weight * image[(slice(None), *q)]
    out = image.copy()
    if not unknown:
        return out
    if len(unknown) == removed.size:
        out[:] = 0.0  # nothing known: the library's documented 0 (plus noise)
        return out
    solution = np.linalg.solve(matrix, right)
    for i, p in enumerate(unknown):
        out[(slice(None), *p)] = solution[i]
    return out


def dense_batch(images: Tensor, masks: Tensor) -> Tensor:
    full = masks.expand(images.shape[0], *masks.shape[1:])
    return torch.stack(
        [
            torch.from_numpy(dense_imputation(img.double().numpy(), m.numpy()))
            for img, m in zip(images, full, strict=True)
        ]
    )


def box(shape: tuple[int, ...], low: tuple[int, ...], high: tuple[int, ...]) -> Tensor:
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[tuple(slice(a, b) for a, b in zip(low, high, strict=True))] = True
    return mask


SIGNAL_MASKS = {
    "inner interval": box((17,), (5,), (9,)),
    "interval at the border": box((17,), (0,), (4,)),
    "two intervals": box((17,), (2,), (5,)) | box((17,), (11,), (17,)),
    "one sample": box((17,), (8,), (9,)),
}
VOLUME_MASKS = {
    "inner box": box((5, 6, 4), (1, 2, 1), (4, 4, 3)),
    "corner box": box((5, 6, 4), (0, 0, 0), (2, 3, 2)),
    "box through the volume": box((5, 6, 4), (0, 2, 0), (5, 4, 4)),
    "two boxes": box((5, 6, 4), (0, 0, 0), (2, 2, 2)) | box((5, 6, 4), (3, 3, 2), (5, 6, 4)),
}


def test_neighbour_weights_are_the_documented_ones() -> None:
    for rank, by_axes in STENCILS.items():
        stencil = neighbour_weights(rank)
        assert len(stencil) == 3**rank - 1
        for offset, weight in stencil:
            assert weight == pytest.approx(by_axes[sum(o != 0 for o in offset)], abs=1e-15)
        assert sum(w for _, w in stencil) == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize(
    ("images", "masks"),
    [
        *[(SIGNALS, m) for m in SIGNAL_MASKS.values()],
        *[(VOLUMES, m) for m in VOLUME_MASKS.values()],
    ],
    ids=[*SIGNAL_MASKS, *VOLUME_MASKS],
)
def test_linear_imputation_equals_a_dense_solve(images: Tensor, masks: Tensor) -> None:
    fill = op.fills.linear_imputation(noise=0.0)
    got = fill(images, masks[None])
    want = dense_batch(images, masks[None]).float()
    assert torch.allclose(got[:, :, masks], want[:, :, masks], atol=1e-5)
    assert torch.equal(got[:, :, ~masks], images[:, :, ~masks])
    (inside,) = fill.regions(images, masks[None])
    assert torch.allclose(inside, want[:, :, masks], atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(
    st.sampled_from([(13,), (3, 4, 3), (2, 5, 2)]),
    st.integers(0, 2**32 - 1),
    st.floats(0.1, 0.9),
)
def test_linear_imputation_equals_a_dense_solve_on_random_masks(
    shape: tuple[int, ...], seed: int, density: float
) -> None:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 2, *shape, generator=generator, dtype=torch.float64)
    masks = torch.rand(2, *shape, generator=generator) < density
    got = op.fills.linear_imputation(noise=0.0)(images, masks)
    want = dense_batch(images, masks)
    assert torch.allclose(got, want, atol=1e-9)


@pytest.mark.parametrize("images", [SIGNALS, VOLUMES], ids=["signals", "volumes"])
def test_linear_imputation_noise_is_one_field_at_every_rank(images: Tensor) -> None:
    mask = next(iter((SIGNAL_MASKS if images.dim() == 3 else VOLUME_MASKS).values()))
    noisy = op.fills.linear_imputation(noise=0.1, seed=5)(images, mask[None])
    clean = op.fills.linear_imputation(noise=0.0)(images, mask[None])
    added = (noisy - clean)[:, :, mask]
    # The same field for every image, and repeated with the seed.
    assert torch.allclose(added[0], added[1], atol=1e-6)
    again = op.fills.linear_imputation(noise=0.1, seed=5)(images, mask[None])
    assert torch.equal(noisy, again)
    whole = torch.ones(1, *images.shape[2:], dtype=torch.bool)
    assert torch.equal(op.fills.linear_imputation(noise=0.0)(images, whole), 0 * images)


def test_translated_volume_boxes_share_one_factorisation() -> None:
    fill = op.fills.linear_imputation(noise=0.0)
    shape = (6, 6, 6)
    images = torch.rand(1, 1, *shape, generator=torch.Generator().manual_seed(1))
    inner = [box(shape, (a, b, c), (a + 2, b + 2, c + 2)) for a, b, c in [(1, 1, 1), (2, 1, 3)]]
    fill.regions(images, torch.stack(inner))
    assert len(fill._factors) == 1
    fill.regions(images, box(shape, (0, 1, 1), (2, 3, 3))[None])  # touches a face: new system
    assert len(fill._factors) == 2


def _masked_mean_loop(images: Tensor, mask: Tensor, over_channels: bool) -> Tensor:
    """(n, C) means of the masked positions, one image and channel at a time."""
    n, c = images.shape[:2]
    out = torch.empty(n, c, dtype=torch.float64)
    for i in range(n):
        picked = [images[i, ch][mask].double() for ch in range(c)]
        for ch in range(c):
            out[i, ch] = torch.cat(picked).mean() if over_channels else picked[ch].mean()
    return out


@pytest.mark.parametrize("images", [SIGNALS, VOLUMES], ids=["signals", "volumes"])
@pytest.mark.parametrize("over_channels", [False, True])
def test_patch_mean_and_image_mean_at_every_rank(images: Tensor, over_channels: bool) -> None:
    masks = SIGNAL_MASKS if images.dim() == 3 else VOLUME_MASKS
    for mask in masks.values():
        want = _masked_mean_loop(images, mask, over_channels).float()
        got = op.fills.patch_mean(over_channels)(images, mask[None])
        assert got.shape == images.shape
        assert torch.allclose(got[:, :, mask], want[:, :, None].expand(-1, -1, int(mask.sum())))
        (inside,) = op.fills.patch_mean(over_channels).regions(images, mask[None])
        assert torch.allclose(inside, got[:, :, mask])
    everything = torch.ones(images.shape[2:], dtype=torch.bool)
    want = _masked_mean_loop(images, everything, over_channels).float()
    got = op.fills.image_mean(over_channels)(images, mask[None])
    assert torch.allclose(got[:, :, mask], want[:, :, None].expand(-1, -1, int(mask.sum())))


@pytest.mark.parametrize("images", [SIGNALS, VOLUMES], ids=["signals", "volumes"])
@pytest.mark.parametrize("sigma", [0.5, 1.0, 3.0])  # 3.0: a radius of 12, past every axis
def test_blur_equals_scipy_gaussian_filter_at_every_rank(images: Tensor, sigma: float) -> None:
    whole = torch.ones(1, *images.shape[2:], dtype=torch.bool)
    got = op.fills.blur(sigma)(images, whole)
    want = scipy.ndimage.gaussian_filter(
        images.double().numpy(),
        sigma=(0, 0) + (sigma,) * (images.dim() - 2),
        mode="nearest",
        truncate=4.0,
    )
    assert torch.allclose(got, torch.from_numpy(want).float(), atol=1e-5)
    mask = next(iter((SIGNAL_MASKS if images.dim() == 3 else VOLUME_MASKS).values()))
    (inside,) = op.fills.blur(sigma).regions(images, mask[None])
    assert torch.allclose(inside, got[:, :, mask])


@pytest.mark.parametrize("images", [SIGNALS, VOLUMES], ids=["signals", "volumes"])
def test_constant_tensor_and_callable_fills_keep_the_rank(images: Tensor) -> None:
    one_image = images.shape[1:]
    mean_image = images.mean(dim=0)
    fills = resolve_fills([0.5, mean_image, lambda x: x.flip(-1)], tuple(one_image))
    stacked = stack_fills(fills, images)
    assert stacked.dim() == images.dim() + 1
    assert torch.equal(stacked[0].expand(images.shape), torch.full_like(images, 0.5))
    assert torch.equal(stacked[1].expand(images.shape), mean_image.expand(images.shape))
    assert torch.equal(stacked[2], images.flip(-1))


def test_layer_fills_hold_each_regions_own_fill_at_every_rank() -> None:
    shape = (5, 6, 4)
    masks = torch.stack([box(shape, (0, 0, 0), (2, 2, 2)), box(shape, (2, 3, 1), (5, 6, 4))])
    fills = resolve_fills([op.fills.patch_mean(), 0.25], tuple(VOLUMES.shape[1:]))
    made = layer_fills(fills, VOLUMES, masks, [0, 1])
    assert made.shape == (2, *VOLUMES.shape)
    for mask in masks:
        want = op.fills.patch_mean()(VOLUMES, mask[None])
        assert torch.allclose(made[0][:, :, mask], want[:, :, mask])
    outside = ~(masks[0] | masks[1])
    assert torch.equal(made[0][:, :, outside], VOLUMES[:, :, outside])
    assert torch.equal(made[1].expand(VOLUMES.shape), torch.full_like(VOLUMES, 0.25))


@pytest.mark.parametrize(
    "fill",
    [
        op.fills.patch_mean(),
        op.fills.image_mean(),
        op.fills.blur(1.0),
        op.fills.linear_imputation(),
    ],
    ids=lambda f: f.label,
)
def test_region_fills_refuse_masks_of_another_rank_or_no_spatial_axis(
    fill: op.fills.RegionFill,
) -> None:
    with pytest.raises(InputValueError, match=r"expected masks of shape \(n or 1, \*\(17,\)\)"):
        fill(SIGNALS, torch.ones(1, 17, 1, dtype=torch.bool))
    with pytest.raises(InputValueError, match=r"expected masks of shape \(n or 1, \*\(5, 6, 4\)"):
        fill(VOLUMES, torch.ones(1, 6, 4, dtype=torch.bool))
    with pytest.raises(InputTypeError, match=r"expected images as a floating-point Tensor"):
        fill(torch.rand(3, 2), torch.ones(1, dtype=torch.bool))


def test_a_one_d_fill_tensor_names_the_last_axis_at_other_ranks() -> None:
    with pytest.raises(InputValueError, match=r"shape \(1, 17\) for one per position of the"):
        resolve_fills([torch.linspace(0, 1, 17)], (2, 17))
    with pytest.raises(InputValueError, match=r"shape \(1, 1, 1, 4\) for one per position"):
        resolve_fills([torch.linspace(0, 1, 4)], (2, 5, 6, 4))


@pytest.mark.parametrize(
    ("images", "regions"),
    [
        (SIGNALS, op.sliding_windows((17,), 5, 3)),
        (VOLUMES, op.sliding_windows((5, 6, 4), (3, 3, 2), 2)),
        (VOLUMES, op.grid((5, 6, 4), (2, 3, 2))),
    ],
    ids=["signal windows", "volume windows", "volume grid"],
)
def test_layers_of_any_rank_regions_hold_each_regions_own_fill(
    images: Tensor, regions: op.Regions
) -> None:
    # What a sweep builds per layer of disjoint regions, against each region filled alone.
    fills = resolve_fills(
        [
            op.fills.patch_mean(),
            op.fills.image_mean(),
            op.fills.blur(1.0),
            op.fills.linear_imputation(noise=0.01, seed=2),
        ],
        tuple(images.shape[1:]),
    )
    masks = regions.masks
    layers = disjoint_layers(masks)
    assert sorted(p for layer in layers for p in layer) == list(range(len(regions)))
    for layer in layers:
        made = layer_fills(fills, images, masks, layer)
        for position in layer:
            mask = masks[position]
            for v, fill in enumerate(fills):
                assert fill.region is not None
                alone = fill.region(images, mask[None])
                assert torch.allclose(made[v][:, :, mask], alone[:, :, mask], atol=1e-6)


def _conv_model(rank: int, spatial: tuple[int, ...]) -> nn.Module:
    conv = {1: nn.Conv1d, 3: nn.Conv3d}[rank]
    torch.manual_seed(rank)
    return nn.Sequential(
        conv(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * math.prod(spatial), 4)
    ).eval()


@pytest.mark.parametrize(
    ("images", "regions"),
    [
        (SIGNALS, op.sliding_windows((17,), 5, 3)),
        (VOLUMES, op.grid((5, 6, 4), (2, 3, 2))),
        (VOLUMES, op.sliding_windows((5, 6, 4), (3, 3, 2), 2)),
    ],
    ids=["signal windows", "volume grid", "volume windows"],
)
def test_sweep_with_built_in_fills_equals_hand_built_forwards_at_ranks_1_and_3(
    images: Tensor, regions: op.Regions
) -> None:
    model = _conv_model(images.dim() - 2, tuple(images.shape[2:]))
    fills = [
        0.5,
        op.fills.patch_mean(),
        op.fills.image_mean(),
        op.fills.blur(1.0),
        op.fills.linear_imputation(),
    ]
    result = op.sweep(
        model, images, regions, fills=fills, output="logits", engine="dense", progress=False
    )
    assert result.occluded.shape == (images.shape[0], len(regions), len(fills), 4)
    with torch.no_grad():
        for r, mask in enumerate(regions.masks):
            for v, fill in enumerate(fills):
                made = (
                    torch.full_like(images, fill)
                    if isinstance(fill, float)
                    else fill(images, mask[None])
                )
                occluded = torch.where(mask, made, images)
                want = model(occluded)
                torch.testing.assert_close(result.occluded[:, r, v], want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("images", "regions"),
    [(SIGNALS, op.grid((17,), (4,))), (VOLUMES, op.grid((5, 6, 4), (2, 2, 1)))],
    ids=["signal grid", "volume grid"],
)
def test_curves_and_keep_only_impute_at_ranks_1_and_3(images: Tensor, regions: op.Regions) -> None:
    model = _conv_model(images.dim() - 2, tuple(images.shape[2:]))
    labels = torch.arange(images.shape[0]) % 4
    fill = op.fills.linear_imputation(noise=0.02, seed=1)
    order = list(reversed(regions.ids))
    common = {"labels": labels, "fill": fill, "output": "logits", "progress": False}
    removed = op.perturbation_curve(model, images, regions, order, mode="remove", **common)
    kept = op.keep_only(model, images, labels, regions, keep=order[:2], fill=fill, progress=False)
    with torch.no_grad():
        for k in range(len(regions) + 1):
            union = regions.masks[[regions.positions([i])[0] for i in order[:k]]].any(dim=0)
            occluded = torch.where(union, fill(images, union[None]), images)
            want = model(occluded)
            torch.testing.assert_close(
                removed.class_outputs[0, :, k], want[torch.arange(len(labels)), labels]
            )
            assert torch.equal(removed.predicted[0, :, k], want.argmax(dim=1))
        hidden = ~regions.union(order[:2])
        predicted = model(torch.where(hidden, fill(images, hidden[None]), images)).argmax(dim=1)
    want_counts = torch.zeros(4, 4, dtype=torch.int64)
    for t, p in zip(labels.tolist(), predicted.tolist(), strict=True):
        want_counts[t, p] += 1
    assert torch.equal(kept.confusion, want_counts)


@pytest.mark.parametrize(
    ("images", "regions"),
    [
        (SIGNALS, op.sliding_windows((17,), 5, 3)),
        (VOLUMES, op.sliding_windows((5, 6, 4), (3, 3, 2), 2)),
    ],
    ids=["signal windows", "volume windows"],
)
def test_soft_regions_blend_every_fill_at_ranks_1_and_3(
    images: Tensor, regions: op.Regions
) -> None:
    model = _conv_model(images.dim() - 2, tuple(images.shape[2:]))
    soft = regions.soften("gaussian", sigma=0.25)
    assert soft.weights is not None
    fills = [0.5, op.fills.patch_mean(), op.fills.linear_imputation(noise=0.0)]
    result = op.sweep(
        model, images, soft, fills=fills, output="logits", engine="dense", progress=False
    )
    with torch.no_grad():
        for r, (mask, weight) in enumerate(zip(soft.masks, soft.weights, strict=True)):
            for v, fill in enumerate(fills):
                made = (
                    torch.full_like(images, fill)
                    if isinstance(fill, float)
                    else fill(images, mask[None])
                )
                # x (1 - w) + fill w on the region's support, the image elsewhere
                blended = torch.where(mask, images * (1 - weight) + made * weight, images)
                torch.testing.assert_close(
                    result.occluded[:, r, v], model(blended), atol=1e-5, rtol=1e-5
                )
