"""keep_only(): verify a finding by hiding everything except the chosen regions."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .batching import fixed_batch_size
from .data import Images, ImageSource
from .errors import InputTypeError, InputValueError, describe
from .fills import FillSpec, check_fills_fit, fill_for_masks, resolve_fills
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
from .results.confusion import ConfusionReport, confusion_report
from .selection import check_class_names
from .sweep import check_common_arguments

__all__ = ["ConfusionReport", "confusion_report", "keep_only"]


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
    fill : number, Tensor, callable or RegionFill
        A number, a tensor broadcastable to one image, a callable images -> fill images, or
        a region-aware fill (`occlusion_probe.fills`), which gets the pixels outside
        `keep` as its region.
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
    if regions.weights is not None:
        raise InputValueError(
            "regions: keep_only keeps or fills whole regions and does not read soft weights; "
            "got soft regions (Regions.soften): pass the regions before soften"
        )
    if isinstance(keep, (str, bytes)) or not isinstance(keep, (Sequence, Tensor)):
        raise InputTypeError(
            f"keep: expected a sequence of region ids (e.g. [10, 11], or [10] for one), "
            f"got {describe(keep)}"
        )
    check_class_names(class_names)
    kept_ids = tuple(regions.ids[p] for p in regions.positions(keep, "keep"))
    source = ImageSource(images, labels, regions.spatial_shape)
    if not source.is_stream and labels is None:
        raise InputValueError("labels: keep_only needs the true class of every image, got None")
    (fill_spec,) = resolve_fills([fill], source.image_shape, "fill")
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
                masked = torch.where(visible, x, fill_for_masks(fill_spec, x, ~visible[None]))
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
