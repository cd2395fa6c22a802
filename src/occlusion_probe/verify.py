"""keep_only(): verify a finding by hiding everything except the chosen regions."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .batching import fixed_batch_size
from .data import Images, ImageSource, check_label_range
from .errors import InputTypeError, InputValueError, describe
from .fills import FillSpec, check_fills_fit, resolve_fills, stack_fills
from .model import (
    CheckedForward,
    Model,
    OutputSpec,
    cast_images,
    evaluation_mode,
    input_dtype,
    resolve_device,
)
from .regions import Regions
from .result import ordinary_tensor
from .selection import check_bool, check_class_names
from .sweep import check_common_arguments
from .tables import optional_import

__all__ = ["ConfusionReport", "confusion_report", "keep_only"]

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
    return _report_from_counts(confusion, class_names, tuple(kept_ids))


def _report_from_counts(
    confusion: Tensor, class_names: Sequence[str] | None, kept_ids: tuple[int, ...]
) -> ConfusionReport:
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


def keep_only(
    model: Model,
    images: Images,
    labels: Tensor | Sequence[int] | None,
    regions: Regions,
    keep: Sequence[int] = (10, 11),
    fill: FillSpec = 0.0,
    *,
    output: OutputSpec = "softmax",
    batch_size: int | str = "auto",
    device: torch.device | str | None = None,
    progress: bool = True,
    class_names: Sequence[str] | None = None,
) -> ConfusionReport:
    """Classify the images with every pixel outside the `keep` regions set to `fill`.

    The paper's verification (Tables 3 and 4): keep areas {10, 11} (the mouth), or
    {6, 7, 10, 11} (eyes and mouth), and see which classes survive.

    Parameters
    ----------
    model : callable, Tensor (B, C, H, W) -> Tensor (B, K) or a model output holding it
        Any classifier, called by the same rules as in `sweep`: in eval mode under
        ``torch.inference_mode()``, on a copy of the images in its floating dtype, its output
        read by the rule of `sweep` (a Tensor, ``.logits``, ``["logits"]`` or element 0).
    images : Tensor, shape (N, C, H, W) or (N, H, W), or an iterable of (images, labels) batches
        Raw images in the space where `fill` makes sense, as in `sweep`.
    labels : Tensor or sequence of int, shape (N,), or None
        True classes; None when the batches carry labels.
    regions : Regions, masks (R, H, W)
        The regions `keep` refers to.
    keep : sequence of int
        Region ids that stay visible (a list or tuple, even for one region: ``keep=[10]``);
        ``keep=regions.ids`` gives the plain confusion matrix.
    fill : number, Tensor or callable
        A number, a tensor broadcastable to one image, or a callable images -> fill images.
    output : str or callable
        What the predicted class is the argmax of: the model's class outputs as found by the
        rule of `sweep` (``"softmax"``, the default as in `sweep`, ``"logits"`` and
        ``"probabilities"`` predict the same class: it is taken from the outputs before any
        softmax, so softmax's float rounding cannot tie two classes), or a callable that
        receives exactly what the model returned and gives a floating (B, K) tensor (for
        outputs the rule does not read).
    batch_size : int or "auto"
        Masked images per model call, or ``"auto"`` (the size an earlier sweep of this model
        timed as fastest, else a memory budget's).
    device : torch.device or str, optional
        Where the model runs; default: the model's device (for a callable without
        parameters, the images' device), checked as in `sweep`.
    progress : bool
        Show a tqdm progress bar.
    class_names : sequence of str, optional
        K distinct names, kept on the report (checked before the model runs, and their
        number against K once the model's outputs are known).

    Returns
    -------
    ConfusionReport
        With ``confusion`` (K, K) counts, rows = true class.

    Raises
    ------
    InputTypeError
        When an argument has a type `keep_only` cannot work with.
    InputValueError
        When an argument has an unusable value (e.g. an unknown region id in `keep`, missing
        labels), or the model produces NaN or inf outputs.

    Examples
    --------
    >>> import torch, occlusion_probe as op
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    >>> report = op.keep_only(model, torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2]),
    ...                       op.grid(8, 8, 2, 2), keep=[1, 4], progress=False)
    >>> tuple(report.confusion.shape), int(report.confusion.sum())
    ((3, 3), 6)
    """
    model = check_common_arguments(model, regions, batch_size, progress)
    if isinstance(keep, (str, bytes)) or not isinstance(keep, (Sequence, Tensor)):
        raise InputTypeError(
            f"keep: expected a sequence of region ids (e.g. [10, 11], or [10] for one), "
            f"got {describe(keep)}"
        )
    check_class_names(class_names)
    kept_ids = tuple(regions.ids[p] for p in regions.positions(keep))
    source = ImageSource(images, labels, regions.height, regions.width)
    if not source.is_stream and labels is None:
        raise InputValueError("labels: keep_only needs the true class of every image, got None")
    (fill_spec,) = resolve_fills([fill], source.image_shape, "fill")  # type: ignore[arg-type]
    run_device = resolve_device(device, model, source.device)
    dtype = input_dtype(model) or source.dtype
    check_fills_fit([fill_spec], dtype, "fill")
    # The argmax of softmax is the argmax of the outputs it is computed from.
    predict_from: OutputSpec = "logits" if output == "softmax" else output
    forward = CheckedForward(model, predict_from, single_channel=source.single_channel, dtype=dtype)
    forward.check_first(source.first_images(), run_device)
    visible = regions.union(kept_ids).to(run_device)
    # An earlier sweep's timed choice for this model and input, else the memory budget's.
    per_call = fixed_batch_size(
        model, batch_size, source.image_shape, dtype, run_device, source.num_images
    )
    all_labels: list[Tensor] = []
    all_predicted: list[Tensor] = []
    num_classes = 0
    bar = tqdm(
        total=source.num_images, disable=not progress, unit="img", desc="keep-only", file=sys.stderr
    )
    try:
        with evaluation_mode(model):
            for chunk in source:
                if chunk.labels is None:
                    raise InputValueError(
                        f"images[batch {chunk.index}]: keep_only needs labels with every batch"
                    )
                forward.where = (
                    f"batch {chunk.index}" if source.is_stream else f"chunk {chunk.index}"
                )
                x = cast_images(chunk.images.to(run_device), dtype)
                masked = torch.where(visible, x, stack_fills([fill_spec], x)[0])
                for start in range(0, masked.shape[0], per_call):
                    # `masked` is built here and each slice used once: no copy needed.
                    outputs = forward(masked[start : start + per_call], scratch=True)
                    num_classes = int(outputs.shape[1])
                    finite = torch.isfinite(outputs).all(dim=1)
                    if not bool(finite.all()):
                        raise InputValueError(
                            "model: produced NaN or inf outputs for masked images "
                            f"{(torch.nonzero(~finite).flatten()[:10] + start).tolist()} of batch {chunk.index}"
                        )
                    all_predicted.append(outputs.argmax(dim=1).cpu())
                all_labels.append(chunk.labels)
                bar.update(x.shape[0])
    finally:
        bar.close()
    return confusion_report(
        torch.cat(all_labels), torch.cat(all_predicted), num_classes, class_names, kept_ids
    )
