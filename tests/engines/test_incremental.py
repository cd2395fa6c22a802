"""The incremental engine equals the dense engine (and a plain loop) on DAGs and on the
architectures users run; what it cannot honour (hooks, unreadable models) falls back."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference_models import (
    ConvNeXt,
    DenseNet,
    MobileNetV2,
    ResNet18,
    VisionTransformer,
    grid_masks,
    randomize_batch_norms,
    reference_sweep,
    small_cnn,
    vgg_max_pooled,
)
from torch import Tensor, nn
from torch.nn import functional as F

import occlusion_probe as op
from occlusion_probe import InputValueError
from occlusion_probe.engines.auto import ReadingRates, assumed_rates
from occlusion_probe.engines.incremental import MIN_BOUND, IncrementalEngine


def assert_engines_agree(model: nn.Module, images: Tensor, regions: op.Regions) -> op.SweepResult:
    dense = op.sweep(model, images, regions, engine="dense", progress=False)
    fast = op.sweep(model, images, regions, engine="incremental", progress=False)
    assert fast.engine == "incremental"
    torch.testing.assert_close(fast.baseline, dense.baseline, rtol=0, atol=1e-5)
    torch.testing.assert_close(fast.occluded, dense.occluded, rtol=0, atol=1e-5)
    return fast


@pytest.mark.parametrize(
    "make",
    [
        lambda: ResNet18(width=4),
        MobileNetV2,
        DenseNet,
        ConvNeXt,
        lambda: randomize_batch_norms(vgg_max_pooled()),
        lambda: VisionTransformer(image=64),
    ],
    ids=["resnet18", "mobilenetv2", "densenet", "convnext", "vgg-max-pooled", "vit"],
)
def test_reference_architectures_equal_dense(make: object) -> None:
    model = make()  # type: ignore[operator]
    images = torch.rand(2, 3, 64, 64)
    result = assert_engines_agree(model, images, op.grid(64, 64, rows=4, cols=4))
    assert "incremental engine (torch.export graph)" in result.engine_note
    assert "FLOP bound" in result.engine_note


def test_vision_transformer_ends_the_incremental_part_at_its_tokens() -> None:
    # Attention mixes every token, so a ViT's incremental part is its patch embedding: the
    # engine switches to whole maps where the map becomes tokens, its plan saves too little
    # memory traffic, and "auto" runs dense on a sweep large enough to read the model.
    model = VisionTransformer()
    regions = op.grid(32, 32, rows=8, cols=8)
    engine = IncrementalEngine.prepare(
        model, (3, 32, 32), regions.masks, torch.float32, torch.device("cpu")
    )
    assert isinstance(engine, IncrementalEngine)
    assert engine.switch_points == ["reshape"]  # flatten(2): (n, C, h, w) -> (n, C, h * w)
    assert engine.bound < MIN_BOUND
    images = torch.rand(16, 3, 32, 32)
    fills = [0.0, 0.5]  # 16 x 64 x 2 = 2,048 occluded images: enough to read the model
    result = op.sweep(model, images, regions, fills, progress=False)
    assert result.engine == "dense"
    assert "its plan saves too little" in result.engine_note
    expected = reference_sweep(model, images[:2], regions.masks, fills)
    torch.testing.assert_close(result.occluded[:2], expected, rtol=0, atol=1e-5)


def test_resnet_equals_plain_loop() -> None:
    model = ResNet18(width=4).eval()
    images = torch.rand(1, 3, 32, 32)
    regions = op.grid(32, 32, rows=2, cols=2)
    fills = [0.0, 0.5]
    result = op.sweep(model, images, regions, fills, engine="incremental", progress=False)
    expected = reference_sweep(model, images, regions.masks, fills)
    torch.testing.assert_close(result.occluded, expected, rtol=0, atol=1e-5)


def test_sliding_windows_and_label_maps() -> None:
    model = ResNet18(width=4)
    images = torch.rand(2, 3, 32, 32)
    assert_engines_agree(model, images, op.sliding_windows(32, 32, window=8, stride=6))
    labels = torch.randint(0, 5, (32, 32))
    assert_engines_agree(model, images, op.Regions.from_label_map(labels))


_CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_NORMS = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_MAX_POOLS = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOLS = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


class _RandomNet(nn.Module):
    """A random DAG of the ops the engine follows, at spatial rank 1, 2 or 3: convs of any
    geometry and padding mode, pools with ceil_mode and padding, residual adds, channel
    concatenations (of inputs changed on equal or on different boxes), products."""

    def __init__(
        self, spec: list[tuple[str, int, int, int, int, str]], channels: int, rank: int = 2
    ) -> None:
        super().__init__()
        self.spec = spec
        self.rank = rank
        self.layers = nn.ModuleList()
        conv = _CONVS[rank]
        c = channels
        for kind, kernel, stride, dilation, groups, mode in spec:
            if kind == "conv":
                g = groups if c % groups == 0 else 1
                self.layers.append(
                    conv(
                        c,
                        c,
                        kernel,
                        stride,
                        dilation * (kernel // 2),
                        dilation,
                        g,
                        padding_mode=mode,
                    )
                )
            elif kind == "bn":
                self.layers.append(_NORMS[rank](c))
            elif kind in ("residual", "product"):
                self.layers.append(conv(c, c, kernel, 1, kernel // 2, groups=c))
            elif kind == "concat":
                self.layers.append(conv(c, c, 1))
            elif kind == "dense":
                self.layers.append(conv(c, 1, kernel, 1, kernel // 2))
            else:
                self.layers.append(nn.Identity())
        self.fc = nn.Linear(c, 3)
        randomize_batch_norms(self)

    def forward(self, x: Tensor) -> Tensor:
        for layer, (kind, kernel, stride, _dilation, _groups, mode) in zip(
            self.layers, self.spec, strict=True
        ):
            if kind in ("conv", "bn"):
                x = torch.relu(layer(x)) if kind == "conv" else layer(x)
            elif kind == "residual":
                x = x + torch.tanh(layer(x))
            elif kind == "product":
                x = x * torch.sigmoid(layer(x))
            elif kind == "concat":
                half = x.shape[1] // 2 or 1
                x = torch.cat([x[:, :half], layer(x)[:, half:]], 1)
            elif kind == "dense":
                # DenseNet's running concatenation: the new map's box is larger than the
                # old maps' (built in the cache's window); the oldest channel is dropped.
                x = torch.cat([x, layer(x)], 1)[:, 1:]
            elif kind == "maxpool":
                x = _MAX_POOLS[self.rank](x, kernel, stride, kernel // 2, ceil_mode=mode == "ceil")
            else:
                x = _AVG_POOLS[self.rank](
                    x,
                    kernel,
                    stride,
                    kernel // 2,
                    ceil_mode=mode == "ceil",
                    count_include_pad=mode == "zeros",
                )
        return self.fc(x.mean(tuple(range(2, x.dim()))))


_layer = st.tuples(
    st.sampled_from(
        ["conv", "conv", "bn", "residual", "product", "concat", "dense", "maxpool", "avgpool"]
    ),
    st.sampled_from([1, 3, 5]),
    st.sampled_from([1, 2]),
    st.sampled_from([1, 2]),
    st.sampled_from([1, 2, 4]),
    st.sampled_from(["zeros", "reflect", "replicate", "circular", "ceil"]),
).map(
    lambda t: (t[0], t[1], t[2], t[3], t[4], "zeros" if t[0] == "conv" and t[5] == "ceil" else t[5])
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=st.lists(_layer, min_size=1, max_size=6), size=st.sampled_from([12, 17]))
def test_random_dags_equal_dense(
    spec: list[tuple[str, int, int, int, int, str]], size: int
) -> None:
    kept = _kept_layers(spec, size)
    torch.manual_seed(len(kept))
    model = _RandomNet(kept, 4)
    images = torch.rand(2, 4, size, size)
    assert_engines_agree(model, images, op.grid(size, size, rows=3, cols=3))


def _kept_layers(
    spec: list[tuple[str, int, int, int, int, str]], size: int
) -> list[tuple[str, int, int, int, int, str]]:
    """`spec` with maps kept large enough for every kernel: at most two strided ops, reflect
    or circular padding only where it is smaller than the map, and pooling kernels no larger
    than the map (torch refuses them otherwise, in the model's own forward too)."""
    strided, side = 0, size
    kept = []
    for layer in spec:
        if layer[2] == 2 and layer[0] in ("conv", "maxpool", "avgpool"):
            strided += 1
            if strided > 2:
                layer = (layer[0], layer[1], 1, *layer[3:])
        kind, kernel, stride, dilation, _, mode = layer
        if kind == "conv" and mode in ("reflect", "circular") and dilation * (kernel // 2) >= side:
            layer = (*layer[:5], "zeros")
        if kind in ("maxpool", "avgpool") and kernel > side:
            layer = (kind, max(k for k in (1, 3, 5) if k <= side), *layer[2:])
        if kind in ("conv", "maxpool", "avgpool") and stride == 2:
            side = (side + 1) // 2
        kept.append(layer)
    return kept


def assert_engines_agree_at_rank(
    model: nn.Module, images: Tensor, masks: Tensor, fills: list[float]
) -> IncrementalEngine:
    """The incremental and the dense engine, run on (n, C, *spatial) images and (R, *spatial)
    masks, equal the model's own forward on every occluded image to 1e-5 (softmax)."""
    from occlusion_probe.engines.dense import run_dense

    model.eval()
    engine = IncrementalEngine.prepare(
        model, tuple(images.shape[1:]), masks, torch.float32, images.device
    )
    assert isinstance(engine, IncrementalEngine), engine
    fill_images = torch.tensor(fills).reshape(-1, *(1,) * images.dim())
    clean, occluded = engine.run(images, fill_images, masks, 24, lambda raw: torch.softmax(raw, 1))
    expected = reference_sweep(model, images, masks, fills)
    torch.testing.assert_close(occluded, expected, rtol=0, atol=1e-5)
    with torch.inference_mode():
        own = torch.softmax(model(images), 1)
        _, dense = run_dense(
            lambda batch: torch.softmax(model(batch), 1),
            images,
            fill_images,
            masks,
            16,
            own.shape[1],
        )
    torch.testing.assert_close(clean, own, rtol=0, atol=1e-5)
    torch.testing.assert_close(dense, expected, rtol=0, atol=1e-5)
    return engine


@pytest.mark.parametrize(
    ("rank", "sizes", "cells"), [(1, [24, 33], (5,)), (3, [8, 11], (2, 2, 2))], ids=["1d", "3d"]
)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=st.lists(_layer, min_size=1, max_size=5), pick=st.integers(0, 1))
def test_random_dags_equal_dense_at_ranks_1_and_3(
    rank: int,
    sizes: list[int],
    cells: tuple[int, ...],
    spec: list[tuple[str, int, int, int, int, str]],
    pick: int,
) -> None:
    # The 2D random DAGs at 1 and 3 spatial axes (conv1d / conv3d, 1D / 3D pools, batch
    # norm, residual adds, products and channel cats), a grid of cells on every axis.
    size = sizes[pick]
    kept = _kept_layers(spec, size)
    torch.manual_seed(len(kept))
    model = _RandomNet(kept, 4, rank)
    images = torch.rand(2, 4, *(size,) * rank)
    engine = assert_engines_agree_at_rank(
        model, images, grid_masks((size,) * rank, cells), [0.0, 0.7]
    )
    assert all(len(box) == 2 * rank for box in engine.boxes if box is not None)


class _EveryOp(nn.Module):
    """Every op kind the engine follows, at spatial rank 1 or 3: strided, dilated, grouped
    and 'same' convs with zeros, reflect, circular and replicate padding, a 1x1 conv, eval
    batch norm, pointwise ops, residual add, product, channel cat, max pooling with
    ceil_mode, average pooling without the padding counted, constant and reflect pads; then
    the ops that end the incremental part (adaptive average and max pools, flatten, linear).
    """

    def __init__(self, rank: int) -> None:
        super().__init__()
        torch.manual_seed(rank)
        conv = _CONVS[rank]
        self.rank = rank
        self.a = conv(2, 4, 3, stride=2, padding=1)
        self.b = conv(4, 4, 3, padding=2, dilation=2, groups=2, padding_mode="reflect")
        self.c = conv(4, 4, 3, padding="same", padding_mode="circular")
        self.d = conv(4, 4, 1)
        self.e = conv(8, 4, 3, padding=1, padding_mode="replicate")
        self.bn = _NORMS[rank](4)
        self.fc = nn.Linear(4 * 2**rank + 4, 3)
        randomize_batch_norms(self)

    def forward(self, x: Tensor) -> Tensor:
        pools = {1: F.adaptive_avg_pool1d, 3: F.adaptive_avg_pool3d}
        max_pools = {1: F.adaptive_max_pool1d, 3: F.adaptive_max_pool3d}
        x = torch.relu(self.bn(self.a(x)))
        x = x + torch.sigmoid(self.b(x))
        x = x * torch.tanh(self.c(x))
        x = torch.cat([x, self.d(x)], 1)
        x = _MAX_POOLS[self.rank](x, 3, 1, 1, ceil_mode=True)
        x = _AVG_POOLS[self.rank](x, 3, 1, 1, count_include_pad=False)
        x = F.pad(F.pad(x, [1, 1] * self.rank), [1, 2] * self.rank, mode="reflect")
        x = torch.nn.functional.gelu(self.e(x))
        whole = torch.cat(
            [pools[self.rank](x, 2).flatten(1), max_pools[self.rank](x, 1).flatten(1)], 1
        )
        return self.fc(whole)


@pytest.mark.parametrize("indexed", [False, True], ids=["strided", "indexed"])
@pytest.mark.parametrize(("rank", "size"), [(1, 40), (3, 10)], ids=["1d", "3d"])
def test_every_op_kind_at_ranks_1_and_3_equals_dense(
    monkeypatch: pytest.MonkeyPatch, rank: int, size: int, indexed: bool
) -> None:
    # Both window paths: strided copies per lattice block (the CPU's), and the indexed
    # gathers, writes and scatters accelerators use.
    from reference_models import window_masks

    from occlusion_probe.engines import incremental

    monkeypatch.setattr(incremental, "INDEXED_WINDOWS_ON_CPU", indexed)
    model = _EveryOp(rank).eval()
    images = torch.rand(2, 2, *(size,) * rank)
    masks = window_masks((size,) * rank, 4 if rank == 3 else 8, 3 if rank == 3 else 4)
    masks[1] = False  # an empty region: the unoccluded outputs
    engine = assert_engines_agree_at_rank(model, images, masks, [0.0, 0.5])
    assert f"adaptive_avg_pool{rank}d" in engine.switch_points
    assert engine.flop_bound > 1


def test_sweeps_of_signals_and_volumes_run_the_incremental_engine() -> None:
    # op.sweep at ranks 1 and 3: forced and under "auto" (once the engine is kept), equal
    # to the dense engine.
    from reference_models import EcgResNet

    ecg = EcgResNet(length=256).eval()
    signals = torch.rand(2, 12, 256, generator=torch.Generator().manual_seed(4))
    windows = op.sliding_windows((256,), 32, 32)
    assert_engines_agree(ecg, signals, windows)
    auto = op.sweep(ecg, signals, windows, progress=False)
    assert auto.engine == "incremental" and "kept from an earlier sweep" in auto.engine_note
    volumes = torch.rand(1, 2, 10, 10, 10, generator=torch.Generator().manual_seed(5))
    assert_engines_agree(_EveryOp(3).eval(), volumes, op.grid((10, 10, 10), (2, 2, 1)))


def test_models_the_engine_cannot_follow_at_rank_3_give_reasons() -> None:
    # The first op mixes all positions: a reason, never a wrong result.
    flat = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4 * 4, 3)).eval()
    masks = grid_masks((4, 4, 4), (2, 2, 2))
    reason = IncrementalEngine.prepare(
        flat, (2, 4, 4, 4), masks, torch.float32, torch.device("cpu")
    )
    assert isinstance(reason, str) and "mixes all positions" in reason
    # A forward hook the engine would skip: a reason.
    hooked = nn.Sequential(nn.Conv3d(2, 2, 3, padding=1), nn.Flatten(), nn.LazyLinear(3)).eval()
    hooked(torch.rand(1, 2, 4, 4, 4))
    hooked[0].register_forward_hook(lambda module, args, out: out * 2)
    reason = IncrementalEngine.prepare(
        hooked, (2, 4, 4, 4), masks, torch.float32, torch.device("cpu")
    )
    assert isinstance(reason, str) and "hook" in reason


def test_ecg_resnet_on_twelve_lead_signals_equals_dense() -> None:
    # Ribeiro et al. 2020's 1D ResNet (small widths) on (2, 12, 512) signals, windows of 64
    # samples at stride 32.
    from reference_models import EcgResNet, window_masks

    model = EcgResNet(length=512).eval()
    signals = torch.rand(2, 12, 512, generator=torch.Generator().manual_seed(1))
    engine = assert_engines_agree_at_rank(model, signals, window_masks((512,), 64, 32), [0.0])
    assert engine.switch_points == ["reshape"]  # flatten before the dense layer
    assert engine.flop_bound > 2


@pytest.mark.slow
def test_monai_resnet18_3d_on_a_volume_equals_dense() -> None:
    monai = pytest.importorskip("monai")
    from reference_models import window_masks

    torch.manual_seed(0)
    model = monai.networks.nets.resnet18(spatial_dims=3, n_input_channels=1, num_classes=3)
    volume = torch.rand(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(2))
    masks = window_masks((32, 32, 32), 16, 16)  # 8 windows
    engine = assert_engines_agree_at_rank(model.eval(), volume, masks[[0, 3, 5, 6]], [0.0])
    assert engine.switch_points == ["adaptive_avg_pool3d"]


@pytest.mark.slow
def test_monai_densenet121_3d_on_a_volume_equals_dense() -> None:
    monai = pytest.importorskip("monai")
    from reference_models import window_masks

    torch.manual_seed(0)
    model = monai.networks.nets.DenseNet121(spatial_dims=3, in_channels=1, out_channels=2)
    volume = torch.rand(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(3))
    masks = window_masks((32, 32, 32), 16, 16)[[0, 7]]
    assert_engines_agree_at_rank(model.eval(), volume, masks, [0.0])


@pytest.mark.parametrize("indexed", [False, True], ids=["strided", "indexed"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_concatenations_built_in_the_cache_equal_dense(
    monkeypatch: pytest.MonkeyPatch, channels_last: bool, indexed: bool
) -> None:
    # DenseNet: each layer's old maps changed on a box one ring smaller than its new maps,
    # so the cat is built in a window of its cached value (a narrowed view written in
    # place), on both window paths and memory layouts.
    from occlusion_probe.engines import incremental
    from occlusion_probe.engines.plan import cat_in_cache, op_name

    monkeypatch.setattr(incremental, "INDEXED_WINDOWS_ON_CPU", indexed)
    model = DenseNet().eval()
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    masks = op.grid(64, 64, 4, 4).masks
    engine = IncrementalEngine.prepare(model, (3, 64, 64), masks, torch.float32, images.device)
    assert isinstance(engine, IncrementalEngine)
    cats = [node for node in engine.graph.nodes if op_name(node) == "cat"]
    built = {
        node.name
        for group in engine.groups
        for node in cats
        if cat_in_cache(node, engine.graph.info, group.states)
    }
    assert len(built) >= len(cats) // 2, (built, len(cats))
    fills = torch.tensor([0.0, 1.0]).reshape(2, 1, 1, 1, 1)
    clean, occluded = engine.run(
        images, fills, masks, 32, lambda raw: torch.softmax(raw, 1), channels_last=channels_last
    )
    expected = reference_sweep(model, images, masks, [0.0, 1.0])
    torch.testing.assert_close(occluded, expected, rtol=0, atol=1e-5)
    with torch.inference_mode():
        torch.testing.assert_close(clean, torch.softmax(model(images), 1), rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "make",
    [DenseNet, MobileNetV2, lambda: VisionTransformer(image=64)],
    ids=["densenet", "mobilenetv2", "vit"],
)
def test_low_precision_reference_architectures_equal_dense(
    make: Callable[[], nn.Module], dtype: torch.dtype
) -> None:
    # Cats built in the cache, 1x1 convs reading changed boxes as they are and a ViT's
    # patch embedding before its whole token maps, in the model's own dtype: the same
    # outputs as the dense engine's whole forwards (bounded by the dtype's rounding).
    import copy

    model = copy.deepcopy(make().eval()).to(dtype)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    regions = op.grid(64, 64, 4, 4)
    dense = op.sweep(model, images, regions, engine="dense", progress=False)
    fast = op.sweep(model, images, regions, engine="incremental", progress=False)
    assert fast.engine == "incremental"
    tolerance = 1e-3 if dtype == torch.float16 else 5e-3
    torch.testing.assert_close(fast.occluded, dense.occluded, rtol=0, atol=tolerance)
    torch.testing.assert_close(fast.baseline, dense.baseline, rtol=0, atol=tolerance)


def test_hooks_fall_back_to_dense_with_reason() -> None:
    model = ResNet18(width=4)
    images = torch.rand(2, 3, 64, 64)
    regions = op.grid(64, 64, rows=8, cols=8)
    handle = model.layers[0].conv1.register_forward_hook(lambda m, i, o: o * 1.5)
    try:
        auto = op.sweep(model, images, regions, progress=False)
        dense = op.sweep(model, images, regions, engine="dense", progress=False)
        assert auto.engine == "dense"
        assert "forward hook" in auto.engine_note and "layers.0.conv1" in auto.engine_note
        torch.testing.assert_close(auto.occluded, dense.occluded, rtol=0, atol=0)
        with pytest.raises(InputValueError, match="forward hook"):
            op.sweep(model, images, regions, engine="incremental", progress=False)
    finally:
        handle.remove()
    handle = nn.modules.module.register_module_forward_pre_hook(lambda m, i: None)
    try:
        with pytest.raises(InputValueError, match="global forward hook"):
            op.sweep(model, images, regions, engine="incremental", progress=False)
    finally:
        handle.remove()


def test_model_mixing_all_positions_first_gets_a_reason() -> None:
    class Normalised(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x: Tensor) -> Tensor:
            x = (x - x.mean((1, 2, 3), keepdim=True)) / (x.std((1, 2, 3), keepdim=True) + 1)
            return self.conv(x).mean((2, 3))

    images = torch.rand(2, 1, 16, 16)
    with pytest.raises(InputValueError, match="mixes all positions"):
        op.sweep(Normalised(), images, op.grid(16, 16), engine="incremental", progress=False)


def test_auto_reasons() -> None:
    model = ResNet18(width=4)
    images = torch.rand(1, 3, 32, 32)
    # Reading costs 1 s per op; a forward 1 ms: 96 occluded images never pay for it.
    with assumed_rates(ReadingRates(seconds_per_op=1.0, forward_seconds=1e-3)):
        small = op.sweep(model, images, op.grid(32, 32), progress=False)
    assert small.engine == "dense" and "96 occluded images x 1.0 ms" in small.engine_note
    callable_result = op.sweep(lambda x: model(x), images, op.grid(32, 32), progress=False)
    assert "not an nn.Module" in callable_result.engine_note
    with pytest.raises(InputValueError, match='engine: "incremental" cannot run this model'):
        op.sweep(lambda x: model(x), images, op.grid(32, 32), engine="incremental", progress=False)


def test_data_dependent_control_flow_falls_back() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x: Tensor) -> Tensor:
            y = self.conv(x).mean((2, 3))
            return y if bool(y.sum() > 0) else -y

    with pytest.raises(InputValueError, match=r"torch\.export could not read the model"):
        op.sweep(
            Branchy(),
            torch.rand(2, 3, 8, 8),
            op.grid(8, 8, 2, 2),
            engine="incremental",
            progress=False,
        )


def test_batch_sizes_zero_one_two() -> None:
    model = ResNet18(width=4)
    regions = op.grid(32, 32, rows=2, cols=2)
    for n in (1, 2):
        assert_engines_agree(model, torch.rand(n, 3, 32, 32), regions)


class _PositionalBias(nn.Module):
    """A conv plus a learned bias per position (1, C, H, W): a constant with rows and columns."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.position = nn.Parameter(torch.randn(1, 8, 16, 16))
        self.fc = nn.Linear(8, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.relu(self.conv(x) + self.position).mean((2, 3)))


def test_constant_with_rows_and_columns_is_cut_per_region() -> None:
    # Regions of one shape are grouped; a per-position constant must still be cut at each
    # region's own box (grouping them once cut it at the first member's box for all).
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    assert_engines_agree(_PositionalBias(), images, op.grid(16, 16, 4, 4))


def test_indexed_windows_equal_strided_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    # Accelerators gather and scatter windows with one indexed op; run that path on the CPU.
    from occlusion_probe.engines import incremental

    monkeypatch.setattr(incremental, "INDEXED_WINDOWS_ON_CPU", True)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    assert_engines_agree(ResNet18(width=4), images, op.grid(32, 32, 4, 4))
    assert_engines_agree(_PositionalBias(), images[:, :, :16, :16], op.grid(16, 16, 4, 4))


def _top_level_ops(run: object) -> int:
    """ATen ops `run()` calls directly (not those called inside other ATen ops): on an
    accelerator each is about one kernel launch."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()  # type: ignore[operator]
    return sum(
        1
        for event in prof.events()
        if event.name.startswith("aten::")
        and (event.cpu_parent is None or not event.cpu_parent.name.startswith("aten::"))
    )


def test_launches_grow_with_layers_not_with_regions(monkeypatch: pytest.MonkeyPatch) -> None:
    # The path accelerators take (one indexed op per window gather, patch write and
    # scatter), run on the CPU: 4x the regions in one group must not mean more ops.
    from occlusion_probe.engines import incremental
    from occlusion_probe.engines.incremental import IncrementalEngine

    monkeypatch.setattr(incremental, "INDEXED_WINDOWS_ON_CPU", True)
    model = ResNet18(width=4).eval()
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    fills = torch.zeros(1, 1, 1, 1, 1)
    counts = {}
    for rows in (4, 8):
        masks = op.grid(64, 64, rows, rows).masks
        engine = IncrementalEngine.prepare(model, (3, 64, 64), masks, torch.float32, images.device)
        assert isinstance(engine, IncrementalEngine)
        assert len(engine.groups) == 1  # all regions in one group, run as one call per op
        counts[rows] = _top_level_ops(
            lambda e=engine, m=masks: e.run(images, fills, m, 10**6, lambda raw: raw)
        )
    layers = sum(1 for node in engine.graph.nodes if node.op == "call_function")
    # 16 and 64 regions: the same ops but for a few plan differences at the borders.
    assert counts[8] <= 1.1 * counts[4], counts
    # About two dozen ops per node (views included), against 64 regions x nodes before.
    assert counts[8] < 64 * layers / 2, (counts, layers)


def test_channels_last_maps_equal_contiguous_ones() -> None:
    from occlusion_probe.engines.incremental import IncrementalEngine

    # A flatten before the head: export writes it as a view, which channels-last maps need
    # as a reshape.
    flat = small_cnn(in_channels=3, size=16).eval()
    small = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    grid = op.grid(16, 16, 4, 4).masks
    prepared = IncrementalEngine.prepare(flat, (3, 16, 16), grid, torch.float32, small.device)
    assert isinstance(prepared, IncrementalEngine)
    two_fills = torch.tensor([0.0, 1.0]).reshape(2, 1, 1, 1, 1)
    on_nhwc = prepared.run(small, two_fills, grid, 32, lambda raw: raw, channels_last=True)
    on_nchw = prepared.run(small, two_fills, grid, 32, lambda raw: raw, channels_last=False)
    torch.testing.assert_close(on_nhwc[1], on_nchw[1], rtol=0, atol=1e-5)

    model = ResNet18(width=4).eval()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    masks = op.grid(32, 32, 4, 4).masks
    fills = torch.tensor([0.0, 1.0]).reshape(2, 1, 1, 1, 1)
    engine = IncrementalEngine.prepare(model, (3, 32, 32), masks, torch.float32, images.device)
    assert isinstance(engine, IncrementalEngine)
    nchw = engine.run(images, fills, masks, 32, lambda raw: raw, channels_last=False)
    nhwc = engine.run(images, fills, masks, 32, lambda raw: raw, channels_last=True)
    torch.testing.assert_close(nhwc[1], nchw[1], rtol=0, atol=1e-5)
    assert engine.channels_last is None  # given, not decided
    engine.run(images, fills, masks, 32, lambda raw: raw)  # decided by timing, once
    assert engine.channels_last in (True, False)
    assert "maps " in engine.layout_note and "ms" in engine.layout_note


def test_prepared_engine_is_kept_until_the_model_changes() -> None:
    model = ResNet18(width=4).eval()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    regions = op.grid(32, 32, 4, 4)

    def sweep() -> op.SweepResult:
        return op.sweep(model, images, regions, engine="incremental", progress=False)

    first = sweep()
    assert "(torch.export graph)" in first.engine_note
    again = sweep()
    assert "kept from an earlier sweep of this model" in again.engine_note
    torch.testing.assert_close(again.occluded, first.occluded, rtol=0, atol=0)
    # An in-place weight update (an optimizer step) bumps the version: read again, and the
    # new weights are what the engine computes with.
    with torch.no_grad():
        next(model.parameters()).mul_(1.5)
    changed = sweep()
    assert "(torch.export graph)" in changed.engine_note
    dense = op.sweep(model, images, regions, engine="dense", progress=False)
    torch.testing.assert_close(changed.occluded, dense.occluded, rtol=0, atol=1e-5)
    # Other regions are planned anew.
    other = op.sweep(model, images, op.grid(32, 32, 2, 2), engine="incremental", progress=False)
    assert "(torch.export graph)" in other.engine_note
    # So are regions that differ from the last ones in one pixel (the masks' digest).
    masks = op.grid(32, 32, 2, 2).masks.clone()
    masks[0, 0, 0] = False
    moved = op.sweep(
        model, images, op.Regions(masks, [0, 1, 2, 3]), engine="incremental", progress=False
    )
    assert "(torch.export graph)" in moved.engine_note
    dense = op.sweep(model, images, op.Regions(masks, [0, 1, 2, 3]), engine="dense", progress=False)
    torch.testing.assert_close(moved.occluded, dense.occluded, rtol=0, atol=1e-5)


def test_a_changed_plain_attribute_is_read_again() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.scale = 1.0

        def forward(self, x: Tensor) -> Tensor:
            return (torch.relu(self.conv(x)) * self.scale).mean((2, 3))

    model = Scaled().eval()
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    regions = op.grid(16, 16, 4, 4)
    op.sweep(model, images, regions, engine="incremental", progress=False)
    model.scale = 3.0
    result = op.sweep(model, images, regions, engine="incremental", progress=False)
    assert "(torch.export graph)" in result.engine_note
    dense = op.sweep(model, images, regions, engine="dense", progress=False)
    torch.testing.assert_close(result.occluded, dense.occluded, rtol=0, atol=1e-5)


class _SharedPatch(nn.Module):
    """A conv map read by a ReLU and again by the add after it: the ReLU must not overwrite
    it; the add's own input (the ReLU's, read once) may be."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        z = torch.relu(y) + y
        return self.head(torch.tanh(z).mean((2, 3)))


def test_in_place_ops_only_on_patches_nothing_else_reads() -> None:
    model = _SharedPatch().eval()
    images = torch.rand(2, 3, 16, 16)
    regions = op.grid(16, 16, rows=4, cols=4)
    dense = op.sweep(model, images, regions, engine="dense", progress=False)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fast = op.sweep(model, images, regions, engine="incremental", progress=False)
    torch.testing.assert_close(fast.occluded, dense.occluded, rtol=0, atol=1e-5)
    names = [event.key for event in prof.key_averages()]
    # The add (its input, the ReLU's, read once) ran in place; y was left intact (equality).
    assert "aten::add_" in names


# --- window copies in lattice blocks and progressions --------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 3).flatmap(
        lambda rank: st.lists(st.tuples(*[st.integers(0, 6)] * rank), max_size=30)
    )
)
def test_lattice_blocks_cover_the_boxes_in_order(corners: list[tuple[int, ...]]) -> None:
    import itertools

    from occlusion_probe.engines.incremental import lattice_blocks

    boxes = [tuple(v for c in corner for v in (c, c + 3)) for corner in corners]
    blocks = lattice_blocks(boxes)
    rebuilt = [
        tuple(c + i * step for c, i, step in zip(block.corner, at, block.steps, strict=True))
        for block in blocks
        for at in itertools.product(*(range(count) for count in block.counts))
    ]
    assert rebuilt == corners
    firsts = [block.first for block in blocks]
    counts = [block.size for block in blocks]
    assert firsts == [sum(counts[:i]) for i in range(len(counts))]


def test_lattice_blocks_of_sliding_windows_are_few() -> None:
    from occlusion_probe.engines.incremental import lattice_blocks

    # A 5 x 7 lattice at steps (2, 3), then one row of 3 at another step, then a stray box.
    boxes = [(2 * i, 2 * i + 4, 3 * j, 3 * j + 4) for i in range(5) for j in range(7)]
    boxes += [(20, 24, 5 * j, 5 * j + 4) for j in range(3)] + [(1, 5, 1, 5)]
    blocks = lattice_blocks(boxes)
    assert [(b.counts, b.steps) for b in blocks] == [
        ((5, 7), (2, 3)),
        ((1, 3), (0, 5)),
        ((1, 1), (0, 0)),
    ]
    # Windows of a volume at one stride: a single block.
    volume = [
        (d, d + 4, h, h + 4, w, w + 4)
        for d in range(0, 9, 4)
        for h in range(0, 9, 4)
        for w in range(0, 13, 4)
    ]
    assert [(b.counts, b.steps) for b in lattice_blocks(volume)] == [((3, 3, 4), (4, 4, 4))]
    # Windows of a signal: one block per run of equal steps.
    signal = [(s, s + 5) for s in (0, 2, 4, 6, 10, 14)]
    assert [(b.first, b.counts, b.steps) for b in lattice_blocks(signal)] == [
        (0, (4,), (2,)),
        (4, (2,), (4,)),
    ]


@settings(max_examples=200, deadline=None)
@given(st.sets(st.integers(0, 60), min_size=1))
def test_progressions_cover_the_indices_in_order(chosen: set[int]) -> None:
    from occlusion_probe.engines.incremental import _progressions

    indices = sorted(chosen)
    slices = _progressions(indices)
    assert [i for part in slices for i in range(part.start, part.stop, part.step)] == indices
    assert _progressions([0, 4, 8, 12, 13, 14]) == [slice(0, 13, 4), slice(13, 15, 1)]


# --- the whole-map tail of several calls run at once -------------------------------------


class _FlatHead(nn.Module):
    """Convs, then ``x.view(x.size(0), -1)`` and two Linear layers (a VGG-style head)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3)
        )
        self.head = nn.Sequential(nn.Linear(8 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 5))

    def forward(self, x: Tensor) -> Tensor:
        features = self.features(x)
        return self.head(features.view(features.size(0), -1))


@pytest.mark.parametrize("tail_bytes", [1, 2**40])
def test_tails_of_many_calls_run_together_and_equal_dense(
    monkeypatch: pytest.MonkeyPatch, tail_bytes: int
) -> None:
    from occlusion_probe.engines import incremental

    monkeypatch.setattr(incremental, "TAIL_BYTES", tail_bytes)
    model = _FlatHead().eval()
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    regions = op.sliding_windows(16, 16, window=4, stride=2)
    dense = op.sweep(model, images, regions, engine="dense", progress=False)
    result = op.sweep(model, images, regions, engine="incremental", progress=False)
    assert result.engine == "incremental", result.engine_note
    torch.testing.assert_close(result.occluded, dense.occluded, rtol=0, atol=1e-5)
    torch.testing.assert_close(result.baseline, dense.baseline, rtol=0, atol=1e-5)


def test_a_size_query_does_not_assemble_its_input() -> None:
    model = _FlatHead().eval()
    masks = op.sliding_windows(16, 16, window=4, stride=2).masks
    engine = IncrementalEngine.prepare(
        model, (3, 16, 16), masks, torch.float32, torch.device("cpu")
    )
    assert isinstance(engine, IncrementalEngine), engine
    for group in engine.groups:
        tail = engine.tail_of(group)
        assert engine.graph.image not in tail.frontier  # x.size(0) is answered from shapes
        assert any(node.op == "call_function" for node in tail.nodes)


def test_tails_run_once_per_queue_not_once_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _FlatHead().eval()
    images = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    masks = op.sliding_windows(16, 16, window=4, stride=2).masks
    engine = IncrementalEngine.prepare(
        model, (3, 16, 16), masks, torch.float32, torch.device("cpu")
    )
    assert isinstance(engine, IncrementalEngine), engine
    fill_images = torch.zeros(1, 1, 1, 1, 1)
    runs: list[str] = []
    tail, group = IncrementalEngine._tail, IncrementalEngine._group

    def counted_tail(self: IncrementalEngine, *args: object) -> object:
        runs.append("tail")
        return tail(self, *args)  # type: ignore[arg-type]

    def counted_group(self: IncrementalEngine, *args: object) -> object:
        runs.append("call")
        return group(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(IncrementalEngine, "_tail", counted_tail)
    monkeypatch.setattr(IncrementalEngine, "_group", counted_group)
    clean, occluded = engine.run(images, fill_images, masks, 4, lambda raw: raw)  # type: ignore[arg-type,return-value]
    # 4 items per call: the 49 windows run in many calls, and their tails in one.
    assert runs.count("call") > 1 and runs.count("tail") == 1
    with torch.inference_mode():
        reference = model(torch.where(masks[:, None], 0.0, images))
        torch.testing.assert_close(clean, model(images), rtol=0, atol=1e-5)
    torch.testing.assert_close(occluded[0, :, 0], reference, rtol=0, atol=1e-5)
