"""occlusion_probe.captum.GridOcclusion: the same numbers as captum, from one sweep."""

from __future__ import annotations

import pytest
import torch
from captum.attr import Attribution, FeatureAblation, Occlusion
from captum.metrics import infidelity, sensitivity_max
from reference_models import small_cnn
from torch import Tensor, nn

from occlusion_probe.captum import GridOcclusion
from occlusion_probe.errors import InputTypeError, InputValueError
from occlusion_probe.regions import Regions, grid, sliding_windows
from occlusion_probe.sweep import sweep

N, C, H, W, K = 4, 3, 12, 12, 5


@pytest.fixture(scope="module")
def model() -> nn.Sequential:
    return small_cnn(in_channels=C, classes=K, size=H).eval()


@pytest.fixture(scope="module")
def inputs() -> Tensor:
    return torch.rand(N, C, H, W, generator=torch.Generator().manual_seed(1))


def _grid_mask(rows: int = 4, cols: int = 4) -> Tensor:
    return grid(H, W, rows, cols).label_map()[None, None]


def _assert_same(ours: Tensor, theirs: Tensor) -> None:
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_is_a_captum_attribution(model: nn.Module) -> None:
    method = GridOcclusion(model)
    assert isinstance(method, Attribution) and method.forward_func is model
    assert method.get_name() == "Grid Occlusion" and not method.has_convergence_delta()
    with pytest.raises(InputTypeError, match="forward_func: expected a callable"):
        GridOcclusion(3)  # type: ignore[arg-type]


@pytest.mark.parametrize(("rows", "cols"), [(4, 4), (3, 5)])
def test_grid_int_target_equals_feature_ablation(
    model: nn.Module, inputs: Tensor, rows: int, cols: int
) -> None:
    ours = GridOcclusion(model).attribute(inputs, target=2, rows=rows, cols=cols)
    theirs = FeatureAblation(model).attribute(inputs, target=2, feature_mask=_grid_mask(rows, cols))
    _assert_same(ours, theirs)


def test_label_map_mask_and_per_example_target(model: nn.Module, inputs: Tensor) -> None:
    # An irregular map with non-contiguous labels, like superpixels.
    labels = torch.randint(0, 6, (H, W), generator=torch.Generator().manual_seed(2)) * 3
    target = torch.tensor([0, 4, 2, 1])
    theirs = FeatureAblation(model).attribute(
        inputs, target=target, feature_mask=labels[None, None]
    )
    _assert_same(
        GridOcclusion(model).attribute(inputs, target=target, feature_mask=labels[None, None]),
        theirs,
    )
    _assert_same(
        GridOcclusion(model).attribute(inputs, target=target.tolist(), feature_mask=labels), theirs
    )
    regions = Regions.from_label_map(labels)
    _assert_same(GridOcclusion(model).attribute(inputs, target=target, regions=regions), theirs)


@pytest.mark.parametrize(
    "baseline",
    [
        0.5,
        torch.tensor(-1.0),
        torch.tensor([0.2, 0.5, 0.8])[:, None, None],  # one colour per channel
        torch.rand(1, C, H, W, generator=torch.Generator().manual_seed(3)),  # e.g. a mean image
        torch.rand(N, C, H, W, generator=torch.Generator().manual_seed(4)),  # one per example
    ],
    ids=["scalar", "0-d", "per-channel", "image", "per-example"],
)
def test_baselines_equal_feature_ablation(
    model: nn.Module, inputs: Tensor, baseline: float | Tensor
) -> None:
    ours = GridOcclusion(model).attribute(inputs, target=3, baselines=baseline)
    captum_baseline = (
        baseline[None] if isinstance(baseline, Tensor) and baseline.dim() == 3 else baseline
    )
    theirs = FeatureAblation(model).attribute(
        inputs, target=3, baselines=captum_baseline, feature_mask=_grid_mask()
    )
    _assert_same(ours, theirs)


def test_one_output_per_example_without_target(model: nn.Module, inputs: Tensor) -> None:
    def score(x: Tensor) -> Tensor:  # (B,): e.g. a logit margin
        logits = model(x)
        return logits[:, 1] - logits[:, 0]

    mask = _grid_mask()
    _assert_same(
        GridOcclusion(score).attribute(inputs),
        FeatureAblation(score).attribute(inputs, feature_mask=mask),
    )

    def column(x: Tensor) -> Tensor:  # (B, 1)
        return score(x)[:, None]

    _assert_same(
        GridOcclusion(column).attribute(inputs),
        FeatureAblation(column).attribute(inputs, feature_mask=mask),
    )


def test_additional_forward_args(model: nn.Module, inputs: Tensor) -> None:
    def scaled(x: Tensor, temperature: float, bias: Tensor) -> Tensor:
        return torch.log_softmax(model(x) / temperature + bias, dim=1)

    mask = _grid_mask()
    bias = torch.linspace(-1, 1, K)  # constant: its first dimension is K, not N
    args = (2.0, bias)
    ours = GridOcclusion(scaled).attribute(inputs, target=1, additional_forward_args=args)
    theirs = FeatureAblation(scaled).attribute(
        inputs, target=1, additional_forward_args=args, feature_mask=mask
    )
    _assert_same(ours, theirs)

    def shifted(x: Tensor, shift: Tensor) -> Tensor:
        return model(x) * shift

    per_example = torch.rand(N, 1, generator=torch.Generator().manual_seed(5)) + 0.5  # first dim N
    ours = GridOcclusion(shifted).attribute(inputs, target=4, additional_forward_args=per_example)
    theirs = FeatureAblation(shifted).attribute(
        inputs, target=4, additional_forward_args=per_example, feature_mask=mask
    )
    _assert_same(ours, theirs)


def test_overlapping_windows_equal_captum_occlusion(model: nn.Module, inputs: Tensor) -> None:
    ours = GridOcclusion(model).attribute(
        inputs, target=0, regions=sliding_windows(H, W, 4, 2), batch_size=7
    )
    theirs = Occlusion(model).attribute(
        inputs, target=0, sliding_window_shapes=(C, 4, 4), strides=(C, 2, 2)
    )
    _assert_same(ours, theirs)


def test_tuple_input_gives_tuple_and_captum_metrics_run(model: nn.Module, inputs: Tensor) -> None:
    method = GridOcclusion(model)
    (attributions,) = method.attribute((inputs,), target=2)
    assert attributions.shape == inputs.shape

    def perturb(x: Tensor) -> tuple[Tensor, Tensor]:
        noise = 0.01 * torch.randn_like(x)
        return noise, x - noise

    torch.manual_seed(6)
    scores = infidelity(model, perturb, inputs, attributions, target=2, n_perturb_samples=3)
    assert scores.shape == (N,) and bool(torch.isfinite(scores).all())
    sensitivity = sensitivity_max(
        method.attribute, inputs, target=2, n_perturb_samples=2, rows=2, cols=2
    )
    assert sensitivity.shape == (N,) and bool((sensitivity >= 0).all())


def test_sweep_with_several_fills_is_the_mean_of_captum_attributions(
    model: nn.Module, inputs: Tensor
) -> None:
    fills = (0.0, 0.5, 1.0)
    result = sweep(
        model, inputs, grid(H, W), fills=fills, output="logits", progress=False, engine="dense"
    )
    target = torch.tensor([1, 1, 3, 0])
    mean_of_captum = torch.stack(
        [
            FeatureAblation(model).attribute(
                inputs, target=target, baselines=fill, feature_mask=_grid_mask()
            )
            for fill in fills
        ]
    ).mean(dim=0)
    torch.testing.assert_close(result.attribution(target), mean_of_captum, atol=1e-6, rtol=0)


def test_errors(model: nn.Module, inputs: Tensor) -> None:
    method = GridOcclusion(model)
    with pytest.raises(
        InputValueError, match=r"target: None needs forward_func to return one output"
    ):
        method.attribute(inputs)
    with pytest.raises(InputValueError, match=r"target: expected class indices in \[0, 4\]"):
        method.attribute(inputs, target=torch.tensor([0, 1, 2, 9]))
    with pytest.raises(
        InputValueError, match=r"target: expected an integer tensor of shape \(4,\)"
    ):
        method.attribute(inputs, target=torch.tensor([0, 1]))
    with pytest.raises(InputTypeError, match="target: expected an int"):
        method.attribute(inputs, target=(0, 1))  # type: ignore[arg-type]
    with pytest.raises(InputValueError, match="inputs: expected one tensor"):
        method.attribute((inputs, inputs), target=0)  # type: ignore[arg-type]
    with pytest.raises(InputValueError, match=r"rows, cols: the default grid is for 2D images"):
        method.attribute(inputs[0], target=0)
    with pytest.raises(InputValueError, match="feature_mask, regions: pass at most one"):
        method.attribute(inputs, target=0, feature_mask=_grid_mask(), regions=grid(H, W))
    with pytest.raises(
        InputValueError, match="baselines: expected a leading dimension of 1 or N = 4"
    ):
        method.attribute(inputs, target=0, baselines=torch.zeros(2, C, H, W))
    with pytest.raises(InputValueError, match="forward_func: expected outputs of shape"):
        GridOcclusion(lambda x: model(x).sum()).attribute(inputs, target=0)


@pytest.mark.parametrize("shape", [(30,), (6, 7, 8)], ids=["1d", "3d"])
def test_signals_and_volumes_equal_captum_feature_ablation(shape: tuple[int, ...]) -> None:
    rank = len(shape)
    conv = nn.Conv1d if rank == 1 else nn.Conv3d
    torch.manual_seed(0)
    net = nn.Sequential(conv(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.LazyLinear(K)).eval()
    batch = torch.rand(3, 2, *shape, generator=torch.Generator().manual_seed(4))
    net(batch)
    mask = grid(shape, 3 if rank == 1 else 2).label_map()[None, None]
    target = torch.tensor([0, 2, 4])
    ours = GridOcclusion(net).attribute(batch, target=target, feature_mask=mask, baselines=0.5)
    theirs = FeatureAblation(net).attribute(batch, target=target, feature_mask=mask, baselines=0.5)
    _assert_same(ours, theirs)
    per_example = torch.rand(3, 2, *shape, generator=torch.Generator().manual_seed(5))
    ours = GridOcclusion(net).attribute(batch, target=1, feature_mask=mask, baselines=per_example)
    theirs = FeatureAblation(net).attribute(
        batch, target=1, feature_mask=mask, baselines=per_example
    )
    _assert_same(ours, theirs)
    with pytest.raises(InputValueError, match=r"rows, cols: the default grid is for 2D images"):
        GridOcclusion(net).attribute(batch, target=1)
    with pytest.raises(
        InputValueError, match=r"feature_mask: expected one integer label map shared"
    ):
        GridOcclusion(net).attribute(batch, target=1, feature_mask=mask.expand(3, 2, *shape))
    with pytest.raises(
        InputTypeError, match=r"feature_mask: expected one integer label map .* integer dtype"
    ):
        GridOcclusion(net).attribute(batch, target=1, feature_mask=mask.float())


def test_inputs_of_unsupported_rank_are_refused(model: nn.Module) -> None:
    with pytest.raises(
        InputValueError, match=r"inputs: expected shape \(N, C, L\), \(N, C, H, W\)"
    ):
        GridOcclusion(model).attribute(torch.rand(2, 3), target=0)
    with pytest.raises(InputValueError, match=r"inputs: expected shape \(N, C, L\)"):
        GridOcclusion(model).attribute(torch.rand(1, 1, 2, 2, 2, 2), target=0)


def test_bad_baselines_and_regions_of_another_rank_name_their_argument() -> None:
    volume_model = nn.Sequential(nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()
    volumes = torch.rand(3, 1, 4, 6, 6, generator=torch.Generator().manual_seed(0))
    cells = grid((4, 6, 6), (2, 2, 3))
    attribute = GridOcclusion(volume_model).attribute
    for baseline in (float("nan"), float("inf"), 10**400, torch.tensor(float("nan"))):
        with pytest.raises(InputValueError, match=r"^baselines: expected (a )?finite"):
            attribute(volumes, target=0, regions=cells, baselines=baseline)
    with pytest.raises(
        InputValueError, match=r"^baselines: expected finite values, got NaN or inf"
    ):
        attribute(
            volumes, target=0, regions=cells, baselines=torch.full((1, 4, 6, 6), float("nan"))
        )
    with pytest.raises(
        InputValueError,
        match=r"^baselines: expected a Tensor broadcastable to one input \(1, 4, 6, 6\)",
    ):
        attribute(volumes, target=0, regions=cells, baselines=torch.zeros(5, 6, 6))
    with pytest.raises(
        InputTypeError, match=r"^baselines: expected a real number or a floating-point Tensor"
    ):
        attribute(volumes, target=0, regions=cells, baselines=torch.zeros(6, dtype=torch.int64))
    with pytest.raises(
        InputValueError,
        match=r"^regions: expected the spatial shape of the inputs, which have shape \(3, 1, 4, 6, 6\)",
    ):
        attribute(volumes, target=0, regions=grid(6, 6, 2, 2))
    with pytest.raises(
        InputValueError, match=r"^feature_mask: expected the spatial shape of the inputs"
    ):
        attribute(volumes, target=0, feature_mask=torch.zeros(4, 6, 5, dtype=torch.int64))
    with pytest.raises(InputValueError, match=r"^regions: expected the spatial shape"):
        GridOcclusion(nn.Sequential(nn.Flatten(), nn.Linear(16, 2))).attribute(
            torch.rand(2, 1, 16), target=0, regions=cells
        )
    # a broadcastable baseline and one-channel volumes without their axis still equal captum
    baseline = torch.rand(6, generator=torch.Generator().manual_seed(1))
    label_map = cells.label_map() - 1
    expected = FeatureAblation(volume_model).attribute(
        volumes,
        target=0,
        baselines=baseline.expand(1, 1, 4, 6, 6),
        feature_mask=label_map[None, None],
    )
    got = attribute(volumes, target=0, regions=cells, baselines=baseline)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    squeezed = GridOcclusion(lambda b: volume_model(b[:, None])).attribute(
        volumes[:, 0], target=0, regions=cells
    )
    torch.testing.assert_close(
        squeezed,
        FeatureAblation(volume_model).attribute(
            volumes, target=0, feature_mask=label_map[None, None]
        )[:, 0],
        rtol=0,
        atol=1e-6,
    )
