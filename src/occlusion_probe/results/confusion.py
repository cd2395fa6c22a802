"""ConfusionReport: a confusion matrix with the paper's table convention made explicit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..data import check_label_range
from ..errors import InputTypeError, InputValueError, describe
from ..selection import check_bool, check_class_names, class_index, int_in_range
from ..tables import optional_import
from .readings import ordinary_tensor
from .summary import class_summary

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

    def __repr__(self) -> str:
        k = int(self.confusion.shape[0])
        kept = f", kept regions {list(self.kept_ids)}" if self.kept_ids else ""
        present = int(((self.confusion.sum(dim=0) + self.confusion.sum(dim=1)) > 0).sum())
        return (
            f"ConfusionReport({self.num_images} images, {class_summary(k, self.class_names)}, "
            f"{present} present, accuracy {self.accuracy:.3f}{kept})"
        )

    def shown_classes(self, classes: object = "present", max_classes: object = 30) -> list[int]:
        """The class indices `to_markdown` shows, in index order (see its parameters)."""
        k = int(self.confusion.shape[0])
        images = self.confusion.sum(dim=0) + self.confusion.sum(dim=1)  # as true or predicted
        if isinstance(classes, str) and classes == "all":
            chosen = list(range(k))
        elif isinstance(classes, str) and classes == "present":
            chosen = [c for c in range(k) if int(images[c]) > 0]
        elif isinstance(classes, Sequence) and not isinstance(classes, (str, bytes)):
            chosen = sorted({class_index(c, k, self.class_names, "classes") for c in classes})
            if not chosen:
                raise InputValueError("classes: expected at least one class, got none")
        else:
            raise InputTypeError(
                'classes: expected "present", "all" or a sequence of class indices or names, '
                f"got {describe(classes)}"
            )
        if max_classes is None:
            return chosen
        cap = int_in_range("max_classes", max_classes, 1, 2**31)
        if len(chosen) <= cap:
            return chosen
        ranked = sorted(chosen, key=lambda c: (-int(images[c]), c))
        return sorted(ranked[:cap])

    def to_markdown(
        self,
        class_names: Sequence[str] | None = None,
        digits: int = 1,
        *,
        classes: str | Sequence[object] = "present",
        max_classes: int | None = 30,
    ) -> str:
        """The percent table as markdown, with the row/column convention stated above it.

        With many classes the full K x K table is unreadable (1,000 classes make 6 MB), so
        by default it shows the classes present (as a true class or a prediction), at most
        `max_classes` of them (those with the most images); an ``other`` column then holds
        each row's percent in the columns not shown, and a line above the table says what
        was left out. ``classes="all", max_classes=None`` gives the full table.

        Parameters
        ----------
        class_names : sequence of str, optional
            Names of the K classes; defaults to ``self.class_names``, then to the indices.
        digits : int
            Decimals of the percentages, in [0, 15].
        classes : "present", "all" or sequence of int or str
            Which classes get a row and a column: those with an image (as true class or
            prediction), all K, or the given indices or names.
        max_classes : int or None
            At most this many classes are shown (those with the most images as true class
            plus as prediction); None: no limit.

        Returns
        -------
        str
            A sentence stating the convention, the kept regions and the accuracy, then the
            table (rows = true class), ending with a newline.

        Raises
        ------
        InputValueError
            When `class_names` does not hold K names, `digits` is outside [0, 15],
            `max_classes` is below 1, or a class in `classes` is unknown.
        InputTypeError
            When `digits` or `max_classes` is not an int, or `classes` is of another type.

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
        places = int_in_range("digits", digits, 0, 15)
        shown = self.shown_classes(classes, max_classes)
        names = given if given is not None else self.class_names
        if names is None:
            names = tuple(str(i) for i in range(k))
        kept = f"kept regions {list(self.kept_ids)}; " if self.kept_ids else ""
        lines = [
            f"Confusion matrix in percent ({CONVENTION}); {kept}accuracy "
            f"{100 * self.accuracy:.{places}f} % over {self.num_images} images.",
            "",
        ]
        other = len(shown) < k
        if other:
            lines[1:1] = [
                f"Showing {len(shown)} of {k} classes (classes={classes!r}, "
                f"max_classes={max_classes!r}); the 'other' column holds each row's percent "
                'in the columns not shown. classes="all", max_classes=None gives the full table.'
            ]
        lines += [
            "| true \\ predicted | "
            + " | ".join(names[c] for c in shown)
            + (" | other |" if other else " |"),
            "| --- |" + " ---: |" * (len(shown) + int(other)),
        ]
        for t in shown:
            row = self.percent[t].to(torch.float64)
            cells = [f"{float(row[p]):.{places}f}" for p in shown]
            if other:
                rest = float(row.sum()) - float(row[shown].sum())
                cells.append(f"{max(rest, 0.0):.{places}f}")
            lines.append(f"| {names[t]} | {' | '.join(cells)} |")
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
        or a prediction is outside [0, num_classes), or `class_names` does not hold
        `num_classes` distinct names.
    InputTypeError
        When `labels` or `predicted` is not an integer tensor (float labels are refused,
        never truncated), or `class_names` is a single string or holds a non-string.
    """
    k = int_in_range("num_classes", num_classes, 1, 2**31)
    check_class_names(class_names, k)
    for name, value in (("labels", labels), ("predicted", predicted)):
        # A float label would be truncated to a class (2.7 -> 2): refused, never coerced.
        if not isinstance(value, Tensor) or value.is_floating_point() or value.is_complex():
            raise InputTypeError(
                f"{name}: expected an integer tensor of class indices, got {describe(value)}"
            )
        if value.dtype == torch.bool:
            raise InputTypeError(
                f"{name}: expected an integer tensor of class indices, got {describe(value)}"
            )
    if labels.shape != predicted.shape or labels.dim() != 1:
        raise InputValueError(
            f"labels, predicted: expected two (n,) tensors, got {tuple(labels.shape)} and {tuple(predicted.shape)}"
        )
    check_label_range("labels", labels, num_classes)
    if predicted.numel() and (int(predicted.min()) < 0 or int(predicted.max()) >= k):
        raise InputValueError(
            f"predicted: expected class indices in [0, {k - 1}] (num_classes = {k}), got values "
            f"{int(predicted.min())}..{int(predicted.max())}"
        )
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
