from __future__ import annotations

import pytest
import torch
from reference_models import ZooNet, small_cnn
from torch import nn

import occlusion_probe as op
from occlusion_probe import InputTypeError, InputValueError, confusion_report


def test_keep_only_matches_plain_loop() -> None:
    model = small_cnn(classes=4).eval()
    images = torch.rand(10, 1, 12, 12, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 0])
    regions = op.grid(12, 12, 3, 3)
    report = op.keep_only(
        model, images, labels, regions, keep=[5, 6], fill=0.25, progress=False, batch_size=3
    )
    visible = regions.union([5, 6])
    expected = torch.zeros(4, 4, dtype=torch.int64)
    with torch.no_grad():
        for x, y in zip(images, labels, strict=True):
            predicted = int(model(torch.where(visible, x, torch.tensor(0.25))[None]).argmax())
            expected[y, predicted] += 1
    assert torch.equal(report.confusion, expected)
    assert report.kept_ids == (5, 6)
    assert report.accuracy == pytest.approx(float(expected.diagonal().sum()) / 10)


def test_keep_all_regions_is_the_plain_confusion_matrix() -> None:
    model = small_cnn(classes=3).eval()
    images = torch.rand(9, 1, 12, 12)
    labels = torch.arange(9) % 3
    report = op.keep_only(
        model, images, labels, op.grid(12, 12), keep=op.grid(12, 12).ids, progress=False
    )
    with torch.no_grad():
        predicted = model(images).argmax(1)
    assert torch.equal(report.confusion, confusion_report(labels, predicted, 3).confusion)


def test_keep_only_errors() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    images = torch.rand(3, 1, 4, 4)
    regions = op.grid(4, 4, 2, 2)
    with pytest.raises(
        InputValueError, match=r"keep: unknown region ids \[10, 11\]; valid ids are 1..4"
    ):
        op.keep_only(model, images, torch.zeros(3, dtype=torch.int64), regions, progress=False)
    with pytest.raises(
        InputValueError, match="labels: keep_only needs the true class of every image, got None"
    ):
        op.keep_only(model, images, None, regions, keep=[1], progress=False)
    with pytest.raises(InputValueError, match=r"labels: expected class labels in \[0, 1\]"):
        op.keep_only(model, images, torch.tensor([0, 1, 2]), regions, keep=[1], progress=False)
    with pytest.raises(
        InputValueError,
        match=r"labels: expected one label per image, shape \(3,\), got shape \(2,\)",
    ):
        op.keep_only(model, images, torch.tensor([0, 1]), regions, keep=[1], progress=False)


def _plain_keep_only(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Confusion counts of keeping regions 1 and 4 of a 2x2 grid, filled with 0, one image at a time."""
    visible = op.grid(12, 12, 2, 2).union([1, 4])
    expected = torch.zeros(5, 5, dtype=torch.int64)
    with torch.no_grad():
        for x, y in zip(images, labels, strict=True):
            expected[y, int(model(torch.where(visible, x, 0.0)[None]).argmax())] += 1
    return expected


@pytest.mark.parametrize("kind", ["dataclass", "mapping", "tuple"])
def test_keep_only_reads_zoo_outputs(kind: str) -> None:
    images = torch.rand(8, 1, 12, 12, generator=torch.Generator().manual_seed(3))
    labels = torch.arange(8) % 5
    model = ZooNet(kind)
    report = op.keep_only(model, images, labels, op.grid(12, 12, 2, 2), keep=[1, 4], progress=False)
    assert torch.equal(report.confusion, _plain_keep_only(model.net, images, labels))


def test_keep_only_model_boundary() -> None:
    images = torch.rand(8, 1, 12, 12, generator=torch.Generator().manual_seed(4))
    labels = torch.arange(8) % 5
    regions = op.grid(12, 12, 2, 2)
    net = small_cnn().eval()

    class Normalise(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"scores": self.net(x.sub_(0.5))}

    given = images.clone()
    report = op.keep_only(
        Normalise(),
        given,
        labels,
        regions,
        keep=[1, 4],
        output=lambda raw: raw["scores"],
        progress=False,
    )
    assert torch.equal(given, images)
    assert torch.equal(report.confusion, _plain_keep_only(lambda x: net(x - 0.5), images, labels))  # type: ignore[arg-type]
    with pytest.raises(InputTypeError, match=r"got dict with keys \['scores'\]"):
        op.keep_only(Normalise(), images, labels, regions, keep=[1, 4], progress=False)
    with pytest.raises(InputTypeError, match="progress: expected True or False"):
        op.keep_only(net, images, labels, regions, keep=[1, 4], progress="yes")  # type: ignore[arg-type]
    with pytest.raises(InputValueError, match=r"^fill: .* torch.float32 can hold"):
        op.keep_only(net, images, labels, regions, keep=[1, 4], fill=1e39, progress=False)
    # a float64 model gets float64 images (cast from float32) and predicts as the float32 one
    wide = op.keep_only(small_cnn().double(), images, labels, regions, keep=[1, 4], progress=False)
    assert torch.equal(wide.confusion, _plain_keep_only(net, images, labels))


def test_keep_only_refuses_a_bare_id_and_bad_class_names() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    images, labels = torch.rand(3, 1, 4, 4), torch.tensor([0, 1, 0])
    regions = op.grid(4, 4, 2, 2)
    for keep in (1, "1"):
        with pytest.raises(InputTypeError, match="keep: expected a sequence of region ids"):
            op.keep_only(model, images, labels, regions, keep=keep, progress=False)  # type: ignore[arg-type]
    with pytest.raises(InputTypeError, match="class_names: expected a sequence of str"):
        op.keep_only(model, images, labels, regions, keep=[1], class_names="ab", progress=False)
    with pytest.raises(InputValueError, match=r"class_names: expected 2 names \(one per class"):
        op.keep_only(model, images, labels, regions, keep=[1], class_names=["a"], progress=False)
    with pytest.raises(InputValueError, match="class_names: expected distinct names"):
        confusion_report(labels, labels, 2, class_names=["a", "a"])
    report = op.keep_only(model, images, labels, regions, keep=(1,), progress=False)
    assert report.kept_ids == (1,)


def test_keep_only_names_keep_for_bad_ids() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    signals = torch.rand(3, 1, 16)
    segments = op.grid((16,), 4)
    labels = torch.tensor([0, 1, 0])
    for bad in ([1.0], [True]):
        with pytest.raises(InputTypeError, match=r"^keep: expected integer region ids, got \["):
            op.keep_only(model, signals, labels, segments, keep=bad, progress=False)
    with pytest.raises(
        InputValueError, match=r"^keep: unknown region ids \[5\]; valid ids are 1..4"
    ):
        op.keep_only(model, signals, labels, segments, keep=[5], progress=False)
