"""The whole reproduction: data -> GCN + ZCA + CNN -> occlusion sweep -> keep-only -> report.

`run` is what ``python examples/fer2013.py`` calls; tests call it in-process with a
`RunConfig`. It writes into ``config.out``:

- ``report.json``, ``report.md``: tables 2-4, curves, rankings, keep / remove perturbation
  curves (ranked vs random, with Tables 3 and 4 marked), data used, paper comparison;
- ``curves.csv``, ``curves.json``: the numbers of Figs 4-9;
- ``weights.pt``: ``model.state_dict()`` including the fitted ZCA buffers;
- ``sweep.npz``: the `occlusion_probe.SweepResult` of the correctly classified test images
  (the images Figs 4-9 average over);
- PNG figures (see `fer_paper.report.write_figures`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

import occlusion_probe as op

from .classes import CLASS_NAMES
from .data import TEST_SPLITS, FERData, load_fer2013_csv, load_fer_folder
from .model import build_model, fit_preprocess, load_model
from .perturbation import PerturbationCurves, compute_curves
from .report import (
    AnalysisTables,
    report_payload,
    write_curves,
    write_figures,
    write_report,
)
from .synthetic import GROUND_TRUTH, make_synthetic_faces
from .train import predict, train_model

__all__ = [
    "DEFAULT_SETTINGS",
    "QUICK_SETTINGS",
    "DistributedLaunchError",
    "RunConfig",
    "RunSettings",
    "run",
]

FILLS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
KEEP_MOUTH = (10, 11)
KEEP_EYES_MOUTH = (6, 7, 10, 11)
CPU_BATCH_SIZE = 64
_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class RunSettings:
    """Sizes of a run.

    Attributes
    ----------
    synthetic_train, synthetic_test : int
        Synthetic faces generated for training and for the analysis.
    synthetic_epochs : int
        Training epochs on synthetic data.
    real_epochs : int
        Training epochs on real FER-2013 data.
    real_train_limit, real_test_limit : int or None
        Use at most this many real images (a seeded random subset); None = all.
    curve_draws : int
        Random orders per test image for the random baseline of the perturbation curves
        (each costs 15 forwards per image, besides 15 for the ranking, 15 for the reversed
        ranking and the two order-independent ends; 2 keeps the default run's curves to
        62 forwards per image, fewer than its sweep's 96).
    order_pool : int
        The random orders are drawn from this many seeded random orders, shared by all
        images and both fills (see `fer_paper.perturbation`): the imputed curves then meet
        at most ``order_pool x 15`` distinct random masks.
    imputation_images : int
        Test images (a seeded random subset) of the perturbation curves under linear
        imputation; 0 leaves them out.
    """

    synthetic_train: int
    synthetic_test: int
    synthetic_epochs: int
    real_epochs: int
    real_train_limit: int | None = None
    real_test_limit: int | None = None
    curve_draws: int = 2
    order_pool: int = 16
    imputation_images: int = 40


DEFAULT_SETTINGS = RunSettings(
    synthetic_train=3500, synthetic_test=500, synthetic_epochs=3, real_epochs=20
)
"""The default run. On the synthetic data, training (3,500 faces x 3 epochs), the sweep
(500 test faces x 16 areas x 6 fills = 48,000 occluded images) and the perturbation curves
(62 forwards per test face) take nearly all of the time; sized so that the whole job stays
well under 3 minutes on 2 CPU cores (README.md gives the measured time with the CPU named).
On real FER-2013 (28,709 training images, 20 epochs) plan for a GPU."""

QUICK_SETTINGS = RunSettings(
    synthetic_train=2500,
    synthetic_test=200,
    synthetic_epochs=6,
    real_epochs=3,
    real_train_limit=3000,
    real_test_limit=300,
    imputation_images=32,
)
"""``--quick``: small data and few epochs, for tests and smoke runs. On the synthetic data it
still recovers the ground truth (checked for seeds 0-3 with the one-cycle schedule at batch 64:
with 4 epochs, seed 3 ranked area 6 above area 11 for Happiness; 6 epochs restore it)."""


@dataclass(frozen=True)
class RunConfig:
    """Command-line options of ``examples/fer2013.py``.

    Attributes
    ----------
    out : Path
        Output folder (created).
    csv : Path or None
        Kaggle's ``fer2013.csv``; mutually exclusive with `data_dir`.
    data_dir : Path or None
        A folder with ``train/<class>/*.png`` and ``test/<class>/*.png``.
    test_split : str
        "PublicTest" (the paper's test set) or "PrivateTest"; csv only.
    weights : Path or None
        A ``state_dict`` saved by an earlier run (``OUT/weights.pt``); skips training.
    device : str
        "cpu", "cuda" or "auto" (cuda when available).
    quick : bool
        Use `QUICK_SETTINGS` instead of `DEFAULT_SETTINGS`.
    seed : int
        Seeds data generation, subsets, initial weights, shuffling and dropout.
    skip_bad_rows : bool
        Skip malformed csv rows with a warning instead of failing.
    distributed : bool
        Initialise ``torch.distributed`` from torchrun's environment; the sweep is then sharded
        across the ranks, rank 0 trains and writes the outputs.
    epochs : int or None
        Overrides the settings' number of epochs.
    batch_size : int
        Training minibatch size.
    learning_rate : float
        The peak of Adam's one-cycle step-size schedule (see `fer_paper.train.train_model`).
    progress : bool
        Show progress bars and stage messages.
    """

    out: Path = Path("fer2013-output")
    csv: Path | None = None
    data_dir: Path | None = None
    test_split: str = "PublicTest"
    weights: Path | None = None
    device: str = "auto"
    quick: bool = False
    seed: int = 0
    skip_bad_rows: bool = False
    distributed: bool = False
    epochs: int | None = None
    batch_size: int = 64
    learning_rate: float = 2e-3
    progress: bool = True

    def __post_init__(self) -> None:
        if self.csv is not None and self.data_dir is not None:
            raise ValueError(
                f"csv, data_dir: expected at most one data source, got both {self.csv} and "
                f"{self.data_dir}"
            )
        if self.test_split not in TEST_SPLITS:
            raise ValueError(f"test_split: expected one of {TEST_SPLITS}, got {self.test_split!r}")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f'device: expected "cpu", "cuda" or "auto", got {self.device!r}')
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError('device: "cuda" requested but torch finds no CUDA device')
        if self.epochs is not None and (isinstance(self.epochs, bool) or self.epochs < 1):
            raise ValueError(f"epochs: expected a positive int, got {self.epochs!r}")
        if self.skip_bad_rows and self.csv is None:
            raise ValueError("skip_bad_rows: only applies to --csv data, but no csv was given")

    @property
    def settings(self) -> RunSettings:
        return QUICK_SETTINGS if self.quick else DEFAULT_SETTINGS


class DistributedLaunchError(ValueError):
    """``--distributed`` was given outside a torchrun launch."""


@dataclass(frozen=True)
class _Process:
    """Where this process runs: its device and its rank among `world_size` processes."""

    device: torch.device
    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _say(config: RunConfig, process: _Process, message: str) -> None:
    if config.progress and process.is_main:
        print(f"[fer2013] {message}", flush=True)


def _wanted_device(config: RunConfig) -> torch.device:
    """cuda for "cuda", and for "auto" when a GPU is available; cpu otherwise."""
    if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


@contextmanager
def _process_context(config: RunConfig) -> Iterator[_Process]:
    """Resolve the device; with `config.distributed`, join (and finally leave) torchrun's group."""
    if not config.distributed:
        yield _Process(_wanted_device(config), 0, 1)
        return
    wants_cuda = _wanted_device(config).type == "cuda"
    missing = [name for name in _TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise DistributedLaunchError(
            "distributed: expected a launch with torchrun (e.g. `torchrun --nproc-per-node 2 "
            f"examples/fer2013.py --distributed`), but the variables {missing} are not set"
        )
    local_rank = int(os.environ["LOCAL_RANK"])
    if wants_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    started_here = not dist.is_initialized()
    if started_here:
        dist.init_process_group(backend="nccl" if wants_cuda else "gloo")
    try:
        yield _Process(device, dist.get_rank(), dist.get_world_size())
    finally:
        if started_here:
            dist.destroy_process_group()


def _seeded_subset(
    images: Tensor, labels: Tensor, limit: int | None, seed: int
) -> tuple[Tensor, Tensor]:
    if limit is None or images.shape[0] <= limit:
        return images, labels
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))[:limit]
    order = order.sort().values
    return images[order], labels[order]


def _synthetic_data(settings: RunSettings, seed: int) -> FERData:
    train_images, train_labels = make_synthetic_faces(settings.synthetic_train, seed)
    # A different seed stream for the test faces: no test face repeats a training face.
    test_images, test_labels = make_synthetic_faces(settings.synthetic_test, seed + 1_000_003)
    return FERData(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        source="synthetic",
        description=(
            f"procedural 48x48 faces (fer_paper.synthetic), {settings.synthetic_train} "
            f"training and {settings.synthetic_test} test images, seed {seed}, class "
            "frequencies of FER-2013's training split"
        ),
        test_split="synthetic",
    )


def load_data(config: RunConfig) -> tuple[FERData, dict[str, str] | None]:
    """The data set of `config`, and the synthetic ground truth (None for real data).

    Synthetic faces unless `config.csv` or `config.data_dir` is set; with ``--quick``, real
    data is cut to seeded random subsets (`RunSettings.real_train_limit` / `real_test_limit`).
    """
    settings = config.settings
    if config.csv is not None:
        data = load_fer2013_csv(
            config.csv, test_split=config.test_split, skip_bad_rows=config.skip_bad_rows
        )
    elif config.data_dir is not None:
        data = load_fer_folder(config.data_dir)
    else:
        return _synthetic_data(settings, config.seed), dict(GROUND_TRUTH)
    train_images, train_labels = _seeded_subset(
        data.train_images, data.train_labels, settings.real_train_limit, config.seed
    )
    test_images, test_labels = _seeded_subset(
        data.test_images, data.test_labels, settings.real_test_limit, config.seed + 1
    )
    if (train_images.shape[0], test_images.shape[0]) == (
        data.train_images.shape[0],
        data.test_images.shape[0],
    ):
        return data, None
    subset = replace(
        data,
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        description=(
            f"{data.description}; quick run: seeded random subsets of {train_images.shape[0]} "
            f"of {data.train_images.shape[0]} training and {test_images.shape[0]} of "
            f"{data.test_images.shape[0]} test images"
        ),
    )
    return subset, None


def _broadcast_state(model: nn.Module, process: _Process) -> None:
    """Copy rank 0's parameters and buffers (ZCA included) to every rank."""
    if process.world_size == 1:
        return
    state = model.state_dict()
    comm_device = process.device if dist.get_backend() == "nccl" else torch.device("cpu")
    received: dict[str, Tensor] = {}
    for key in sorted(state):
        value = state[key]
        # Not every backend moves bool tensors; the flag travels as uint8. Collectives need
        # contiguous tensors, and the CNN's weights may be channels-last (`_fast_layout`).
        buffer = (
            value.detach()
            .to(comm_device, torch.uint8 if value.dtype == torch.bool else value.dtype)
            .clone(memory_format=torch.contiguous_format)
        )
        dist.broadcast(buffer, src=0)
        received[key] = buffer.to(value.dtype)
    model.load_state_dict(received)


def _fast_layout(model: nn.Sequential, device: torch.device) -> None:
    """Store the CNN's weights channels-last on the CPU, which makes oneDNN keep its
    activations channels-last too: the CNN then ran about 2x faster in inference (measured
    2,481 vs 1,028 images/s at batch 64 on a loaded 2-core AMD EPYC) and somewhat faster in
    training. The outputs agree with the default layout to about 1e-7. GPUs keep the default
    layout, which was not measured there."""
    if device.type == "cpu":
        model[1].to(memory_format=torch.channels_last)


def prepare_model(
    config: RunConfig, data: FERData, out: Path, process: _Process | None = None
) -> tuple[nn.Sequential, dict[str, Any]]:
    """Load `config.weights` or fit GCN + ZCA and train; saves OUT/weights.pt (rank 0).

    `process` is the device and rank inside `run`; by default a single process on
    `config.device`.

    Returns the model (in eval mode, on the run device) and a summary of how it was made.
    """
    if process is None:
        process = _Process(_wanted_device(config), 0, 1)
    settings = config.settings
    epochs = config.epochs or (
        settings.synthetic_epochs if data.source == "synthetic" else settings.real_epochs
    )
    architecture = (
        "GCN (scale 1, subtract_mean, use_std, sqrt_bias 10/255^2) + ZCA (filter_bias 0.1, "
        "fitted on the training set) + CNN conv5x5x32-pool-conv5x5x64-pool-conv3x3x128-pool-"
        "fc1024-dropout0.5-fc7"
    )
    if config.weights is not None:
        model = load_model(config.weights)
        _fast_layout(model, process.device)
        summary: dict[str, Any] = {
            "weights": f"loaded from {config.weights}",
            "description": f"{architecture}; weights loaded from `{config.weights}` (no training).",
        }
    else:
        # Initial weights come from the global generator: seed it before building the CNN.
        torch.manual_seed(config.seed)
        preprocess = fit_preprocess(data.train_images)
        model = build_model(preprocess)
        _fast_layout(model, process.device)
        if process.is_main:
            # GCN + ZCA have no trainable parameters: whiten the training set once instead of
            # in every batch of every epoch (the ZCA is a 2304 x 2304 matrix product per image).
            with torch.no_grad():
                whitened = preprocess(data.train_images)
            history = train_model(
                model[1],
                whitened,
                data.train_labels,
                epochs=epochs,
                seed=config.seed,
                batch_size=config.batch_size,
                learning_rate=config.learning_rate,
                device=process.device,
                progress=config.progress,
            )
            losses, accuracies = list(history.loss), list(history.accuracy)
        else:
            losses, accuracies = [], []
        _broadcast_state(model, process)
        summary = {
            "weights": "trained",
            "epochs": epochs,
            "batch_size": config.batch_size,
            "learning_rate": config.learning_rate,
            "optimizer": "Adam",
            "schedule": "one-cycle (OneCycleLR, peak at learning_rate)",
            "seed": config.seed,
            "loss": losses,
            "train_accuracy": accuracies,
            "description": (
                f"{architecture}; trained {epochs} epochs with Adam (one-cycle schedule, peak lr "
                f"{config.learning_rate}, batch {config.batch_size}) on cross-entropy, seed "
                f"{config.seed}; final training "
                f"loss {losses[-1]:.4f}, training accuracy {100 * accuracies[-1]:.1f} % "
                "(dropout active)."
                if losses
                else f"{architecture}; trained on rank 0 and broadcast."
            ),
        }
    model.to(process.device).eval()
    if process.is_main:
        weights_path = out / "weights.pt"
        if config.weights is None or Path(config.weights).resolve() != weights_path.resolve():
            torch.save(model.state_dict(), weights_path)
    return model, summary


def analyse(
    model: nn.Module,
    data: FERData,
    process: _Process,
    progress: bool,
    settings: RunSettings = DEFAULT_SETTINGS,
    seed: int = 0,
) -> tuple[op.SweepResult, AnalysisTables, Tensor]:
    """The paper's analysis of the test set: Tables 2, 3 and 4, the sweep of Figs 4-9 and the
    keep / remove perturbation curves around Tables 3 and 4.

    Returns the sweep, the tables (with the curves) and the images swept: the correctly
    classified test images, the only ones the paper's curves (and this report's rankings and
    checks) read.
    """
    regions = op.grid(48, 48, rows=4, cols=4)
    # On the CPU, 64 occluded images per call keep this CNN's activations (32 x 48 x 48 floats
    # per image after the first conv) small enough to reuse memory: larger "auto" batches
    # spent a third of their time in page faults (measured 610 vs 490 images/s per core).
    batch_size: int | Literal["auto"] = CPU_BATCH_SIZE if process.device.type == "cpu" else "auto"
    predicted = predict(model, data.test_images, device=process.device)
    table2 = op.confusion_report(
        data.test_labels, predicted, len(CLASS_NAMES), CLASS_NAMES, regions.ids
    )
    # Figs 4-9 average over the correctly classified test images only, so only they are swept
    # (16 areas x 6 fills = 96 forwards each); the misclassified ones would be computed and
    # never read. The engine is dense by construction: GCN and ZCA, the model's first layers,
    # mix all positions, so "auto" would only spend a graph export to find that out.
    correct = predicted == data.test_labels
    swept_images = data.test_images[correct]
    result = op.sweep(
        model,
        swept_images,
        regions,
        fills=FILLS,
        labels=data.test_labels[correct],
        output="softmax",
        batch_size=batch_size,
        device=process.device,
        progress=progress,
        class_names=CLASS_NAMES,
        engine="dense",
    )
    table3, table4 = (
        op.keep_only(
            model,
            data.test_images,
            data.test_labels,
            regions,
            keep=keep,
            fill=0.0,
            batch_size=batch_size,
            device=process.device,
            progress=progress,
            class_names=CLASS_NAMES,
        )
        for keep in (KEEP_MOUTH, KEEP_EYES_MOUTH)
    )
    curves = perturbation_curves(
        model,
        data,
        result,
        regions,
        batch_size=batch_size,
        device=process.device,
        progress=progress,
        settings=settings,
        seed=seed,
    )
    tables = AnalysisTables(table2=table2, table3=table3, table4=table4, curves=curves)
    return result, tables, swept_images


def perturbation_curves(
    model: nn.Module,
    data: FERData,
    result: op.SweepResult,
    regions: op.Regions,
    *,
    batch_size: int | Literal["auto"],
    device: torch.device,
    progress: bool,
    settings: RunSettings,
    seed: int,
) -> PerturbationCurves | None:
    """Keep and remove curves over the test images of Tables 3 and 4, ranked vs random,
    under fill 0.0 and (over a seeded subset) under linear imputation.

    The ranked order of an image is its true class's ranking in the sweep (the areas by mean
    drop of the class output over the fills, over its correctly classified test images);
    the baseline orders are ``settings.curve_draws`` random orders per image from a pool of
    ``settings.order_pool`` (seeded; the remove baseline is the keep baseline mirrored: the
    same forwards, orders reversed), the same for both fills (see `fer_paper.perturbation`).
    A class the sweep cannot rank (no correctly classified test image: the paper's Disgust)
    has no ranked order, so its images are left out of all curves (and counted in
    ``left_out``); None when no test image is left.
    """
    rankable = [cls for cls in range(len(CLASS_NAMES)) if result.selected_count(cls)]
    usable = torch.isin(data.test_labels, torch.tensor(rankable, dtype=torch.int64))
    left_out = {
        name: int((data.test_labels[~usable] == cls).sum())
        for cls, name in enumerate(CLASS_NAMES)
        if int((data.test_labels[~usable] == cls).sum())
    }
    if not bool(usable.any()):
        return None
    common: dict[str, Any] = {
        "output": "softmax",
        "batch_size": batch_size,
        "device": device,
        "progress": progress,
        "class_names": CLASS_NAMES,
    }
    return compute_curves(
        model,
        data.test_images[usable],
        data.test_labels[usable],
        result,
        regions,
        common=common,
        draws=settings.curve_draws,
        pool=settings.order_pool,
        imputation_images=settings.imputation_images,
        seed=seed,
        left_out=left_out,
    )


def run(config: RunConfig) -> dict[str, Any]:
    """Run the reproduction end to end and write everything into ``config.out``.

    Returns
    -------
    dict
        The contents of ``report.json`` (see `fer_paper.report.report_payload`).
    """
    timing: dict[str, float] = {}
    started = time.perf_counter()
    with _process_context(config) as process:
        out = Path(config.out)
        if process.is_main:
            out.mkdir(parents=True, exist_ok=True)

        stage = time.perf_counter()
        data, ground_truth = load_data(config)
        timing["data"] = time.perf_counter() - stage
        _say(config, process, f"data: {data.description}")

        stage = time.perf_counter()
        model, training = prepare_model(config, data, out, process)
        timing["model"] = time.perf_counter() - stage
        _say(config, process, f"model ready ({training['weights']}), analysing the test set")

        stage = time.perf_counter()
        result, tables, swept_images = analyse(
            model,
            data,
            process,
            config.progress and process.is_main,
            settings=config.settings,
            seed=config.seed,
        )
        timing["analysis"] = time.perf_counter() - stage
        if tables.curves is not None and tables.curves.imputed is not None:
            _say(
                config,
                process,
                f"imputed perturbation curves: {len(tables.curves.subset)} images in "
                f"{tables.curves.imputation_seconds:.1f} s (part of the analysis)",
            )

        stage = time.perf_counter()
        data_summary = {
            "source": data.source,
            "description": data.description,
            "test_split": data.test_split,
            "counts": data.counts(),
            "notes": list(data.notes),
        }
        payload = report_payload(
            result=result,
            tables=tables,
            data_summary=data_summary,
            training=training,
            timing=timing,
            ground_truth=ground_truth,
        )
        if process.is_main:
            result.save(out / "sweep.npz")
            write_curves(out, payload)
            figures = write_figures(out, result, tables, swept_images)
            timing["report"] = time.perf_counter() - stage
            timing["total"] = time.perf_counter() - started
            payload["timing_seconds"] = dict(timing)
            payload["figures"] = figures
            write_report(out, payload, tables)
            _say(
                config,
                process,
                f"test accuracy {100 * payload['accuracy']:.2f} %, keep {{10, 11}} "
                f"{100 * payload['accuracy_keep_10_11']:.2f} %, keep {{6, 7, 10, 11}} "
                f"{100 * payload['accuracy_keep_6_7_10_11']:.2f} %; wrote {out}/report.md "
                f"in {timing['total']:.0f} s",
            )
    return payload
