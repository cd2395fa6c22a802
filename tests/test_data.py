"""Streaming input: an iterable of (images, labels) batches, such as a DataLoader."""

from __future__ import annotations

import pytest
import torch
from reference_models import small_cnn
from torch.utils.data import DataLoader, TensorDataset

import occlusion_probe as op
from occlusion_probe import InputValueError


@pytest.fixture
def data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(4)
    return torch.rand(11, 1, 12, 12, generator=generator), torch.randint(
        0, 5, (11,), generator=generator
    )


def test_dataloader_equals_tensor(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = data
    model = small_cnn().eval()
    regions = op.grid(12, 12, 2, 2)
    loader = DataLoader(TensorDataset(images, labels), batch_size=4)
    streamed = op.sweep(model, loader, regions, progress=False)
    whole = op.sweep(model, images, regions, labels=labels, progress=False)
    torch.testing.assert_close(streamed.occluded, whole.occluded)
    assert streamed.labels is not None and torch.equal(streamed.labels, labels)
    report = op.keep_only(model, loader, None, regions, keep=[1, 2], progress=False)
    assert torch.equal(
        report.confusion,
        op.keep_only(model, images, labels, regions, keep=[1, 2], progress=False).confusion,
    )


def test_generator_of_image_batches_without_labels(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, _ = data
    model = small_cnn().eval()
    batches = (images[i : i + 3] for i in range(0, 11, 3))
    result = op.sweep(model, batches, op.grid(12, 12, 2, 2), progress=False)
    assert result.labels is None and result.occluded.shape[0] == 11


def test_stream_errors(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = data
    model = small_cnn().eval()
    regions = op.grid(12, 12, 2, 2)
    with pytest.raises(InputValueError, match="images: the stream of batches is empty"):
        op.sweep(model, iter([]), regions, progress=False)
    with pytest.raises(InputValueError, match="labels: must be None when images is a stream"):
        op.sweep(model, [(images, labels)], regions, labels=labels, progress=False)
    bad = [(images[:4], labels[:4]), (images[:4, :, :10], labels[:4])]
    with pytest.raises(
        InputValueError, match=r"images\[batch 1\]: image size 10x12 does not match"
    ):
        op.sweep(model, bad, regions, progress=False)
    mixed = [(images[:4], labels[:4]), images[4:8]]
    with pytest.raises(InputValueError, match="some batches carry labels and others do not"):
        op.sweep(model, mixed, regions, progress=False)
    with pytest.raises(
        InputValueError, match=r"images\[batch 0\]: expected a pair \(images, labels\), got 3 items"
    ):
        op.sweep(model, [(images, labels, labels)], regions, progress=False)
    nan = images[:4].clone()
    nan[1, 0, 0, 0] = float("inf")
    with pytest.raises(
        InputValueError,
        match=r"images\[batch 1\]: images contain NaN or inf values \(first images \[5\]\)",
    ):
        op.sweep(model, [(images[:4], labels[:4]), (nan, labels[:4])], regions, progress=False)
    with pytest.raises(
        InputValueError, match=r"labels\[batch 1\]: expected class labels in \[0, 4\]"
    ):
        op.sweep(
            model,
            [(images[:4], labels[:4]), (images[:2], torch.tensor([0, 9]))],
            regions,
            progress=False,
        )


def test_a_stream_mixing_batches_with_and_without_their_channel_axis_says_so() -> None:
    signals = torch.rand(4, 1, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 0])
    segments = op.grid((16,), 4)

    def classify(batch: torch.Tensor) -> torch.Tensor:
        return batch.reshape(batch.shape[0], -1)[:, :3]

    without_first = [(signals[:2, 0], labels[:2]), (signals[2:], labels[2:])]
    with pytest.raises(
        InputValueError,
        match=r"^images\[batch 1\]: the first batch was given without a channel axis \(N, L\), "
        r"this one with \(shape \(2, 1, 16\)\)",
    ):
        op.sweep(classify, without_first, segments, progress=False)
    with_first = [(signals[:2], labels[:2]), (signals[2:, 0], labels[2:])]
    with pytest.raises(
        InputValueError,
        match=r"^images\[batch 1\]: the first batch was given with a channel axis \(N, C, L\), "
        r"this one without \(shape \(2, 16\)\)",
    ):
        op.sweep(classify, with_first, segments, progress=False)
    # one form throughout equals the whole tensor's sweep
    streamed = op.sweep(
        classify,
        [(signals[:2, 0], labels[:2]), (signals[2:, 0], labels[2:])],
        segments,
        progress=False,
    )
    whole = op.sweep(classify, signals[:, 0], segments, labels=labels, progress=False)
    assert torch.equal(streamed.occluded, whole.occluded)
