"""The incremental engine equals the dense evaluation, for any qualifying model and regions."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from occlusion_probe.engines.incremental import run_incremental, unsupported_reason

ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.ReLU6,
    nn.Identity,
)


def reference(model: nn.Module, images: Tensor, fill_images: Tensor, masks: Tensor) -> Tensor:
    """(n, R, V, K) by the definition: one plain forward per occluded image."""
    n, regions, fills = images.shape[0], masks.shape[0], fill_images.shape[0]
    rows = [
        model(torch.where(masks[r], fill_images[v, i], images[i])[None])[0]
        for i in range(n)
        for r in range(regions)
        for v in range(fills)
    ]
    return torch.stack(rows).reshape(n, regions, fills, -1)


def assert_matches_dense(
    model: nn.Module,
    images: Tensor,
    fill_images: Tensor,
    masks: Tensor,
    batch_size: int,
    dense_fraction: float = 0.6,
) -> None:
    model.eval()
    with torch.inference_mode():
        expected = reference(model, images, fill_images, masks)
        got = run_incremental(
            model, images, fill_images, masks, batch_size, dense_fraction=dense_fraction
        )
    # equal_nan: a pooling window over padding alone gives -inf, and NaN downstream, in both.
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, equal_nan=True)


def grid_masks(height: int, width: int, row_cuts: list[int], col_cuts: list[int]) -> Tensor:
    """Masks (R, H, W) of the cells between sorted cut positions (cells of uneven sizes)."""
    rows = [0, *row_cuts, height]
    cols = [0, *col_cuts, width]
    masks = []
    for top, bottom in itertools.pairwise(rows):
        for left, right in itertools.pairwise(cols):
            mask = torch.zeros(height, width, dtype=torch.bool)
            mask[top:bottom, left:right] = True
            masks.append(mask)
    return torch.stack(masks)


def label_masks(labels: Tensor) -> Tensor:
    """Masks (R, H, W), one per label present in an integer map (H, W)."""
    return torch.stack([labels == value for value in torch.unique(labels)])


def window_masks(height: int, width: int, window: int, stride: int) -> Tensor:
    """Overlapping square sliding windows (R, H, W)."""
    masks = []
    for top in range(0, max(1, height - window + 1), stride):
        for left in range(0, max(1, width - window + 1), stride):
            mask = torch.zeros(height, width, dtype=torch.bool)
            mask[top : top + window, left : left + window] = True
            masks.append(mask)
    return torch.stack(masks)


def constant_fills(values: list[float], n: int, shape: tuple[int, int, int]) -> Tensor:
    """Constant fill images as an expanded view (V, n, C, H, W) with stride 0."""
    return torch.tensor(values)[:, None, None, None, None].expand(len(values), n, *shape)


def paper_cnn() -> nn.Sequential:
    """The CNN of Nishime et al. for 1x48x48 faces and 7 classes."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4608, 1024),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(1024, 7),
    )


def randomise_batch_norm(model: nn.Module, generator: torch.Generator) -> None:
    """Give every batch norm non-trivial running statistics and affine parameters."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            size = module.num_features
            with torch.no_grad():
                assert module.running_mean is not None
                assert module.running_var is not None
                module.running_mean.copy_(torch.randn(size, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
                module.weight.copy_(torch.randn(size, generator=generator))
                module.bias.copy_(torch.randn(size, generator=generator))


# ----------------------------------------------------------------------------- fixed models


def test_paper_cnn_grid_constant_fills() -> None:
    torch.manual_seed(0)
    model = paper_cnn()
    images = torch.randn(1, 1, 48, 48)
    fills = constant_fills([0.0, 0.4, 1.0], 1, (1, 48, 48))
    masks = grid_masks(48, 48, [12, 24, 36], [12, 24, 36])
    assert unsupported_reason(model, (1, 48, 48)) is None
    assert_matches_dense(model, images, fills, masks, batch_size=40)


def test_paper_cnn_image_fills_tiny_batches_and_keep_only_masks() -> None:
    torch.manual_seed(1)
    model = paper_cnn()
    images = torch.randn(2, 1, 48, 48)
    fills = torch.randn(1, 2, 1, 48, 48)
    cells = grid_masks(48, 48, [12, 24, 36], [12, 24, 36])
    # Keep-only masks cover nearly the whole image: the engine falls back to full maps.
    keep_only = torch.stack(
        [~(cells[5] | cells[6] | cells[9] | cells[10]), ~(cells[9] | cells[10])]
    )
    masks = torch.cat([cells[::5], keep_only])
    assert_matches_dense(model, images, fills, masks, batch_size=3)


def test_vgg_style_with_same_padding_batch_norm_and_adaptive_pool() -> None:
    torch.manual_seed(2)
    generator = torch.Generator().manual_seed(2)
    model = nn.Sequential(
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding="same"),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 8, 4, padding="same", dilation=2, bias=False),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ),
        nn.Sequential(
            nn.Conv2d(8, 12, 3, padding=1, groups=4),
            nn.GELU(),
            nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
            nn.Conv2d(12, 12, 3, padding="valid"),
            nn.Dropout2d(0.2),
        ),
        nn.AdaptiveAvgPool2d((3, None)),
        nn.Flatten(),
        nn.Linear(252, 16),
        nn.BatchNorm1d(16),
        nn.SiLU(),
        nn.Linear(16, 5),
        nn.LogSoftmax(dim=1),
    )
    randomise_batch_norm(model, generator)
    assert unsupported_reason(model, (3, 32, 36)) is None
    images = torch.randn(1, 3, 32, 36)
    fills = torch.cat([constant_fills([0.0], 1, (3, 32, 36)), torch.randn(1, 1, 3, 32, 36)])
    masks = torch.cat([grid_masks(32, 36, [5, 19], [9, 10, 21]), window_masks(32, 36, 7, 6)])
    assert_matches_dense(model, images, fills, masks, batch_size=40)


def test_empty_and_unread_regions_give_the_unoccluded_output() -> None:
    torch.manual_seed(3)
    # A 1x1 convolution with stride 2 never reads odd rows or columns.
    model = nn.Sequential(nn.Conv2d(1, 4, 1, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3))
    images = torch.randn(3, 1, 16, 16)
    masks = torch.zeros(3, 16, 16, dtype=torch.bool)
    masks[1, 3, 5] = True
    masks[2, 4:6, 4:6] = True
    fills = constant_fills([5.0, -5.0], 3, (1, 16, 16))
    model.eval()
    with torch.inference_mode():
        got = run_incremental(model, images, fills, masks, batch_size=8)
        baseline = model(images)
    torch.testing.assert_close(got[:, 0], baseline[:, None].expand(3, 2, 3))
    torch.testing.assert_close(got[:, 1], baseline[:, None].expand(3, 2, 3))
    assert_matches_dense(model, images, fills, masks, batch_size=8)


def test_more_fills_than_batch_size_and_broadcast_fill_shape() -> None:
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.MaxPool2d(3, 2, 1), nn.Flatten()
    )
    model.append(nn.Linear(4 * 6 * 6, 3))
    images = torch.randn(2, 2, 12, 12)
    fills = torch.linspace(-1, 1, 5)[:, None, None, None, None]  # (V, 1, 1, 1, 1)
    masks = grid_masks(12, 12, [4, 9], [7])
    assert_matches_dense(model, images, fills.expand(5, 2, 2, 12, 12), masks, batch_size=2)
    model.eval()
    with torch.inference_mode():
        broadcast = run_incremental(model, images, fills, masks, batch_size=2)
        expanded = run_incremental(model, images, fills.expand(5, 2, 2, 12, 12), masks, 2)
    torch.testing.assert_close(broadcast, expanded)


def test_in_place_first_layer_leaves_the_images_alone() -> None:
    torch.manual_seed(6)
    model = nn.Sequential(
        nn.ReLU(inplace=True), nn.Conv2d(1, 3, 3), nn.ReLU(inplace=True), nn.Flatten()
    )
    model.append(nn.ReLU(inplace=True))
    model.append(nn.Linear(3 * 8 * 8, 2))
    images = torch.randn(2, 1, 10, 10)
    before = images.clone()
    masks = grid_masks(10, 10, [5], [3])
    assert_matches_dense(model, images.clone(), constant_fills([-1.0], 2, (1, 10, 10)), masks, 4)
    with torch.inference_mode():
        run_incremental(model, images, constant_fills([-1.0], 2, (1, 10, 10)), masks, 4)
    torch.testing.assert_close(images, before, rtol=0, atol=0)


def test_no_regions_or_no_images_give_empty_outputs() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).eval()
    with torch.inference_mode():
        none = run_incremental(
            model,
            torch.randn(2, 1, 6, 6),
            torch.zeros(1, 2, 1, 6, 6),
            torch.zeros(0, 6, 6).bool(),
            4,
        )
        no_images = run_incremental(
            model,
            torch.randn(0, 1, 6, 6),
            torch.zeros(1, 0, 1, 6, 6),
            torch.ones(2, 6, 6).bool(),
            4,
        )
    assert none.shape == (2, 0, 1, 3)
    assert no_images.shape == (0, 2, 1, 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_dense() -> None:
    torch.manual_seed(5)
    model = paper_cnn().cuda()
    images = torch.randn(3, 1, 48, 48, device="cuda")
    fills = constant_fills([0.0, 0.5, 1.0], 3, (1, 48, 48)).cuda()
    masks = torch.cat([grid_masks(48, 48, [12, 24, 36], [12, 24, 36]), window_masks(48, 48, 10, 7)])
    assert_matches_dense(model, images, fills, masks.cuda(), batch_size=50)


# ----------------------------------------------------------------------------- random models


@st.composite
def random_case(draw: st.DrawFn) -> tuple[nn.Module, Tensor, Tensor, Tensor, int, float]:
    """A random qualifying conv net with random images, fills, regions and batch size."""
    seed = draw(st.integers(0, 2**16))
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    channels = draw(st.integers(1, 3))
    height, width = draw(st.integers(8, 32)), draw(st.integers(8, 32))
    layers: list[nn.Module] = []
    c, h, w = channels, height, width
    for _ in range(draw(st.integers(1, 3))):
        kernel = draw(st.integers(1, 5))
        stride = draw(st.integers(1, 3))
        padding = draw(st.integers(0, 2))
        dilation = draw(st.integers(1, 2))
        groups = draw(st.sampled_from([g for g in (1, 2, 3) if c % g == 0]))
        out_channels = groups * draw(st.integers(1, 3))
        span = dilation * (kernel - 1) + 1
        out_h, out_w = (
            (h + 2 * padding - span) // stride + 1,
            (w + 2 * padding - span) // stride + 1,
        )
        if out_h < 1 or out_w < 1:
            continue
        layers.append(nn.Conv2d(c, out_channels, kernel, stride, padding, dilation, groups))
        c, h, w = out_channels, out_h, out_w
        if draw(st.booleans()):
            layers.append(nn.BatchNorm2d(c))
        layers.append(draw(st.sampled_from(ACTIVATIONS))())
        if draw(st.booleans()):
            pool_kernel = draw(st.integers(1, 3))
            pool_stride = draw(st.integers(1, 3))
            pool_padding = draw(st.integers(0, pool_kernel // 2))
            is_max = draw(st.booleans())
            # Only max pooling has a dilation.
            pool_dilation = draw(st.integers(1, 2)) if is_max else 1
            pool_span = pool_dilation * (pool_kernel - 1) + 1
            pool_h = (h + 2 * pool_padding - pool_span) // pool_stride + 1
            pool_w = (w + 2 * pool_padding - pool_span) // pool_stride + 1
            if pool_h >= 1 and pool_w >= 1:
                if is_max:
                    layers.append(
                        nn.MaxPool2d(pool_kernel, pool_stride, pool_padding, pool_dilation)
                    )
                else:
                    include_pad = draw(st.booleans())
                    layers.append(
                        nn.AvgPool2d(pool_kernel, pool_stride, pool_padding, False, include_pad)
                    )
                h, w = pool_h, pool_w
    if not layers:
        layers.append(nn.Identity())
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * h * w, 6), nn.ReLU())
    model.append(nn.Linear(6, 4))
    randomise_batch_norm(model, generator)

    n = draw(st.integers(1, 2))
    images = torch.randn(n, channels, height, width, generator=generator)
    kind = draw(st.sampled_from(["grid", "labels", "windows"]))
    if kind == "grid":
        row_cuts = sorted(draw(st.sets(st.integers(1, height - 1), max_size=3)))
        col_cuts = sorted(draw(st.sets(st.integers(1, width - 1), max_size=3)))
        masks = grid_masks(height, width, row_cuts, col_cuts)
    elif kind == "labels":
        # Blocky labels (superpixel-like, often non-convex), a few scattered pixels changed.
        coarse = torch.randint(0, 4, (height // 4 + 1, width // 4 + 1), generator=generator)
        labels = coarse.repeat_interleave(4, 0).repeat_interleave(4, 1)[:height, :width].clone()
        noise = torch.rand(height, width, generator=generator) < 0.05
        labels[noise] = 4
        masks = label_masks(labels)
    else:
        window = draw(st.integers(1, min(height, width)))
        masks = window_masks(
            height, width, window, draw(st.integers(max(3, window // 2), max(window // 2, 9)))
        )
    if draw(st.booleans()):
        fills = constant_fills(
            draw(st.lists(st.floats(-2, 2), min_size=1, max_size=3)), n, (channels, height, width)
        )
    else:
        fills = torch.randn(
            draw(st.integers(1, 2)), n, channels, height, width, generator=generator
        )
    batch_size = draw(st.sampled_from([1, 2, 5, 16, 256]))
    # 0 and 1 force full maps right away and patches all the way, the default mixes them.
    dense_fraction = draw(st.sampled_from([0.0, 0.6, 0.6, 1.0]))
    return model, images, fills, masks, batch_size, dense_fraction


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(random_case())
def test_random_models_match_dense(
    case: tuple[nn.Module, Tensor, Tensor, Tensor, int, float],
) -> None:
    model, images, fills, masks, batch_size, dense_fraction = case
    _, channels, height, width = images.shape
    assert unsupported_reason(model, (channels, height, width)) is None
    assert_matches_dense(model, images, fills, masks, batch_size, dense_fraction)


# ----------------------------------------------------------------------------- qualification


class Scale(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return 2 * x


class TwoPath(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.other = nn.Conv2d(1, 2, 3)
        self.head = nn.Linear(2 * 6 * 6, 3)

    def forward(self, x: Tensor) -> Tensor:
        output: Tensor = self.head((self.conv(x) + self.other(x)).flatten(1))
        return output


class MySequential(nn.Sequential):
    """A Sequential whose forward does more than run its layers."""

    def forward(self, x: Tensor) -> Tensor:
        output: Tensor = super().forward(x) * 2
        return output


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (
            nn.Sequential(Scale(), nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(72, 3)),
            "layer 0 (Scale)",
        ),
        (TwoPath(), "step conv: the result of step x is also used elsewhere"),
        (
            MySequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(72, 3)),
            "model (MySequential).forward, step mul",
        ),
        (nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), "layer 0 (Flatten) comes first"),
        (nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), "no Flatten"),
        (
            nn.Sequential(
                nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(32, 3)
            ),
            "layer 1 (AdaptiveAvgPool2d)",
        ),
        (
            nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"), nn.Flatten()),
            "padding_mode='reflect'",
        ),
        (
            nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2, ceil_mode=True), nn.Flatten()),
            "layer 1 (MaxPool2d) uses ceil_mode=True",
        ),
        (
            nn.Sequential(
                nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False), nn.Flatten()
            ),
            "layer 1 (BatchNorm2d) has track_running_stats=False",
        ),
        (
            nn.Sequential(
                nn.Sequential(nn.Conv2d(1, 2, 3), nn.Upsample(scale_factor=2)), nn.Flatten()
            ),
            "layer 0.1 (Upsample)",
        ),
        (
            nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(72, 3), Scale()),
            "layer 3 (Scale) is not a supported layer after the Flatten",
        ),
        (
            nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten()),
            "expects 3 input channels but receives 1",
        ),
        (
            nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(50, 3)),
            "expects 50 features but receives 72",
        ),
    ],
)
def test_unsupported_models_name_the_layer(model: nn.Module, expected: str) -> None:
    reason = unsupported_reason(model, (1, 8, 8))
    assert reason is not None
    assert expected in reason


def test_qualifying_models() -> None:
    assert unsupported_reason(paper_cnn(), (1, 48, 48)) is None
    nested = nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()),
        nn.AdaptiveMaxPool2d((3, None)),
        nn.Flatten(),
        nn.Linear(2 * 3 * 6, 3),
    )
    assert unsupported_reason(nested, (1, 8, 8)) is None


def test_run_incremental_rejects_bad_arguments() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(72, 3)).eval()
    images = torch.randn(2, 1, 8, 8)
    fills = torch.zeros(1, 2, 1, 8, 8)
    masks = torch.ones(1, 8, 8, dtype=torch.bool)
    with pytest.raises(ValueError, match="masks"):
        run_incremental(model, images, fills, masks.float(), 4)
    with pytest.raises(ValueError, match="fill_images"):
        run_incremental(model, images, torch.zeros(1, 3, 1, 8, 8), masks, 4)
    with pytest.raises(ValueError, match="batch_size"):
        run_incremental(model, images, fills, masks, 0)
    with pytest.raises(ValueError, match="images"):
        run_incremental(model, images[0], fills, masks, 4)
    with pytest.raises(ValueError, match="dense_fraction"):
        run_incremental(model, images, fills, masks, 4, dense_fraction=1.5)
    with pytest.raises(ValueError, match="eval mode"):
        run_incremental(model.train(), images, fills, masks, 4)
    with pytest.raises(ValueError, match=r"layer 0 \(Scale\)"):
        run_incremental(nn.Sequential(Scale(), nn.Flatten()).eval(), images, fills, masks, 4)
    with pytest.raises(ValueError, match="image_shape"):
        unsupported_reason(model, (1, 8))  # type: ignore[arg-type]
