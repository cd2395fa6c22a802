"""Region-aware fills: ROAD's imputation, MONAI's patch means, blur, in every entry point."""

from __future__ import annotations

from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import pytest
import scipy.ndimage
import scipy.sparse
import scipy.sparse.linalg
import torch
from hypothesis import given, settings
from reference_models import small_cnn
from torch import Tensor, nn

import occlusion_probe as op
from occlusion_probe import InputTypeError, InputValueError
from occlusion_probe.checkpoint import Fingerprint
from occlusion_probe.data import ImageSource
from occlusion_probe.fills import disjoint_layers, resolve_fills

ROAD_WEIGHTS = [
    ((-1, -1), 1 / 12),
    ((-1, 0), 1 / 6),
    ((-1, 1), 1 / 12),
    ((0, -1), 1 / 6),
    ((0, 1), 1 / 6),
    ((1, -1), 1 / 12),
    ((1, 0), 1 / 6),
    ((1, 1), 1 / 12),
]


def road_reference(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """ROAD's noiseless linear imputation of one image (C, H, W) and mask (H, W), written
    from the paper's algorithm: per removed pixel i, with N(i) its neighbours inside the
    image, sum_{j in N(i)} w_j * x_j - (sum_{j in N(i)} w_j) * x_i = 0, removed neighbours
    as unknowns and kept ones moved to the right-hand side; one spsolve per image and mask."""
    h, w = removed.shape
    unknown = [(y, x) for y in range(h) for x in range(w) if removed[y, x]]
    index = {pixel: i for i, pixel in enumerate(unknown)}
    matrix = scipy.sparse.lil_matrix((len(unknown), len(unknown)))
    right = np.zeros((len(unknown), image.shape[0]))
    for i, (y, x) in enumerate(unknown):
        total = 0.0
        for (dy, dx), weight in ROAD_WEIGHTS:
            ny, nx = y + dy, x + dx
            if not (0 <= ny < h and 0 <= nx < w):
                continue
            total += weight
            if removed[ny, nx]:
                matrix[i, index[(ny, nx)]] = weight
            else:
                right[i] -= weight * image[:, ny, nx]
        matrix[i, i] = -total
    solution = scipy.sparse.linalg.spsolve(scipy.sparse.csc_matrix(matrix), right)
    out = image.copy()
    for i, (y, x) in enumerate(unknown):
        out[:, y, x] = np.reshape(solution, (len(unknown), -1))[i]
    return out


def reference_batch(images: Tensor, masks: Tensor) -> Tensor:
    """`road_reference` per image and mask: images (n, C, H, W), masks (n or 1, H, W)."""
    full = masks.expand(images.shape[0], *masks.shape[1:])
    return torch.stack(
        [
            torch.from_numpy(road_reference(img.double().numpy(), m.numpy()))
            for img, m in zip(images, full, strict=True)
        ]
    )


def unions(regions: op.Regions, k: int, n: int, seed: int) -> Tensor:
    """(n, H, W): per image the union of k regions drawn at random."""
    generator = torch.Generator().manual_seed(seed)
    picks = [torch.randperm(len(regions), generator=generator)[:k] for _ in range(n)]
    return torch.stack([regions.masks[p].any(dim=0) for p in picks])


IMAGES = torch.rand(3, 2, 12, 12, generator=torch.Generator().manual_seed(0))
# One model for every sweep here: the incremental engine reads its graph once.
MODEL = small_cnn(in_channels=2, classes=3, size=12).eval()


@pytest.mark.parametrize(
    "regions",
    [op.grid(12, 12, 4, 4), op.sliding_windows(12, 12, window=5, stride=3)],
    ids=["grid cells", "sliding windows"],
)
def test_linear_imputation_equals_road_per_region(regions: op.Regions) -> None:
    fill = op.fills.linear_imputation(noise=0.0)
    for mask in regions.masks:  # cells and windows, many touching the border
        got = fill(IMAGES, mask[None])
        want = reference_batch(IMAGES, mask[None]).float()
        assert torch.allclose(got[:, :, mask], want[:, :, mask], atol=1e-5)
    values = fill.regions(IMAGES, regions.masks)
    for mask, inside in zip(regions.masks, values, strict=True):
        want = reference_batch(IMAGES, mask[None]).float()[:, :, mask]
        assert torch.allclose(inside, want, atol=1e-5)


@pytest.mark.parametrize("k", [1, 3, 8, 15])
def test_linear_imputation_equals_road_on_unions(k: int) -> None:
    masks = unions(op.grid(12, 12, 4, 4), k, IMAGES.shape[0], seed=k)
    masks[0] = masks[1]  # two images share a mask: one system serves both
    got = op.fills.linear_imputation(noise=0.0)(IMAGES, masks)
    want = reference_batch(IMAGES, masks).float()
    assert torch.allclose(got * masks[:, None], want * masks[:, None], atol=1e-5)
    # Outside the masks the images are unchanged.
    assert torch.equal(got * ~masks[:, None], IMAGES * ~masks[:, None])


def test_linear_imputation_whole_image_gives_the_noise_only() -> None:
    everything = torch.ones(1, 12, 12, dtype=torch.bool)
    assert torch.equal(op.fills.linear_imputation(noise=0.0)(IMAGES, everything), 0 * IMAGES)


def test_linear_imputation_noise_repeats_with_its_seed() -> None:
    mask = op.grid(12, 12, 2, 2).masks[:1]
    first = op.fills.linear_imputation(noise=0.1, seed=3)(IMAGES, mask)
    again = op.fills.linear_imputation(noise=0.1, seed=3)(IMAGES, mask)
    other = op.fills.linear_imputation(noise=0.1, seed=4)(IMAGES, mask)
    clean = op.fills.linear_imputation(noise=0.0)(IMAGES, mask)
    assert torch.equal(first, again)
    assert not torch.equal(first[:, :, mask[0]], other[:, :, mask[0]])
    spread = float((first - clean)[:, :, mask[0]].std())
    assert 0.07 < spread < 0.13


def test_patch_mean_and_image_mean_are_means() -> None:
    mask = op.grid(12, 12, 3, 3).masks[4]
    got = op.fills.patch_mean()(IMAGES, mask[None])
    assert torch.allclose(got[:, :, 0, 0], IMAGES[:, :, mask].mean(dim=2))
    over = op.fills.patch_mean(over_channels=True)(IMAGES, mask[None])
    assert torch.allclose(over[:, 0, 0, 0], IMAGES[:, :, mask].mean(dim=(1, 2)))
    assert torch.allclose(
        op.fills.image_mean()(IMAGES, mask[None])[:, :, 5, 5], IMAGES.mean(dim=(2, 3))
    )
    assert torch.allclose(
        op.fills.image_mean(over_channels=True)(IMAGES, mask[None])[:, 0, 5, 5],
        IMAGES.mean(dim=(1, 2, 3)),
    )


@pytest.mark.parametrize("sigma", [0.5, 1.0, 3.0])
def test_blur_equals_scipy_gaussian_filter(sigma: float) -> None:
    got = op.fills.blur(sigma)(IMAGES, torch.ones(1, 12, 12, dtype=torch.bool))
    want = scipy.ndimage.gaussian_filter(
        IMAGES.double().numpy(), sigma=(0, 0, sigma, sigma), mode="nearest", truncate=4.0
    )
    assert torch.allclose(got, torch.from_numpy(want).float(), atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 5), st.integers(1, 4), st.integers(6, 12))
def test_disjoint_layers_cover_every_region_once(window: int, stride: int, size: int) -> None:
    # sliding_windows refuses a stride over the window (pixels never occluded).
    regions = op.sliding_windows(size, size, window=window, stride=min(stride, window))
    layers = disjoint_layers(regions.masks)
    assert sorted(p for layer in layers for p in layer) == list(range(len(regions)))
    for layer in layers:
        assert int(regions.masks[layer].sum(dim=0).max()) == 1


FILLS = [
    0.0,
    op.fills.patch_mean(),
    op.fills.image_mean(),
    op.fills.blur(1.0),
    op.fills.linear_imputation(noise=0.05, seed=1),
]


def plain_sweep(model: nn.Module, images: Tensor, regions: op.Regions) -> Tensor:
    """(n, R, V, K): each occluded image built by a loop per image, region and fill (the
    model then runs on all of them at once)."""
    built = []
    for i in range(images.shape[0]):
        one = images[i : i + 1]
        for mask in regions.masks:
            for fill in FILLS:
                value = fill(one, mask[None]) if callable(fill) else torch.full_like(one, fill)
                built.append(torch.where(mask, value, one))
    outputs = torch.softmax(model(torch.cat(built)), dim=1)
    return outputs.reshape(images.shape[0], len(regions), len(FILLS), -1)


@pytest.mark.parametrize(
    "regions",
    [op.grid(12, 12, 3, 3), op.sliding_windows(12, 12, window=4, stride=2)],
    ids=["grid", "overlapping windows"],
)
def test_sweep_with_region_fills_equals_a_plain_loop_on_both_engines(
    regions: op.Regions,
) -> None:
    model = MODEL
    with torch.no_grad():
        want = plain_sweep(model, IMAGES, regions)
    dense = op.sweep(
        model, IMAGES, regions, fills=FILLS, engine="dense", progress=False, batch_size=32
    )
    assert dense.fill_labels == (
        "0.0",
        "patch_mean",
        "image_mean",
        "blur(sigma=1.0)",
        "linear_imputation(noise=0.05, seed=1)",
    )
    assert torch.allclose(dense.occluded, want, atol=1e-5)
    incremental = op.sweep(
        model, IMAGES, regions, fills=FILLS, engine="incremental", progress=False, batch_size=32
    )
    assert incremental.engine == "incremental"
    assert torch.allclose(incremental.occluded, dense.occluded, atol=1e-5)


def test_sweep_with_region_fills_does_not_depend_on_chunking() -> None:
    model = MODEL
    regions = op.sliding_windows(12, 12, window=4, stride=4)
    fill = op.fills.linear_imputation(noise=0.1)
    whole = op.sweep(model, IMAGES, regions, fills=fill, engine="dense", progress=False)
    parts = [
        op.sweep(model, IMAGES[i : i + 1], regions, fills=fill, engine="dense", progress=False)
        for i in range(IMAGES.shape[0])
    ]
    assert torch.allclose(whole.occluded, torch.cat([p.occluded for p in parts]), atol=1e-6)


def test_keep_only_with_a_region_fill_imputes_the_hidden_pixels() -> None:
    model = MODEL
    regions = op.grid(12, 12, 3, 3)
    labels = torch.tensor([0, 1, 2])
    fill = op.fills.linear_imputation(noise=0.0)
    report = op.keep_only(model, IMAGES, labels, regions, keep=[5], fill=fill, progress=False)
    hidden = ~regions.union([5])
    imputed = reference_batch(IMAGES, hidden[None]).float()
    with torch.no_grad():
        predicted = model(imputed).argmax(dim=1)
    want = torch.zeros(3, 3, dtype=torch.long)
    for true, guess in zip(labels.tolist(), predicted.tolist(), strict=True):
        want[true, guess] += 1
    assert torch.equal(torch.as_tensor(report.confusion), want)


def test_perturbation_curve_with_imputation_equals_a_plain_loop() -> None:
    model = MODEL
    regions = op.grid(12, 12, 2, 2)
    labels = torch.tensor([0, 1, 2])
    order = [3, 1, 4, 2]
    curve = op.perturbation_curve(
        model, IMAGES, regions, order, mode="remove", labels=labels, output="logits",
        fill=op.fills.linear_imputation(noise=0.0), progress=False,
    )  # fmt: skip
    outputs = torch.as_tensor(curve.class_outputs).reshape(3, len(regions) + 1)
    with torch.no_grad():
        for k in range(len(regions) + 1):
            removed = regions.union(order[:k]) if k else torch.zeros(12, 12, dtype=torch.bool)
            imputed = reference_batch(IMAGES, removed[None]).float() if k else IMAGES
            want = model(imputed)[torch.arange(3), labels]
            assert torch.allclose(outputs[:, k], want, atol=1e-4), k


def test_checkpoint_fingerprint_reads_the_fill_parameters() -> None:
    regions = op.grid(12, 12, 2, 2)
    source = ImageSource(IMAGES, None, (12, 12))

    def fingerprint(fill: object) -> str:
        fills = resolve_fills([fill], (2, 12, 12))  # type: ignore[list-item]
        return Fingerprint.of(nn.Identity(), regions, fills, "softmax", None, source).parts["fills"]

    used = op.fills.linear_imputation(noise=0.01)
    used(IMAGES, regions.masks[:1])  # a filled cache must not change the fingerprint
    assert fingerprint(used) == fingerprint(op.fills.linear_imputation(noise=0.01))
    assert fingerprint(used) != fingerprint(op.fills.linear_imputation(noise=0.02))
    assert fingerprint(used) != fingerprint(op.fills.linear_imputation(noise=0.01, seed=1))
    assert fingerprint(op.fills.blur(1.0)) != fingerprint(op.fills.blur(2.0))


def monai_map(mode: object, image: Tensor, model: nn.Module) -> Tensor:
    """MONAI's OcclusionSensitivity map (K, H, W) of 4x4 windows at stride 2, logits."""
    monai = pytest.importorskip("monai.visualize")
    sensitivity = monai.OcclusionSensitivity(
        model, mask_size=4, n_batch=64, verbose=False, mode=mode, overlap=0.5, activate=False
    )
    with torch.no_grad():
        made: Tensor = sensitivity(image)[0][0]
    return made.as_tensor() if hasattr(made, "as_tensor") else made


def window_average(regions: op.Regions, per_window: Tensor) -> Tensor:
    """Per pixel, the mean of the outputs (R, K) of the windows covering it: (K, H, W)."""
    weights = regions.masks.double()
    return torch.einsum("rhw,rk->khw", weights, per_window.double()) / weights.sum(dim=0)


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")
def test_image_mean_equals_monai_mean_img() -> None:
    image = IMAGES[:1]
    regions = op.sliding_windows(12, 12, window=4, stride=2)
    fill = op.fills.image_mean(over_channels=True)
    result = op.sweep(MODEL, image, regions, fills=fill, output="logits", progress=False)
    ours = window_average(regions, result.occluded[0, :, 0])
    assert torch.allclose(ours.float(), monai_map("mean_img", image, MODEL).float(), atol=1e-5)


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")
def test_patch_mean_equals_monai_mean_patch(monkeypatch: pytest.MonkeyPatch) -> None:
    monai = pytest.importorskip("monai.visualize")
    # MONAI 1.6.1's predictor unpacks constant_occlusion's (mul, add) as (add, mul) for
    # "mean_patch", so its windows come out multiplied by their mean; swapping what
    # constant_occlusion returns (only the predictor's "mean_patch" path calls it there)
    # gives MONAI's windows the patch mean it documents.
    original = monai.OcclusionSensitivity.constant_occlusion

    def swapped(x: Tensor, val: float, mask_size: object) -> tuple[object, object]:
        mul, add = original(x, val, mask_size)
        return add, mul

    image = IMAGES[:1]
    regions = op.sliding_windows(12, 12, window=4, stride=2)
    fill = op.fills.patch_mean(over_channels=True)
    result = op.sweep(MODEL, image, regions, fills=fill, output="logits", progress=False)
    ours = window_average(regions, result.occluded[0, :, 0])
    buggy = monai_map("mean_patch", image, MODEL)
    assert not torch.allclose(ours.float(), buggy.float(), atol=1e-3)
    monkeypatch.setattr(monai.OcclusionSensitivity, "constant_occlusion", staticmethod(swapped))
    assert torch.allclose(ours.float(), monai_map("mean_patch", image, MODEL).float(), atol=1e-5)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: op.fills.blur(0), InputValueError, "sigma: expected a finite number > 0"),
        (lambda: op.fills.blur(-1.0), InputValueError, "sigma: expected a finite number > 0"),
        (lambda: op.fills.blur("2"), InputTypeError, "sigma: expected a number"),
        (lambda: op.fills.linear_imputation(noise=-0.1), InputValueError, "noise: expected"),
        (lambda: op.fills.linear_imputation(noise=None), InputTypeError, "noise: expected"),
        (lambda: op.fills.linear_imputation(seed=1.5), InputTypeError, "seed: expected an int"),
        (lambda: op.fills.linear_imputation(seed=-1), InputValueError, "seed: expected an int"),
        (lambda: op.fills.patch_mean(over_channels=1), InputTypeError, "over_channels"),
        (lambda: op.fills.image_mean(over_channels="no"), InputTypeError, "over_channels"),
    ],
)
def test_bad_fill_arguments(make: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        make()  # type: ignore[operator]


def test_region_fill_refuses_bad_masks_and_refine() -> None:
    fill = op.fills.patch_mean()
    with pytest.raises(InputTypeError, match="expected a bool mask"):
        fill(IMAGES, torch.ones(1, 12, 12))
    with pytest.raises(InputValueError, match="expected masks of shape"):
        fill(IMAGES, torch.ones(1, 11, 12, dtype=torch.bool))
    model = MODEL
    with pytest.raises(InputValueError, match=r"region-aware fills .* cannot be combined"):
        op.sweep(
            model, IMAGES, op.sliding_windows(12, 12, 4, 2), fills=fill, progress=False,
            refine=op.Refine(coarse_stride=4),
        )  # fmt: skip


class _BadFill(op.fills.RegionFill):
    """A region-aware fill that returns NaN, or a tensor of the wrong shape."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    @property
    def label(self) -> str:
        return f"bad({self.kind})"

    def __call__(self, images: Tensor, masks: Tensor) -> Tensor:
        if self.kind == "nan":
            return torch.full_like(images, float("nan"))
        return images[:, :1, :4]


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("nan", r"region-aware fill 'bad\(nan\)' returned NaN or inf"),
        ("shape", r"region-aware fill 'bad\(shape\)' returned shape \(2, 1, 4"),
    ],
)
def test_region_fill_returning_bad_values_is_refused(kind: str, message: str) -> None:
    with pytest.raises(InputValueError, match=message):
        op.sweep(
            MODEL, IMAGES[:2], op.grid(12, 12, 2, 2), fills=_BadFill(kind), progress=False,
            engine="dense",
        )  # fmt: skip


def test_translated_masks_share_one_factorisation() -> None:
    fill = op.fills.linear_imputation(noise=0.0)
    fill.regions(IMAGES, op.grid(12, 12, 4, 4).masks)
    # Corners (4), edge cells (one per side: 4) and the inner cells (1) differ.
    assert len(fill._factors) == 9
    # 3x3 windows at stride 1 are translated grid cells: nothing new to factorise.
    fill.regions(IMAGES, op.sliding_windows(12, 12, window=3, stride=1).masks)
    assert len(fill._factors) == 9
    fill.regions(IMAGES, op.sliding_windows(12, 12, window=4, stride=1).masks)
    assert len(fill._factors) == 9 + 9
    empty = torch.zeros(1, 12, 12, dtype=torch.bool)
    assert torch.equal(fill(IMAGES, empty), IMAGES)


def test_kept_systems_are_bounded_by_nonzeros_and_factorised_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import occlusion_probe.imputation as imputation

    calls: list[int] = []
    splu = scipy.sparse.linalg.splu

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return splu(*args, **kwargs)

    monkeypatch.setattr(scipy.sparse.linalg, "splu", counted)
    generator = torch.Generator().manual_seed(5)
    masks = torch.unique(torch.rand(420, 12, 12, generator=generator) < 0.3, dim=0)[:400]
    assert masks.shape[0] == 400  # distinct masks
    fill = op.fills.linear_imputation(noise=0.0)
    first = fill.regions(IMAGES, masks)
    made = len(calls)
    assert 0 < made <= 400 and len(fill._systems) == 400
    again = fill.regions(IMAGES, masks)
    assert len(calls) == made  # every system was kept: nothing factorised twice
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    # A smaller budget of nonzeros keeps fewer systems (the newest), with equal values.
    budget = fill._systems.nonzeros // 4
    monkeypatch.setattr(imputation, "_KEPT_NONZEROS", budget)
    small = op.fills.linear_imputation(noise=0.0)
    values = small.regions(IMAGES, masks)
    assert 1 <= len(small._systems) < 400 and small._systems.nonzeros <= budget
    assert small._factors.nonzeros <= budget
    assert all(torch.equal(a, b) for a, b in zip(first, values, strict=True))


def test_checkpointed_sweep_with_region_fills_resumes_equal(tmp_path: Path) -> None:
    regions = op.grid(12, 12, 2, 2)
    fills = [op.fills.linear_imputation(noise=0.02), op.fills.blur(1.5)]
    path = tmp_path / "run"
    first = op.sweep(MODEL, IMAGES, regions, fills=fills, checkpoint=path, progress=False)
    again = op.sweep(
        MODEL,
        IMAGES,
        regions,
        fills=[op.fills.linear_imputation(noise=0.02), op.fills.blur(1.5)],
        checkpoint=path,
        progress=False,
    )
    assert torch.equal(first.occluded, again.occluded)
    with pytest.raises(InputValueError, match="fills"):
        op.sweep(
            MODEL, IMAGES, regions, fills=[op.fills.linear_imputation(noise=0.03)],
            checkpoint=path, progress=False,
        )  # fmt: skip


@pytest.mark.parametrize(
    "make",
    [
        lambda batch: torch.tensor(0.25),  # 0-d: one value for every pixel
        lambda batch: torch.full(batch.shape[-2:], 0.25),  # (H, W): no batch or channel axis
        lambda batch: torch.full((1, 1), 0.25),  # fewer axes than the batch, broadcastable
    ],
    ids=["0-d", "spatial", "two-axes"],
)
def test_fills_of_fewer_axes_broadcast_like_the_number(make: object) -> None:
    regions = op.grid(12, 12, 2, 2)
    labels = torch.tensor([0, 1, 2])
    want = op.sweep(MODEL, IMAGES, regions, fills=0.25, engine="dense", progress=False)
    got = op.sweep(MODEL, IMAGES, regions, fills=[make], engine="dense", progress=False)
    torch.testing.assert_close(got.occluded, want.occluded, rtol=0, atol=0)
    tensor = op.sweep(MODEL, IMAGES, regions, fills=[torch.full((12, 12), 0.25)], progress=False)
    torch.testing.assert_close(tensor.occluded, want.occluded, rtol=0, atol=1e-6)
    curve = op.perturbation_curve(MODEL, IMAGES, regions, [1, 2, 3, 4], labels=labels, fill=make, progress=False)  # fmt: skip
    plain = op.perturbation_curve(MODEL, IMAGES, regions, [1, 2, 3, 4], labels=labels, fill=0.25, progress=False)  # fmt: skip
    assert torch.equal(curve.accuracy, plain.accuracy)
    report = op.keep_only(MODEL, IMAGES, labels, regions, keep=[1], fill=make, progress=False)
    plain_report = op.keep_only(MODEL, IMAGES, labels, regions, keep=[1], fill=0.25, progress=False)
    assert torch.equal(report.confusion, plain_report.confusion)
