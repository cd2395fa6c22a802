"""sweep(): occlude every region with every fill, run the model, keep every class output."""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from collections.abc import Sequence
from typing import Literal, overload

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import distributed
from .approximate import Approximate, check_approximate
from .batching import BatchPlan, auto_batch_size
from .checkpoint import Checkpoint, Fingerprint, check_checkpoint_path
from .chunks import ChunkEngine
from .collect import ClassMeanCollector, FullCollector, SweepMeta
from .data import DEFAULT_CHUNK_IMAGES, Images, ImageSource, check_label_range
from .engines.auto import choose_engine
from .errors import InputTypeError, InputValueError, check_one_argument_callable, describe
from .fills import (
    FillSpec,
    check_fills_fit,
    disjoint_layers,
    layer_fills,
    needs_layers,
    resolve_fills,
    stack_fills,
    warn_if_outside,
)
from .model import (
    CheckedForward,
    Model,
    OutputSpec,
    as_model,
    cast_images,
    check_finite_outputs,
    evaluation_mode,
    input_dtype,
    output_name,
    resolve_device,
)
from .refine import Refine, RefinePlan
from .regions import Regions
from .results import ClassMeanResult, SweepResult
from .runplan import StoredPlan, resumed_engine, warn_if_plan_differs
from .selection import check_class_names

__all__ = [
    "DEFAULT_FILLS",
    "auto_batch_size",
    "choose_engine",
    "sweep",
]  # auto_batch_size: batching.py; choose_engine: engines/auto.py

DEFAULT_FILLS: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def check_common_arguments(
    model: object, regions: object, batch_size: object, progress: object
) -> Model:
    """Checks shared by `sweep` and `keep_only`; returns the model to call.

    Parameters
    ----------
    model : object
        Must be callable, (B, C, H, W) -> (B, K): a model instance (not its class, not a
        bare ``nn.Module()`` without forward), or a ``torch.export.ExportedProgram`` (its
        ``.module()`` is run).
    regions : object
        Must be a `Regions`.
    batch_size : object
        Must be a positive int or ``"auto"``.
    progress : object
        Must be True or False.

    Raises
    ------
    InputTypeError
        When `model` is not callable, `regions` is not a `Regions` or `progress` not a bool.
    InputValueError
        When `batch_size` is neither a positive int nor ``"auto"``.
    """
    model = as_model(model)
    if not callable(model):
        raise InputTypeError(
            f"model: expected a callable (B, C, H, W) -> (B, K), got {describe(model)}"
        )
    # torch.compile's wrapper sets its forward on the instance
    if (
        isinstance(model, nn.Module)
        and type(model).forward is nn.Module.forward
        and "forward" not in vars(model)
    ):
        raise InputTypeError(
            f"model: the {type(model).__name__} given defines no forward(); expected a "
            "module (B, C, H, W) -> (B, K)"
        )
    check_one_argument_callable("model", model, "a batch of images (B, C, H, W)")
    if not isinstance(regions, Regions):
        raise InputTypeError(
            f"regions: expected a Regions (see occlusion_probe.grid), got {describe(regions)}"
        )
    regions.check_unchanged()
    if batch_size != "auto" and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise InputValueError(f'batch_size: expected a positive int or "auto", got {batch_size!r}')
    if not isinstance(progress, bool):
        raise InputTypeError(f"progress: expected True or False, got {describe(progress)}")
    return model


@overload
def sweep(
    model: Model,
    images: Images,
    regions: Regions,
    fills: Sequence[FillSpec] | FillSpec = ...,
    labels: Tensor | Sequence[int] | None = ...,
    *,
    output: OutputSpec = ...,
    batch_size: int | Literal["auto"] = ...,
    device: torch.device | str | None = ...,
    progress: bool = ...,
    class_names: Sequence[str] | None = ...,
    engine: Literal["auto", "dense", "incremental"] = ...,
    reduce: None = ...,
    checkpoint: str | os.PathLike[str] | None = ...,
    refine: Refine | None = ...,
    approximate: float | Approximate | None = ...,
) -> SweepResult: ...


@overload
def sweep(
    model: Model,
    images: Images,
    regions: Regions,
    fills: Sequence[FillSpec] | FillSpec = ...,
    labels: Tensor | Sequence[int] | None = ...,
    *,
    output: OutputSpec = ...,
    batch_size: int | Literal["auto"] = ...,
    device: torch.device | str | None = ...,
    progress: bool = ...,
    class_names: Sequence[str] | None = ...,
    engine: Literal["auto", "dense", "incremental"] = ...,
    reduce: Literal["class_mean"],
    checkpoint: str | os.PathLike[str] | None = ...,
    refine: None = ...,
    approximate: None = ...,
) -> ClassMeanResult: ...


def sweep(
    model: Model,
    images: Images,
    regions: Regions,
    fills: Sequence[FillSpec] | FillSpec = DEFAULT_FILLS,
    labels: Tensor | Sequence[int] | None = None,
    *,
    output: OutputSpec = "softmax",
    batch_size: int | Literal["auto"] = "auto",
    device: torch.device | str | None = None,
    progress: bool = True,
    class_names: Sequence[str] | None = None,
    engine: Literal["auto", "dense", "incremental"] = "auto",
    reduce: Literal["class_mean"] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    refine: Refine | None = None,
    approximate: float | Approximate | None = None,
) -> SweepResult | ClassMeanResult:
    """Occlude every region with every fill and record all class outputs.

    Parameters
    ----------
    model : callable, Tensor (B, C, H, W) -> Tensor (B, K) or a model output holding it
        Any classifier. It runs under ``torch.inference_mode()`` in eval mode; each module's
        train/eval flag is restored afterwards. It gets a copy of the images in its floating
        dtype (that of most of a module's floating parameters; a callable gets the images'), so
        in-place ops on its input change nothing of the caller's. Its output is read by one
        rule: a Tensor (B, K); else its ``.logits``; else its ``["logits"]`` (a Mapping);
        else its element 0 (a tuple or list); anything else needs a callable `output`. K is
        fixed by a first check, made before any heavy work: two calls on the same first two
        images, which must give the same outputs and leave the parameters and buffers
        unchanged (a model that is random or updates itself in eval mode is refused).
        Preprocessing that must follow the mask (normalisation, whitening) belongs inside
        the model. A ``torch.export`` program (or its ``.module()``) runs as exported.
    images : Tensor, shape (N, C, H, W) or (N, H, W), or an iterable of (images, labels) batches
        Raw images in the space where the fills make sense (e.g. pixels in [0, 1]).
        (N, H, W) is one channel, and the model is then called with (B, H, W).
    regions : Regions, masks (R, H, W)
        The R regions to occlude, each in turn.
    fills : sequence of V fills, or one fill
        Each fill is a number, a tensor broadcastable to one image, a callable
        ``images (n, C, H, W) -> fill images``, or a region-aware fill from
        `occlusion_probe.fills` (``patch_mean()``, ``image_mean()``, ``blur(sigma)``,
        ``linear_imputation()``), which gets each region's mask; the regions then run in
        layers of disjoint masks. Default: the paper's 0.0, 0.2, ..., 1.0.
    labels : Tensor or sequence of int, shape (N,), optional
        True classes, needed for ``class_curves(correct_only=True)`` and ``reduce="class_mean"``.
    output : str or callable
        What is recorded of the (B, K) model outputs, in float32 (float64 for a float64
        model): ``"softmax"`` (the default; a model whose outputs already are probabilities
        gets a warning), the raw ``"logits"``, ``"probabilities"`` (outputs recorded as they
        are), or a callable that receives exactly what the model returned and gives a
        floating (B, K) tensor.
    batch_size : int or "auto"
        Occluded images per model call, or ``"auto"``: candidates around a memory budget,
        contiguous and channels-last, timed on the sweep's first blocks; the fastest is kept
        and remembered for the model (docs: "How big the batches are").
    device : torch.device or str, optional
        Where masks are built and the model runs; default: the model's device (for a
        callable without parameters, the images' device). It must exist on this machine
        and match the device of a module's parameters, index included.
    progress : bool
        Show a tqdm progress bar.
    class_names : sequence of str, optional
        K names, kept on the result.
    engine : {"auto", "dense", "incremental"}
        ``"dense"`` (any model), ``"incremental"`` (exact, recomputes only changed patches of a
        conv stack), or ``"auto"`` (incremental when the model qualifies; ``result.engine_note``
        says why not otherwise).
    reduce : {None, "class_mean"}
        None keeps every output (`SweepResult`); ``"class_mean"`` keeps per-true-class sums
        only (`ClassMeanResult`), in memory that does not grow with N.
    checkpoint : str or os.PathLike, optional
        Path of a checkpoint manifest (its folder must exist): each completed chunk is saved
        once, atomically, in ``<checkpoint>.chunks/``, and a rerun with the same path resumes;
        a checkpoint of a different model, regions, fills or images, or one another process
        is using, is refused (docs/scale.md says what the fingerprint covers).
    refine : Refine, optional
        A drill-down sweep (`occlusion_probe.Refine`): coarse windows for every image, then
        the cells of each image's most important coarse windows at the fine stride;
        ``result.computed`` (N, R) says which windows were computed (the others take the
        outputs of their cell's coarse window). Needs sliding windows (`sliding_windows`); not combined with
        `reduce`, `checkpoint` or ``torch.distributed``.
    approximate : float or Approximate, optional
        An approximate sweep on the incremental engine: changed boxes are capped at the
        largest projective-field threshold whose heat maps on the first images still reach
        this SSIM (and R^2) against exact ones (a float is the SSIM target in (0, 1], or
        `occlusion_probe.Approximate` settings); ``result.fidelity`` says what was measured.
        None (the default) computes exact outputs. Not combined with ``engine="dense"``,
        `reduce`, `checkpoint` or ``torch.distributed``.

    Returns
    -------
    SweepResult or ClassMeanResult
        A `SweepResult` with ``baseline`` (N, K) and ``occluded`` (N, R, V, K), or with
        ``reduce="class_mean"`` a `ClassMeanResult`.

    Raises
    ------
    InputTypeError
        When an argument has a type `sweep` cannot work with (e.g. `model` is not callable or
        `regions` is not a `Regions`).
    InputValueError
        When an argument has an unusable value (shape, size, label range, unknown option, a
        fill the model's dtype cannot hold), the model returns no class or a different number
        of classes between calls, produces NaN or inf outputs, or `checkpoint` belongs to
        another sweep, is locked by another process, is a folder or in a missing folder, or
        is corrupted (`CheckpointError`), or, under ``torch.distributed``, the ranks were given
        different images, labels, regions, fills, output or model (`RankMismatchError`, on
        every rank, before any work).

    Warns
    -----
    OcclusionProbeWarning
        When a constant fill lies well outside the images' value range (usually a unit
        mistake, e.g. 128 on images in [0, 1]), or with ``output="softmax"`` the model's
        outputs already are probabilities.

    Notes
    -----
    Under ``torch.distributed`` (e.g. launched with ``torchrun``) each rank sweeps its shard
    of the images and every rank receives the full result; the ranks first check that they
    were given the same sweep (docs/scale.md).

    With `checkpoint`, the engine and batches are recorded once the batch trial ends, and a
    resumed ``engine="auto"``, ``batch_size="auto"`` call reuses them, so that it equals the
    uninterrupted run bit for bit (docs/scale.md: "What is reproducible").

    Examples
    --------
    >>> import torch, occlusion_probe as op
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 8 * 8, 4))
    >>> result = op.sweep(model, torch.rand(3, 2, 8, 8), op.grid(8, 8, rows=2, cols=2),
    ...                   progress=False)
    >>> tuple(result.occluded.shape)
    (3, 4, 6, 4)
    """
    model = check_common_arguments(model, regions, batch_size, progress)
    if reduce not in (None, "class_mean"):
        raise InputValueError(f'reduce: expected None or "class_mean", got {reduce!r}')
    checkpoint = check_checkpoint_path(checkpoint)
    shard = distributed.current_shard()
    drill, approx = _check_refine_approximate(
        refine, approximate, regions, engine, reduce, checkpoint, shard is not None
    )
    out_name = output_name(output)
    names = check_class_names(class_names)
    chunk_images = DEFAULT_CHUNK_IMAGES
    if shard is not None and isinstance(images, (Tensor, np.ndarray)):
        # Chunks are the unit of sharding: make sure every rank gets a share of a small N.
        chunk_images = max(1, min(chunk_images, -(-int(images.shape[0]) // shard.world_size)))
    source = ImageSource(images, labels, regions.spatial_shape, chunk_images)
    image_shape = source.image_shape
    fill_list = resolve_fills(fills, image_shape)
    run_device = resolve_device(device, model, source.device)
    # The model gets its images (and so the fills) in its own floating dtype.
    dtype = input_dtype(model) or source.dtype
    check_fills_fit(fill_list, dtype)
    if needs_layers(fill_list, regions.weights) and (drill is not None or approx is not None):
        raise InputValueError(
            "fills: region-aware fills (e.g. occlusion_probe.fills.patch_mean()) and soft "
            "regions cannot be combined with refine= or approximate=; drop those for exact "
            f"outputs, got fills {[f.label for f in fill_list]}"
            + (" and soft regions" if regions.weights is not None else "")
        )
    forward = CheckedForward(model, output, single_channel=source.single_channel, dtype=dtype)
    if shard is not None:
        # Before any work: sharding by chunk index mixes ranks given different sweeps.
        distributed.check_ranks_agree(
            distributed.describe_inputs(
                model, images, labels, source, regions, fill_list, out_name, reduce
            )
        )
    collector: FullCollector | ClassMeanCollector = (
        ClassMeanCollector() if reduce == "class_mean" else FullCollector()
    )
    store = None
    # The checkpoint's place, lock and fingerprint are checked before the model runs at all.
    if checkpoint is not None:
        store = Checkpoint(
            checkpoint if shard is None else distributed.rank_path(checkpoint, shard)
        )
    stored: StoredPlan | None = None
    try:
        if store is not None:
            store.resume(
                Fingerprint.of(model, regions, fill_list, output, reduce, source), collector
            )
            stored = store.stored_plan()
        first_images = source.first_images()
        forward.check_first(first_images, run_device)
        masks = regions.masks.to(run_device)
        r, v = len(regions), len(fill_list)
        incremental, engine_note = choose_engine(
            "incremental" if approx is not None else resumed_engine(engine, stored),
            model,
            image_shape,
            source.single_channel,
            masks,
            None if source.num_images is None else source.num_images * r * v,
            dtype,
            None if first_images is None else cast_images(first_images[:1].to(run_device), dtype),
        )
    except InputValueError as error:
        if store is not None:
            store.close()
        if approx is not None and str(error).startswith('engine: "incremental" cannot run'):
            raise InputValueError(
                "approximate: needs a model the incremental engine can run (approximation caps "
                f"its changed boxes), and this one cannot: {str(error).split(': ', 2)[-1]}"
            ) from error
        raise
    except BaseException:
        if store is not None:
            store.close()
        raise
    if stored is not None and engine == "auto":
        engine_note = f"{stored.engine_note} (the engine the checkpointed run chose)"
    if batch_size == "auto" and stored is not None:
        batches = BatchPlan(stored.batch, how="stored in the checkpoint")
    elif batch_size == "auto":
        batches = BatchPlan.auto(
            model,
            image_shape,
            dtype,
            run_device,
            None if source.num_images is None else source.num_images * r * v,
            formats=not source.single_channel and incremental is None,
        )
    else:
        batches = BatchPlan.fixed(batch_size)
    if stored is not None:
        warn_if_plan_differs(stored, engine, batch_size)

    engine_run = ChunkEngine(
        incremental, engine_note, masks, forward, batches, dtype, regions, drill, approx
    )
    # Region-aware fills differ per region: the regions run in layers of disjoint masks.
    layers = disjoint_layers(masks) if needs_layers(fill_list, regions.weights) else None
    weights = None if regions.weights is None else regions.weights.to(run_device)
    computed_parts: list[Tensor] = []
    bar = tqdm(
        # A drill-down computes an unknown share of the windows.
        total=None if source.num_images is None or drill is not None else source.num_images * r * v,
        disable=not progress,
        unit="img",
        desc="occlusion sweep",
        file=sys.stderr,
    )
    warned_range = False
    recorded = stored is not None
    try:
        with evaluation_mode(model):
            for chunk in source:
                if shard is not None and not shard.owns(chunk.index):
                    continue
                if store is not None and store.restore(chunk, collector):
                    bar.update(chunk.images.shape[0] * r * v)
                    continue
                first_image = chunk.index * source.chunk_images if not source.is_stream else 0
                forward.where = (
                    f"batch {chunk.index} of the stream"
                    if source.is_stream
                    else f"chunk {chunk.index} (images {first_image}.."
                    f"{first_image + chunk.images.shape[0] - 1})"
                )
                x = cast_images(chunk.images.to(run_device), dtype)
                if not warned_range:
                    warned_range = warn_if_outside(fill_list, x)
                if layers is None:
                    outputs = engine_run.run(x, stack_fills(fill_list, x), bar.update)
                else:
                    outputs = engine_run.run_layers(
                        x,
                        layers,
                        functools.partial(layer_fills, fill_list, x, masks, weights=weights),
                        bar.update,
                    )
                if outputs.computed is not None:
                    computed_parts.append(outputs.computed)
                baseline, occluded = outputs.baseline.cpu(), outputs.occluded.cpu()
                num_classes = int(baseline.shape[1])
                check_finite_outputs(baseline, first_image, "the unoccluded copies")
                check_finite_outputs(occluded, first_image, "occluded copies")
                if chunk.labels is not None:
                    name = "labels" if not source.is_stream else f"labels[batch {chunk.index}]"
                    check_label_range(name, chunk.labels, num_classes)
                collector.add(baseline, occluded, chunk.labels, chunk.index)
                if store is not None:
                    store.save(chunk, collector)
                    # After the save: a recorded plan never names a chunk that is missing.
                    if not recorded and (incremental is not None or not batches.trial):
                        store.record_plan(StoredPlan(engine_run.name, engine_note, batches.current))
                        recorded = True
    except KeyboardInterrupt:
        if store is not None:
            print(
                f"\nocclusion_probe: interrupted; completed chunks are saved in {store.path}. "
                "Run the same call again with the same checkpoint= to resume.",
                file=sys.stderr,
            )
        raise
    finally:
        bar.close()
        if store is not None:
            store.close()
    meta = SweepMeta(
        regions=regions,
        fill_labels=tuple(f.label for f in fill_list),
        class_names=names,
        image_shape=image_shape[1:] if source.single_channel else image_shape,
        output=out_name,
        engine=engine_run.name,
        engine_note=engine_run.note,
    )
    if shard is not None:
        merged = distributed.gather_collector(collector, shard)
        return merged.result(meta)
    result = collector.result(meta)
    fidelity = engine_run.fidelity
    if isinstance(result, SweepResult) and (drill is not None or fidelity is not None):
        computed_all = None
        if drill is not None:
            computed_all = (
                torch.cat(computed_parts) if computed_parts else torch.zeros(0, r, dtype=torch.bool)
            )
        result = dataclasses.replace(result, computed=computed_all, fidelity=fidelity)
    return result


def _check_refine_approximate(
    refine: object,
    approximate: object,
    regions: Regions,
    engine: object,
    reduce: object,
    checkpoint: object,
    distributed_run: bool,
) -> tuple[RefinePlan | None, Approximate | None]:
    """Validate `refine` and `approximate` and the options they cannot be combined with."""
    if refine is not None and not isinstance(refine, Refine):
        raise InputTypeError(
            f"refine: expected None or an occlusion_probe.Refine, got {describe(refine)}"
        )
    approx = check_approximate(approximate)
    for name, given in (("refine", refine), ("approximate", approx)):
        if given is None:
            continue
        if reduce is not None:
            raise InputValueError(
                f"{name}: cannot be combined with reduce={reduce!r}; its result records per "
                "image what was computed or how approximate it is, which needs a SweepResult"
            )
        if checkpoint is not None:
            raise InputValueError(
                f"{name}: cannot be combined with checkpoint= (a resumed run would not know the "
                "first run's drill-down or threshold); run it without a checkpoint"
            )
        if distributed_run:
            raise InputValueError(
                f"{name}: cannot run under torch.distributed (each rank would choose on its own "
                "images); run it on one process"
            )
    if approx is not None and engine == "dense":
        raise InputValueError(
            'approximate: needs the incremental engine, got engine="dense"; pass engine="auto" '
            'or "incremental", or drop approximate= for exact dense outputs'
        )
    plan = RefinePlan(regions, refine) if isinstance(refine, Refine) else None
    return plan, approx
