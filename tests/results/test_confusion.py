"""ConfusionReport and confusion_report: counts, percentages, markdown, bad inputs."""

from __future__ import annotations

import pytest
import torch

from occlusion_probe import ConfusionReport, InputValueError, confusion_report


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
