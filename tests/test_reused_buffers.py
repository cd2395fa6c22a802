"""Nothing is kept by reference that the caller or the model can change (issue 28)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from reference_models import small_cnn
from torch import Tensor, nn

import occlusion_probe as op
from occlusion_probe import InputTypeError, InputValueError

LABELS = torch.tensor([0, 1, 2, 0])


def _images() -> Tensor:
    return torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(3))


def _reused_loader(
    images: Tensor, labels: Tensor, size: int = 1
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yields the same two tensors every time, refilled (as pinned-memory loaders do)."""
    buffer = torch.empty(size, *images.shape[1:])
    label_buffer = torch.empty(size, dtype=torch.int64)
    for start in range(0, images.shape[0], size):
        buffer.copy_(images[start : start + size])
        label_buffer.copy_(labels[start : start + size])
        yield buffer, label_buffer


def test_a_loader_reusing_its_buffers_gives_the_tensors_result() -> None:
    model, images = small_cnn().eval(), _images()
    regions = op.grid(12, 12, 2, 2)
    expected = op.sweep(model, images, regions, [0.0, 0.5], LABELS, progress=False)
    streamed = op.sweep(model, _reused_loader(images, LABELS), regions, [0.0, 0.5], progress=False)
    assert streamed.labels is not None
    assert streamed.labels.tolist() == LABELS.tolist()
    torch.testing.assert_close(streamed.baseline, expected.baseline)
    torch.testing.assert_close(streamed.occluded, expected.occluded)


def test_keep_only_and_curves_with_a_reusing_loader() -> None:
    model, images = small_cnn().eval(), _images()
    regions = op.grid(12, 12, 2, 2)
    report = op.keep_only(model, images, LABELS, regions, keep=[1, 2], progress=False)
    streamed = op.keep_only(
        model, _reused_loader(images, LABELS), None, regions, keep=[1, 2], progress=False
    )
    assert torch.equal(report.confusion, streamed.confusion)
    curve = op.perturbation_curve(
        model, images, regions, [1, 2, 3, 4], labels=LABELS, progress=False
    )
    streamed_curve = op.perturbation_curve(
        model, _reused_loader(images, LABELS), regions, [1, 2, 3, 4], progress=False
    )
    assert torch.equal(curve.labels, streamed_curve.labels)
    torch.testing.assert_close(curve.accuracy, streamed_curve.accuracy)


class _ReusedOutput(nn.Module):
    """Writes its logits into one buffer and returns that same tensor on every call."""

    def __init__(self) -> None:
        super().__init__()
        self.net = small_cnn().eval()
        self.out: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        logits = self.net(x)
        if self.out is None or self.out.shape != logits.shape:
            self.out = torch.empty_like(logits)
        return self.out.copy_(logits)


@pytest.mark.parametrize("output", ["logits", "probabilities", "callable"])
def test_a_model_returning_one_reused_buffer(output: str) -> None:
    model, images = _ReusedOutput(), _images()
    regions = op.grid(12, 12, 2, 2)
    spec: op.OutputSpec = (lambda raw: raw) if output == "callable" else output
    if output == "probabilities":
        net = model.net
        model.net = nn.Sequential(net, nn.Softmax(dim=1))
    result = op.sweep(model, images, regions, [0.0], output=spec, progress=False, batch_size=2)
    expected = op.sweep(model.net, images, regions, [0.0], output=spec, progress=False)
    torch.testing.assert_close(result.baseline, expected.baseline)
    torch.testing.assert_close(result.occluded, expected.occluded)


def test_a_fill_callable_writing_into_its_input_leaves_the_images_alone() -> None:
    model, images = small_cnn().eval(), _images()
    kept = images.clone()
    regions = op.grid(12, 12, 2, 2)

    def zeroing(batch: Tensor) -> Tensor:
        return batch.mul_(0)

    result = op.sweep(model, images, regions, [zeroing], progress=False)
    assert torch.equal(images, kept)
    expected = op.sweep(model, images, regions, [0.0], progress=False)
    torch.testing.assert_close(result.occluded, expected.occluded)
    op.keep_only(model, images, LABELS, regions, keep=[1], fill=zeroing, progress=False)
    assert torch.equal(images, kept)


def test_fill_callables_must_return_floats_and_treat_images_alone(cnn: nn.Module) -> None:
    images, regions = _images(), op.grid(12, 12, 2, 2)
    with pytest.raises(InputTypeError, match="'as_int64' must return a floating-point Tensor"):

        def as_int64(batch: Tensor) -> Tensor:
            return torch.zeros(batch.shape, dtype=torch.int64)

        op.sweep(cnn, images, regions, [as_int64], progress=False)

    def batch_mean(batch: Tensor) -> Tensor:
        return batch.mean(dim=0, keepdim=True)

    with pytest.raises(InputValueError, match="'batch_mean' gives image 0 another fill alone"):
        op.sweep(cnn, images, regions, [batch_mean], progress=False)

    def own_mean(batch: Tensor) -> Tensor:
        return batch.mean(dim=(1, 2, 3), keepdim=True)

    op.sweep(cnn, images, regions, [own_mean], progress=False)


def test_a_one_d_fill_tensor_of_width_values_is_ambiguous(cnn: nn.Module) -> None:
    images, regions = _images(), op.grid(12, 12, 2, 2)
    with pytest.raises(
        InputValueError, match=r"fills\[0\]: a 1-d tensor of 12 values is ambiguous"
    ):
        op.sweep(cnn, images, regions, torch.linspace(0, 1, 12), progress=False)
    columns = torch.linspace(0, 1, 12).reshape(1, 1, 12)
    op.sweep(cnn, images, regions, [columns], progress=False)


def test_fill_of_keep_only_and_curves_is_named_fill(cnn: nn.Module) -> None:
    images, regions = _images(), op.grid(12, 12, 2, 2)
    with pytest.raises(InputTypeError, match=r"^fill: expected a number, tensor or callable"):
        op.keep_only(cnn, images, LABELS, regions, keep=[1], fill=[0, 0.5], progress=False)  # type: ignore[arg-type]
    with pytest.raises(InputValueError, match=r"^fill: expected a finite number, got nan"):
        op.keep_only(cnn, images, LABELS, regions, keep=[1], fill=float("nan"), progress=False)
    with pytest.raises(InputValueError, match=r"^fill: expected a finite number, got nan"):
        op.perturbation_curve(
            cnn, images, regions, [1, 2, 3, 4], labels=LABELS, fill=float("nan"), progress=False
        )
