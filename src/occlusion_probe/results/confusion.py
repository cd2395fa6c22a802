"""ConfusionReport: a confusion matrix with the paper's table convention made explicit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..data import check_label_range
from ..errors import InputValueError
from ..selection import check_bool, check_class_names
from ..tables import optional_import
from .readings import ordinary_tensor

__all__ = ["CONVENTION", "ConfusionReport", "confusion_report", "report_from_counts"]

CONVENTION = "rows = true class, columns = predicted class, each row normalised to 100 %"


@dataclass(frozen=True, eq=False)
class ConfusionReport:
    """A confusion matrix with the paper's table convention made explicit.

    Attributes
    ----------
    confusion : Tensor, shape (K, K), int64
        ``confusion[t, p]``: images of true class t predicted as p (rows = true class).
    percent : Tensor, shape (K, K), float64
        Each row normalised to 100; rows of classes with no image are all zero.
    accuracy : float
        Fraction of images classified correctly, in [0, 1].
    recall : Tensor, shape (K,), float64
        Per-class recall (the diagonal of ``percent`` / 100); 0 for absent classes.
    class_names : tuple of str or None
        The K class names, if given.
    kept_ids : tuple of int
        The regions that stayed visible.

    Examples
    --------
    >>> import torch
    >>> report = confusion_report(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1]), 2)
    >>> report.percent.tolist(), report.accuracy
    ([[50.0, 50.0], [0.0, 100.0]], 0.75)
    """

    confusion: Tensor
    percent: Tensor
    accuracy: float
    recall: Tensor
    class_names: tuple[str, ...] | None = None
    kept_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        k = int(self.confusion.shape[0])
        for name in ("confusion", "percent", "recall"):
            object.__setattr__(self, name, ordinary_tensor(getattr(self, name)))
        object.__setattr__(self, "class_names", check_class_names(self.class_names, k))

    @property
    def num_images(self) -> int:
        """The number of images the matrix counts."""
        return int(self.confusion.sum())

    def to_pandas(self, percent: bool = False) -> Any:
        """The matrix as a ``pandas.DataFrame``: rows = true class, columns = predicted class.

        Parameters
        ----------
        percent : bool
            Row-normalised percentages (float64) instead of the counts (int64).

        Returns
        -------
        pandas.DataFrame, shape (K, K)
            Index named ``"true"``, columns named ``"predicted"``, labelled with the class
            names (indices without names).

        Raises
        ------
        ImportError
            When pandas is not installed (``pip install "occlusion_probe[tables]"``).
        """
        pd = optional_import("pandas", "ConfusionReport.to_pandas")
        flag = check_bool("percent", percent)
        k = int(self.confusion.shape[0])
        labels: list[object] = list(self.class_names) if self.class_names else list(range(k))
        values = (self.percent if flag else self.confusion).cpu().numpy()
        return pd.DataFrame(
            values,
            index=pd.Index(labels, name="true"),
            columns=pd.Index(labels, name="predicted"),
        )

    def to_markdown(self, class_names: Sequence[str] | None = None, digits: int = 1) -> str:
        """The percent table as markdown, with the row/column convention stated above it.

        Parameters
        ----------
        class_names : sequence of str, optional
            Names of the K classes; defaults to ``self.class_names``, then to the indices.
        digits : int
            Decimals of the percentages.

        Returns
        -------
        str
            A sentence stating the convention, the kept regions and the accuracy, then the
            table (rows = true class), ending with a newline.

        Raises
        ------
        InputValueError
            When `class_names` does not hold K names.

        Examples
        --------
        >>> import torch
        >>> report = confusion_report(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1]), 2)
        >>> print(report.to_markdown(["cat", "dog"]))
        Confusion matrix in percent (rows = true class, ...); accuracy 75.0 % over 4 images.
        <BLANKLINE>
        | true \\ predicted | cat | dog |
        | --- | ---: | ---: |
        | cat | 50.0 | 50.0 |
        | dog | 0.0 | 100.0 |
        <BLANKLINE>
        """
        k = int(self.confusion.shape[0])
        given = check_class_names(class_names, k)
        names = given if given is not None else self.class_names
        if names is None:
            names = tuple(str(i) for i in range(k))
        kept = f"kept regions {list(self.kept_ids)}; " if self.kept_ids else ""
        lines = [
            f"Confusion matrix in percent ({CONVENTION}); {kept}accuracy "
            f"{100 * self.accuracy:.{digits}f} % over {self.num_images} images.",
            "",
            "| true \\ predicted | " + " | ".join(names) + " |",
            "| --- |" + " ---: |" * k,
        ]
        for t in range(k):
            cells = " | ".join(f"{float(self.percent[t, p]):.{digits}f}" for p in range(k))
            lines.append(f"| {names[t]} | {cells} |")
        return "\n".join(lines) + "\n"


def confusion_report(
    labels: Tensor,
    predicted: Tensor,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    kept_ids: Sequence[int] = (),
) -> ConfusionReport:
    """A `ConfusionReport` from true labels (n,) and predicted classes (n,).

    Parameters
    ----------
    labels : Tensor, shape (n,)
        True class of each image, in [0, num_classes).
    predicted : Tensor, shape (n,)
        Predicted class of each image.
    num_classes : int
        K, the number of classes.
    class_names : sequence of str, optional
        K distinct names, kept on the report.
    kept_ids : sequence of int
        The regions that stayed visible, kept on the report.

    Returns
    -------
    ConfusionReport
        Counts, row-normalised percentages, accuracy and recall.

    Raises
    ------
    InputValueError
        When `labels` and `predicted` are not two tensors of the same shape (n,), a label
        is outside [0, num_classes), or `class_names` does not hold `num_classes` distinct
        names.
    InputTypeError
        When `class_names` is a single string or holds a non-string.
    """
    check_class_names(class_names, num_classes)
    if labels.shape != predicted.shape or labels.dim() != 1:
        raise InputValueError(
            f"labels, predicted: expected two (n,) tensors, got {tuple(labels.shape)} and {tuple(predicted.shape)}"
        )
    check_label_range("labels", labels, num_classes)
    confusion = torch.bincount(
        labels.to(torch.int64) * num_classes + predicted.to(torch.int64), minlength=num_classes**2
    ).reshape(num_classes, num_classes)
    return report_from_counts(confusion, class_names, tuple(kept_ids))


def report_from_counts(
    confusion: Tensor, class_names: Sequence[str] | None, kept_ids: tuple[int, ...]
) -> ConfusionReport:
    """A `ConfusionReport` from counts (K, K) int64 (rows true class, columns predicted)."""
    counts = confusion.to(torch.float64)
    totals = counts.sum(dim=1, keepdim=True)
    percent = torch.where(totals > 0, 100 * counts / totals.clamp(min=1), torch.zeros_like(counts))
    total = float(counts.sum())
    return ConfusionReport(
        confusion=confusion,
        percent=percent,
        accuracy=float(counts.diagonal().sum()) / total if total else float("nan"),
        recall=percent.diagonal() / 100,
        class_names=tuple(class_names) if class_names is not None else None,
        kept_ids=kept_ids,
    )
