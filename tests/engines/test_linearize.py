"""Models written as nn.Module classes, turned into layer chains for the incremental engine.

Every chain must compute exactly what the model's own forward computes (checked by running
the chain as an nn.Sequential), and a model that is not a straight chain must give a reason
and fall back to the dense engine.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import occlusion_probe as op
from occlusion_probe.engines.incremental import unsupported_reason
from occlusion_probe.engines.linearize import layer_chain


class TutorialNet(nn.Module):
    """The PyTorch tutorial's CIFAR classifier, written the usual way."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class Functional(nn.Module):
    """conv -> `spatial` -> flatten by `flatten` -> linear -> `head` -> linear."""

    def __init__(
        self,
        spatial: Callable[[Tensor], Tensor],
        flatten: Callable[[Tensor], Tensor],
        head: Callable[[Tensor], Tensor],
        features: int,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.features = nn.Sequential(nn.BatchNorm2d(4), nn.ReLU())
        self.fc1 = nn.Linear(features, 6)
        self.fc2 = nn.Linear(6, 3)
        self.spatial, self.flatten, self.head = spatial, flatten, head

    def forward(self, x: Tensor) -> Tensor:
        x = self.spatial(self.features(self.conv(x)))
        x = self.head(self.fc1(self.flatten(x)))
        return self.fc2(x)


SPATIAL: dict[str, tuple[Callable[[Tensor], Tensor], int]] = {
    # name: (function on (B, 4, 8, 8), features after flattening)
    "F.relu": (F.relu, 256),
    "torch.relu": (torch.relu, 256),
    "x.relu()": (lambda x: x.relu(), 256),
    "F.leaky_relu": (lambda x: F.leaky_relu(x, 0.2), 256),
    "F.elu": (lambda x: F.elu(x, alpha=0.5), 256),
    "F.gelu tanh": (lambda x: F.gelu(x, approximate="tanh"), 256),
    "F.silu": (F.silu, 256),
    "F.hardswish": (F.hardswish, 256),
    "torch.sigmoid": (torch.sigmoid, 256),
    "torch.tanh": (torch.tanh, 256),
    "x.contiguous()": (lambda x: x.contiguous(), 256),
    "F.max_pool2d": (lambda x: F.max_pool2d(x, 3, 2, 1), 64),
    "F.max_pool2d dilation": (lambda x: F.max_pool2d(x, 2, stride=1, dilation=2), 144),
    "F.avg_pool2d": (lambda x: F.avg_pool2d(x, 2), 64),
    "F.avg_pool2d no pad count": (
        lambda x: F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False),
        64,
    ),
    "F.adaptive_avg_pool2d": (lambda x: F.adaptive_avg_pool2d(x, 2), 16),
    "F.adaptive_max_pool2d": (lambda x: F.adaptive_max_pool2d(x, (4, 2)), 32),
    "F.dropout2d": (lambda x: F.dropout2d(x, 0.3, training=False), 256),
}
FLATTEN: dict[str, Callable[[Tensor], Tensor]] = {
    "torch.flatten(x, 1)": lambda x: torch.flatten(x, 1),
    "x.flatten(1)": lambda x: x.flatten(1),
    "x.view(x.size(0), -1)": lambda x: x.view(x.size(0), -1),
    "x.reshape(x.shape[0], -1)": lambda x: x.reshape(x.shape[0], -1),
}
HEAD: dict[str, Callable[[Tensor], Tensor]] = {
    "F.relu": F.relu,
    "F.dropout": lambda x: F.dropout(x, 0.5, training=False),
    "F.softmax": lambda x: F.softmax(x, dim=1),
    "F.log_softmax": lambda x: F.log_softmax(x, dim=-1),
    "x.softmax(1)": lambda x: x.softmax(1),
}


def _trained(model: nn.Module) -> nn.Module:
    """Non-trivial batch-norm statistics, then eval mode."""
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _chain_equals_model(model: nn.Module, images: Tensor) -> None:
    layers = layer_chain(model)
    assert not isinstance(layers, str), layers
    chain = nn.Sequential(*(module for _, module in layers)).eval()
    with torch.inference_mode():
        torch.testing.assert_close(chain(images), model(images), rtol=0, atol=0)


@pytest.mark.parametrize("spatial", list(SPATIAL))
def test_spatial_functions_become_equal_layers(spatial: str) -> None:
    function, features = SPATIAL[spatial]
    model = _trained(Functional(function, FLATTEN["torch.flatten(x, 1)"], F.relu, features))
    images = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    _chain_equals_model(model, images)
    assert unsupported_reason(model, (2, 8, 8)) is None


@pytest.mark.parametrize("flatten", list(FLATTEN))
@pytest.mark.parametrize("head", list(HEAD))
def test_flattens_and_head_functions_become_equal_layers(flatten: str, head: str) -> None:
    model = _trained(Functional(F.relu, FLATTEN[flatten], HEAD[head], 256))
    images = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(2))
    _chain_equals_model(model, images)
    assert unsupported_reason(model, (2, 8, 8)) is None


def test_view_minus_one_features_is_checked_against_the_next_linear() -> None:
    good = _trained(Functional(F.relu, lambda x: x.view(-1, 256), F.relu, 256))
    _chain_equals_model(good, torch.randn(2, 2, 8, 8))
    assert unsupported_reason(good, (2, 8, 8)) is None
    # view(-1, 128) on 4x8x8 maps would make two rows per image: not a per-image flatten.
    bad = _trained(Functional(F.relu, lambda x: x.view(-1, 128), F.relu, 128))
    reason = unsupported_reason(bad, (2, 8, 8))
    assert reason is not None and "expects 128 features but receives 256" in reason


def test_tutorial_net_runs_incrementally_and_equals_dense() -> None:
    model = TutorialNet().eval()
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    regions = op.grid(32, 32, 4, 4)
    incremental = op.sweep(model, images, regions, [0.0, 0.5], engine="auto", progress=False)
    dense = op.sweep(model, images, regions, [0.0, 0.5], engine="dense", progress=False)
    assert incremental.engine == "incremental", incremental.engine_note
    torch.testing.assert_close(incremental.occluded, dense.occluded, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(incremental.baseline, dense.baseline, rtol=1e-5, atol=1e-6)


def test_tracing_restores_train_flags_and_leaves_the_model_alone() -> None:
    model = TutorialNet().train()
    model.conv2.eval()
    before = {name: parameter.clone() for name, parameter in model.named_parameters()}
    layers = layer_chain(model)
    assert not isinstance(layers, str)
    assert model.training and model.conv1.training and not model.conv2.training
    # The chain holds the model's own submodules, not copies.
    assert dict(layers)["conv1"] is model.conv1
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, before[name])


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 8 * 8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.conv(x) + x, 1))


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2 * 8 * 8, 3)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.fc(torch.flatten(x + y, 1))


class ScaledByParameter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.scale = nn.Parameter(torch.ones(1))
        self.fc = nn.Linear(2 * 8 * 8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.conv(x) * self.scale, 1))


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2 * 8 * 8, 3)

    def forward(self, x: Tensor) -> Tensor:
        if x.sum() > 0:
            x = x * 2
        return self.fc(torch.flatten(x, 1))


UNSUPPORTED: dict[str, tuple[Callable[[], object], str]] = {
    "residual": (Residual, "the result of step x is also used elsewhere (a branch or residual)"),
    "two inputs": (TwoInputs, "forward takes 2 inputs (x, y); one is needed"),
    "parameter": (ScaledByParameter, "reads scale directly"),
    "data-dependent control flow": (DataDependent, "torch.fx could not trace its forward"),
    "dropout on in eval": (
        lambda: Functional(
            F.relu, FLATTEN["x.flatten(1)"], lambda x: F.dropout(x, training=True), 256
        ),
        "dropout with training=True stays random in eval mode",
    ),
    "flatten over the batch": (
        lambda: Functional(F.relu, torch.flatten, F.relu, 256),
        "only torch.flatten(x, 1) is supported",
    ),
    "unknown function": (
        lambda: Functional(lambda x: torch.cumsum(x, 2), FLATTEN["x.flatten(1)"], F.relu, 256),
        "cumsum has no layer equivalent the engine knows",
    ),
    "a bare layer": (lambda: nn.Linear(128, 3), "reads weight directly"),
    "a function, not a module": (lambda: lambda x: x, "is not an nn.Module"),
}


@pytest.mark.parametrize("case", list(UNSUPPORTED))
def test_models_that_are_not_chains_say_why_and_fall_back_to_dense(case: str) -> None:
    make, expected = UNSUPPORTED[case]
    model = make()
    reason = unsupported_reason(model, (2, 8, 8))
    assert reason is not None and expected in reason, reason
    # The other models cannot classify (2, 8, 8) images at all (wrong shapes or arity).
    if case not in (
        "two inputs",
        "flatten over the batch",
        "a bare layer",
        "a function, not a module",
    ):
        images = torch.rand(2, 2, 8, 8, generator=torch.Generator().manual_seed(4))
        assert isinstance(model, nn.Module)
        result = op.sweep(model.eval(), images, op.grid(8, 8, 2, 2), [0.0], progress=False)
        assert result.engine == "dense"
        assert result.engine_note == f"incremental engine not applicable: {reason}"


class ConvBlock(nn.Module):
    """A user's conv-bn-relu block, as found inside many nn.Sequential models."""

    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels_in, channels_out, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)


def test_blocks_of_the_users_own_class_inside_a_sequential_are_read_too() -> None:
    model = _trained(
        nn.Sequential(ConvBlock(2, 4), ConvBlock(4, 6), nn.Flatten(), nn.Linear(6 * 2 * 2, 3))
    )
    layers = layer_chain(model)
    assert not isinstance(layers, str)
    assert [name for name, _ in layers] == [
        "0.conv", "0.bn", "0.relu", "0.max_pool2d",
        "1.conv", "1.bn", "1.relu", "1.max_pool2d",
        "2", "3",
    ]  # fmt: skip
    _chain_equals_model(model, torch.randn(3, 2, 8, 8))
    images = torch.rand(2, 2, 8, 8, generator=torch.Generator().manual_seed(5))
    regions = op.grid(8, 8, 4, 4)
    incremental = op.sweep(model, images, regions, [0.0, 1.0], engine="incremental", progress=False)
    dense = op.sweep(model, images, regions, [0.0, 1.0], engine="dense", progress=False)
    torch.testing.assert_close(incremental.occluded, dense.occluded, rtol=1e-5, atol=1e-6)


def test_a_block_that_is_not_a_chain_is_named_as_the_unsupported_layer() -> None:
    model = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), Residual(), nn.Linear(3, 2)).eval()
    reason = unsupported_reason(model, (2, 8, 8))
    assert reason is not None and "layer 1 (Residual) is not a supported spatial layer" in reason
