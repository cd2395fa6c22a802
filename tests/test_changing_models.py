"""Models that change under the sweep, or are random at evaluation, are refused (issue 28)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from reference_models import small_cnn
from torch import Tensor, nn

import occlusion_probe as op
from occlusion_probe import InputValueError

IMAGES = torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(5))
LABELS = torch.tensor([0, 1, 2, 0])
REGIONS = op.grid(12, 12, 2, 2)


class _SelfUpdating(nn.Module):
    """Moves its own weights a little on every call."""

    def __init__(self) -> None:
        super().__init__()
        self.net = small_cnn().eval()

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        with torch.no_grad():
            self.net[0].weight.mul_(0.99)  # type: ignore[operator]
        return out


class _RandomAtEvaluation(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = small_cnn().eval()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(F.dropout(x, 0.5, training=True))


def _forced_train_batch_norm() -> nn.Module:
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * 12 * 12, 5),
    )  # fmt: skip

    def force_train(module: nn.Module, _args: object) -> None:
        module.train()

    model[1].register_forward_pre_hook(force_train)
    return model


@pytest.mark.parametrize(
    ("make", "cause"),
    [
        (_SelfUpdating, r"changed its own parameters or buffers \['net.0.weight'\]"),
        (
            _forced_train_batch_norm,
            r"changed its own parameters or buffers \['1.running_mean', '1.running_var'",
        ),
        (_RandomAtEvaluation, "two calls on the same two images gave outputs differing"),
    ],
)
def test_models_that_change_or_are_random_are_refused(make: type[nn.Module], cause: str) -> None:
    with pytest.raises(InputValueError, match=f"^model: .*{cause}"):
        op.sweep(make(), IMAGES, REGIONS, progress=False)
    with pytest.raises(InputValueError, match=f"^model: .*{cause}"):
        op.keep_only(make(), IMAGES, LABELS, REGIONS, keep=[1], progress=False)
    with pytest.raises(InputValueError, match=f"^model: .*{cause}"):
        op.perturbation_curve(make(), IMAGES, REGIONS, [1, 2, 3, 4], labels=LABELS, progress=False)


def test_a_plain_model_in_train_mode_runs_in_eval_mode() -> None:
    model = small_cnn().train()
    result = op.sweep(model, IMAGES, REGIONS, [0.0], progress=False)
    expected = op.sweep(small_cnn().eval(), IMAGES, REGIONS, [0.0], progress=False)
    torch.testing.assert_close(result.occluded, expected.occluded)
    assert model.training
