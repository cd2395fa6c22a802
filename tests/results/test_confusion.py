"""ConfusionReport and confusion_report: counts, percentages, markdown, bad inputs."""

from __future__ import annotations

import pytest
import torch

from occlusion_probe import ConfusionReport, InputTypeError, InputValueError, confusion_report


def test_percent_rows_and_absent_classes() -> None:
    report = confusion_report(torch.tensor([0, 0, 0, 2]), torch.tensor([0, 2, 2, 2]), 3)
    assert report.confusion.tolist() == [[1, 0, 2], [0, 0, 0], [0, 0, 1]]
    torch.testing.assert_close(
        report.percent[0], torch.tensor([100 / 3, 0, 200 / 3], dtype=torch.float64)
    )
    assert report.percent[1].tolist() == [0.0, 0.0, 0.0]  # absent class: zeros, not NaN
    assert report.recall.tolist() == pytest.approx([1 / 3, 0.0, 1.0])
    assert report.accuracy == 0.5


def test_markdown_states_convention() -> None:
    report = confusion_report(
        torch.tensor([0, 1]), torch.tensor([0, 0]), 2, class_names=["An", "Ha"], kept_ids=[10, 11]
    )
    text = report.to_markdown()
    assert "rows = true class, columns = predicted class" in text
    assert "kept regions [10, 11]" in text
    assert "| Ha | 100.0 | 0.0 |" in text
    assert "| An | Ha |" in report.to_markdown(["An", "Ha"])
    with pytest.raises(
        InputValueError, match=r"class_names: expected 2 names \(one per class output\), got 1"
    ):
        report.to_markdown(["x"])


def test_report_is_frozen() -> None:
    report = confusion_report(torch.tensor([0]), torch.tensor([0]), 1)
    assert isinstance(report, ConfusionReport)
    with pytest.raises(AttributeError):
        report.accuracy = 0.0  # type: ignore[misc]


def _thousand() -> ConfusionReport:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 1000, (500,), generator=generator)
    predicted = torch.where(
        torch.rand(500, generator=generator) < 0.5,
        labels,
        torch.randint(0, 1000, (500,), generator=generator),
    )
    return confusion_report(labels, predicted, 1000)


def test_repr_is_one_short_line() -> None:
    report = _thousand()
    text = repr(report)
    assert text.startswith("ConfusionReport(500 images, K=1000 classes, ")
    present = int(((report.confusion.sum(0) + report.confusion.sum(1)) > 0).sum())
    assert f"{present} present" in text and "\n" not in text and "tensor(" not in text


def test_markdown_of_a_thousand_classes_shows_the_busiest_present_ones() -> None:
    report = _thousand()
    text = report.to_markdown()
    assert len(text) < 10_000
    assert "Showing 30 of 1000 classes" in text and 'classes="all", max_classes=None' in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    header, body = rows[0], rows[1:]
    assert len(body) == 30 and header.endswith("| other |")
    images = report.confusion.sum(0) + report.confusion.sum(1)
    shown = report.shown_classes()
    assert shown == sorted(shown) and len(shown) == 30
    assert min(int(images[c]) for c in shown) >= max(
        int(images[c]) for c in range(1000) if c not in shown
    )
    for line, t in zip(body, shown, strict=True):
        cells = [float(x) for x in line.strip("| ").split(" | ")[1:]]
        assert sum(cells) == pytest.approx(100.0, abs=0.2)  # shown columns + other
        assert cells[shown.index(t)] == pytest.approx(float(report.percent[t, t]), abs=0.05)
    full = report.to_markdown(classes="all", max_classes=None)
    assert full.count("\n| ") == 1002 and "other" not in full  # header, rule, rows
    two = report.to_markdown(classes=[3, 1])
    assert "| true \\ predicted | 1 | 3 | other |" in two


def test_small_tables_are_unchanged_by_default() -> None:
    report = confusion_report(torch.tensor([0, 2]), torch.tensor([0, 0]), 3)
    assert "| 0 | 100.0 | 0.0 |" in report.to_markdown()  # class 1 has no image
    assert "| 0 | 100.0 | 0.0 | 0.0 |" in report.to_markdown(classes="all")


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        ({"digits": -1}, InputValueError, r"digits: expected an int in \[0, 15\], got -1"),
        ({"digits": 1.5}, InputTypeError, r"digits: expected an int in \[0, 15\], got float"),
        ({"max_classes": 0}, InputValueError, r"max_classes: expected an int in \[1, "),
        ({"classes": "some"}, InputTypeError, 'classes: expected "present", "all" or a sequence'),
        ({"classes": [7]}, InputValueError, r"classes: expected a class index in \[0, 2\]"),
        ({"classes": []}, InputValueError, "classes: expected at least one class, got none"),
    ],
)
def test_markdown_arguments_are_checked(
    arguments: dict[str, object], error: type[Exception], match: str
) -> None:
    report = confusion_report(torch.tensor([0, 1]), torch.tensor([0, 2]), 3)
    with pytest.raises(error, match=match):
        report.to_markdown(**arguments)  # type: ignore[arg-type]


def test_float_labels_and_predictions_out_of_range_are_refused() -> None:
    with pytest.raises(InputTypeError, match="labels: expected an integer tensor of class indices"):
        confusion_report(torch.tensor([0.0, 1.7]), torch.tensor([0, 1]), 2)
    with pytest.raises(InputTypeError, match="predicted: expected an integer tensor"):
        confusion_report(torch.tensor([0, 1]), torch.tensor([True, False]), 2)
    with pytest.raises(InputTypeError, match="labels: expected an integer tensor"):
        confusion_report([0, 1], torch.tensor([0, 1]), 2)  # type: ignore[arg-type]
    with pytest.raises(InputValueError, match=r"predicted: expected class indices in \[0, 1\]"):
        confusion_report(torch.tensor([0, 1]), torch.tensor([0, 2]), 2)
    with pytest.raises(InputValueError, match=r"got values -1\.\.1"):
        confusion_report(torch.tensor([0, 1]), torch.tensor([-1, 1]), 2)
    with pytest.raises(InputValueError, match=r"num_classes: expected an int in \[1, "):
        confusion_report(torch.tensor([0]), torch.tensor([0]), 0)
