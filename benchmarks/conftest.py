"""Shared machinery of the benchmarks: options, the forward limit, paired timing, the summary.

Every number is reported as a ratio to a reference measured in the same process, in the same
test, interleaved with the method's rounds (the reference runs once before each round), so
that a change in machine load between tests does not distort the comparison. The reference
of a sweep is the *forward limit*: plain ``model(batch)`` calls over occluded images prebuilt
in memory, at the batch size that was fastest in a scan of several batch sizes. Times are the
minimum over rounds. See benchmarks/README.md.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import functools
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

# The architectures are defined once, in tests/reference_models.py, for the tests (tiny) and
# for the benchmarks (224x224); tests/ is not a package, so its folder goes on the path here,
# before models.py imports it. Appended, so that benchmarks/ keeps precedence for its names.
sys.path.append(str(Path(__file__).resolve().parent.parent / "tests"))

from models import Case, Workload, workload_of

import occlusion_probe as op
from occlusion_probe.engines.incremental import IncrementalEngine

_HARNESS = pytest.StashKey["Harness"]()

#: The memory formats the forward-limit scan may try (Case.memory_formats names them).
MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
#: Every incremental sweep should reach this fraction of its FLOP bound.
BOUND_FRACTION_TARGET = 0.7


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("occlusion_probe benchmarks")
    group.addoption(
        "--device",
        default="cpu",
        help="torch device the models and images live on, e.g. cuda or cuda:1 (default: cpu)",
    )
    group.addoption(
        "--bench-threads",
        type=int,
        default=2,
        help="torch.set_num_threads for the whole session (default: 2)",
    )


def pytest_configure(config: pytest.Config) -> None:
    threads = int(config.getoption("--bench-threads"))
    device = torch.device(config.getoption("--device"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError(f"--device {device}: CUDA is not available in this torch build")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config.stash[_HARNESS] = Harness(device, threads)


#: CPU flags worth naming next to a timing (vector units the kernels may use).
NOTABLE_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "fma")


def cpu_description() -> dict[str, object]:
    """The CPU as ``lscpu`` names it (model name, notable flags) and the core count; the
    model name is "unknown" where neither ``lscpu`` nor /proc/cpuinfo can be read."""
    model, flags = "unknown", []
    try:
        text = subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=True, env={"LC_ALL": "C"}
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        text = ""
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "Model name":
            model = value.strip()
        elif name.strip() == "Flags":
            flags = value.split()
    return {
        "model_name": model,
        "flags_of_note": [flag for flag in NOTABLE_FLAGS if flag in flags],
        "cpu_count": os.cpu_count(),
    }


def pytest_benchmark_update_json(
    config: pytest.Config, benchmarks: object, output_json: dict[str, Any]
) -> None:
    """Store what a reader needs to judge the figures next to pytest-benchmark's own output:
    the CPU, torch, the command, the load average (at start and end) and each forward
    limit's scan. benchmarks/tables.py reads this block."""
    harness = config.stash.get(_HARNESS, None)
    start = None if harness is None else list(harness.load_at_start)
    limits = {} if harness is None else harness.limits
    output_json["occlusion_probe"] = {
        "cpu": cpu_description(),
        "torch": torch.__version__,
        "threads": None if harness is None else harness.threads,
        "device": None if harness is None else str(harness.device),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", "pytest", *config.invocation_params.args]),
        "load_average_at_start": start,
        "load_average_at_end": list(os.getloadavg()),
        "forward_limits": {
            key: {
                "batch_size": limit.batch_size,
                "memory_format": limit.memory_format,
                "images_per_s": limit.images_per_s,
                "scan": [
                    {"memory_format": fmt, "batch_size": size, "images_per_s": rate}
                    for (fmt, size), rate in limit.scan.items()
                ],
            }
            for key, limit in limits.items()
        },
    }


@pytest.fixture(scope="session")
def harness(pytestconfig: pytest.Config) -> Harness:
    """The session's timing helper: device, forward limits, recorded rows."""
    return pytestconfig.stash[_HARNESS]


@dataclass(frozen=True)
class ForwardLimit:
    """Plain forwards of prebuilt occluded images: the best batch size and memory format of
    a scan.

    scan : images/s per (memory format, batch size) tried (minimum time over the repeats)
    """

    batch_size: int
    memory_format: str
    images_per_s: float
    scan: dict[tuple[str, int], float]


@dataclass(frozen=True)
class Row:
    """One line of the summary table.

    ratio : the method's images/s divided by the reference's images/s, both measured in the
        same test (interleaved rounds, minimum time of each)
    target : the ratio the project aims for, as a lower bound (None: no target)
    flop_bound : for an incremental sweep, dense FLOPs over the FLOPs its plan runs (the most
        its ratio could be if time followed FLOPs); None for other methods
    bound_target : the fraction of `flop_bound` the ratio should reach (None: no target)
    prepare_seconds : for an incremental sweep, the time its `IncrementalEngine.prepare`
        (reading the model with torch.export and planning) took inside the fastest round
    note : the sweep's ``result.engine_note``
    traffic_bound : for an incremental sweep, dense tensor elements read and written over
        those its plan moves (window copies included); None for other methods
    reference_images_per_s : the reference's images/s in this row's own rounds (the forward
        limit drifts with the machine's load: compare it with the session's scan)
    """

    group: str
    key: str
    method: str
    images: int
    seconds: float
    ratio: float
    reference: str
    target: float | None = None
    flop_bound: float | None = None
    bound_target: float | None = None
    prepare_seconds: float | None = None
    note: str = ""
    traffic_bound: float | None = None
    reference_images_per_s: float | None = None

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    @property
    def bound_fraction(self) -> float | None:
        """The ratio reached, as a fraction of the FLOP bound."""
        return None if self.flop_bound is None else self.ratio / self.flop_bound

    @property
    def ratio_without_prepare(self) -> float | None:
        """The ratio had the sweep not spent `prepare_seconds` (same reference rate)."""
        if self.prepare_seconds is None or self.prepare_seconds >= self.seconds:
            return None
        return self.ratio * self.seconds / (self.seconds - self.prepare_seconds)


@dataclass
class Harness:
    """Timing helpers shared by all benchmark modules (one per session)."""

    device: torch.device
    threads: int
    load_at_start: tuple[float, float, float] = field(default_factory=os.getloadavg)
    rows: list[Row] = field(default_factory=list)
    limits: dict[str, ForwardLimit] = field(default_factory=dict)
    # Per (limit key, memory format): the model in that format (a copy, unless contiguous).
    formatted: dict[tuple[str, str], nn.Module] = field(default_factory=dict)

    def sync(self) -> None:
        """Wait for queued GPU work, so that wall-clock times cover it."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def seconds(self, function: Callable[[], object]) -> float:
        """Wall-clock seconds of one call of `function`, device work included."""
        self.sync()
        start = time.perf_counter()
        function()
        self.sync()
        return time.perf_counter() - start

    def forwards(self, model: nn.Module, images: Tensor, batch_size: int) -> Callable[[], None]:
        """A callable that runs `model` over `images` in batches; the outputs are dropped."""

        def run() -> None:
            with torch.inference_mode():
                for start in range(0, images.shape[0], batch_size):
                    model(images[start : start + batch_size])

        return run

    def in_format(self, key: str, model: nn.Module, memory_format: str) -> nn.Module:
        """`model` in `memory_format`: the model itself for "contiguous", else a copy
        converted with ``.to(memory_format=...)`` (which converts in place), kept per `key`."""
        if memory_format == "contiguous":
            return model
        if (key, memory_format) not in self.formatted:
            converted = copy.deepcopy(model).to(memory_format=MEMORY_FORMATS[memory_format])
            self.formatted[key, memory_format] = converted
        return self.formatted[key, memory_format]

    def forward_limit(
        self,
        key: str,
        model: nn.Module,
        occluded: Tensor,
        batch_sizes: Sequence[int],
        memory_formats: Sequence[str] = ("contiguous",),
        repeats: int = 2,
    ) -> ForwardLimit:
        """The forward limit of `model` on these prebuilt occluded images, scanned once per
        session and `key` over batch sizes x memory formats (model and images both in the
        format): every pair is warmed up, then timed `repeats` times with the pairs
        interleaved (so that load changes hit all alike); best images/s wins."""
        if key in self.limits:
            return self.limits[key]
        sizes = sorted({min(size, occluded.shape[0]) for size in batch_sizes})
        runs: dict[tuple[str, int], Callable[[], None]] = {}
        for name in memory_formats:
            formatted = self.in_format(key, model, name)
            images = occluded.contiguous(memory_format=MEMORY_FORMATS[name])
            for size in sizes:
                self.seconds(self.forwards(formatted, images[:size], size))
                runs[name, size] = self.forwards(formatted, images, size)
        best = dict.fromkeys(runs, float("inf"))
        for _ in range(repeats):
            for pair, run in runs.items():
                best[pair] = min(best[pair], self.seconds(run))
        scan = {pair: occluded.shape[0] / best[pair] for pair in runs}
        fastest = max(scan, key=lambda pair: scan[pair])
        limit = ForwardLimit(fastest[1], fastest[0], scan[fastest], scan)
        self.limits[key] = limit
        return limit

    def paired(
        self,
        benchmark: object,
        method: Callable[[], object],
        reference: Callable[[], object],
        rounds: int,
        warmup: Callable[[], object] | None = None,
    ) -> tuple[float, float]:
        """Time `method` with pytest-benchmark and `reference` before each of its rounds.

        warmup : an untimed call before the rounds (e.g. the method on a few images, so that
            one-off costs such as allocator growth and kernel selection are paid outside).
        Returns (method seconds, reference seconds), each the minimum over the rounds.
        """
        method_times: list[float] = []
        reference_times: list[float] = []

        def setup() -> None:
            reference_times.append(self.seconds(reference))

        def target() -> None:
            method_times.append(self.seconds(method))

        if warmup is not None:
            warmup()
            self.sync()
        benchmark.pedantic(target, setup=setup, rounds=rounds, warmup_rounds=0)  # type: ignore[attr-defined]
        return min(method_times), min(reference_times)

    def limit(self, case: Case) -> ForwardLimit:
        """The case's forward limit, scanned over its main workload's first occluded images."""
        workload = workload_of(case, self.device)
        return self.forward_limit(
            case.title,
            workload.model,
            workload.occluded(case.scan_images),
            case.batch_sizes,
            case.memory_formats,
        )

    def limit_forwards(
        self, case: Case, workload: Workload, count: int | None = None
    ) -> tuple[Callable[[], None], int]:
        """(callable, images): plain forwards of `workload`'s first `count` (default: all)
        prebuilt occluded images at the case's best batch size and memory format."""
        limit = self.limit(case)
        model = self.in_format(case.title, workload.model, limit.memory_format)
        images = workload.occluded(count)
        images = images.contiguous(memory_format=MEMORY_FORMATS[limit.memory_format])
        return self.forwards(model, images, limit.batch_size), images.shape[0]

    def reference(self, case: Case, workload: Workload) -> tuple[Callable[[], None], int]:
        """(callable, images): the forward limit on `workload`'s first ``case.scan_images``
        prebuilt occluded images, paired with a method in a test. A workload with fewer
        images borrows the case's main workload (same model and input size), so that the
        limit keeps its full batches."""
        if workload.count < case.scan_images:
            workload = workload_of(case, self.device)
        return self.limit_forwards(case, workload, case.scan_images)

    def against_limit(
        self,
        benchmark: object,
        case: Case,
        workload: Workload,
        method: Callable[[], object],
        *,
        key: str,
        label: str,
        rounds: int,
        warmup: Callable[[], object] | None = None,
        target: float | None = None,
        group: str | None = None,
        flop_bound: float | Callable[[], float] | None = None,
        prepare_seconds: Callable[[], float] | None = None,
        note: Callable[[], str] | None = None,
        traffic_bound: float | Callable[[], float] | None = None,
        **extra: object,
    ) -> Row:
        """Time `method` (which evaluates all of `workload`'s occluded images) against the
        forward limit on the same workload, and record the row (in `group`, default: the
        workload's name). Smoke cases carry no target.

        flop_bound : an incremental sweep's FLOP bound; the row then carries the target
            fraction of it (`BOUND_FRACTION_TARGET`) unless the case is a smoke case. A
            callable is read after the rounds (the engine re-plans its groups on its first
            run, so the bound of what ran is known only then); so is `traffic_bound`
        prepare_seconds, note : called after the rounds (e.g. to read what the fastest round
            spent preparing, or the last result's engine note)
        """
        reference, reference_images = self.reference(case, workload)
        seconds, reference_seconds = self.paired(benchmark, method, reference, rounds, warmup)
        limit_rate = reference_images / reference_seconds
        limit = self.limit(case)
        if callable(flop_bound):
            flop_bound = flop_bound()
        if callable(traffic_bound):
            traffic_bound = traffic_bound()
        return self.record(
            benchmark,
            group=group or workload.name,
            key=key,
            method=label,
            images=workload.count,
            seconds=seconds,
            ratio=workload.count / seconds / limit_rate,
            target=None if case.smoke else target,
            flop_bound=flop_bound,
            bound_target=None if case.smoke or flop_bound is None else BOUND_FRACTION_TARGET,
            prepare_seconds=None if prepare_seconds is None else prepare_seconds(),
            note="" if note is None else note(),
            traffic_bound=traffic_bound,
            reference_images_per_s=limit_rate,
            forward_limit_batch_size=limit.batch_size,
            forward_limit_memory_format=limit.memory_format,
            **extra,
        )

    def bounds(self, workload: Workload) -> tuple[float, float]:
        """The FLOP and memory-traffic bounds of the incremental engine prepared for
        `workload` as a sweep prepares it (float32, the workload's device)."""
        masks = workload.regions.masks.to(self.device)
        prepared = IncrementalEngine.prepare(
            workload.model, tuple(workload.images.shape[1:]), masks, torch.float32, self.device
        )
        if isinstance(prepared, str):
            raise AssertionError(f"the incremental engine cannot run {workload.name}: {prepared}")
        return prepared.flop_bound, prepared.traffic_bound

    def sweep(
        self,
        benchmark: object,
        case: Case,
        workload: Workload,
        engine: str,
        key: str,
        target: float | None,
        batch_size: int | None = None,
        group: str | None = None,
    ) -> op.SweepResult:
        """Time the whole ``op.sweep(..., engine=engine)`` on `workload` against the forward
        limit, with the default ``batch_size="auto"`` unless `batch_size` is given. The
        engine note goes into the row; an incremental sweep's row also gets the FLOP bound
        and the time the fastest round spent in its prepare. The warm-up is one whole sweep
        for a dense sweep with ``batch_size="auto"`` (its batch trial runs and is remembered
        there; the note says how much slower that first sweep was), else one image with one
        fill over the first 16 regions; smoke cases skip it (their times mean nothing, and an
        incremental warm-up costs one more torch.export of the model)."""
        results: list[op.SweepResult] = []
        # Per round: (seconds of the whole sweep, seconds of its IncrementalEngine.prepare).
        rounds: list[tuple[float, float]] = []
        model, images, regions, fills = (
            workload.model,
            workload.images,
            workload.regions,
            workload.fills,
        )
        size: int | str = "auto" if batch_size is None else batch_size
        first = regions.select(regions.ids[:16])

        def method() -> None:
            prepares: list[float] = []
            start = time.perf_counter()
            with timing_prepare(prepares):
                results.append(
                    op.sweep(
                        model,
                        images,
                        regions,
                        fills,
                        engine=engine,
                        batch_size=size,
                        progress=False,
                    )
                )
            rounds.append((time.perf_counter() - start, sum(prepares)))

        # A dense sweep with batch_size="auto" times its batch candidates on its first
        # blocks and remembers the fastest for the model (once per process): its warm-up is
        # one whole sweep, so that every timed round is what later sweeps cost (and the
        # first sweep's own time goes into the note).
        first_sweep = engine == "dense" and batch_size is None
        warm: list[tuple[float, str]] = []  # (seconds, engine note) of the warm-up sweep

        def warmup() -> None:
            if first_sweep:
                start = time.perf_counter()
                done = op.sweep(model, images, regions, fills, engine=engine, progress=False)
                warm.append((time.perf_counter() - start, done.engine_note))
                return
            op.sweep(
                model, images[:1], first, fills[:1], engine=engine, batch_size=size, progress=False
            )

        def note() -> str:
            text = results[-1].engine_note
            if warm:
                seconds, first_note = warm[0]
                how = (
                    "where the batch candidates were timed"
                    if "timed on the first blocks" in first_note
                    else "with the batch an earlier sweep of this model had chosen"
                )
                text += f"; the warm-up sweep ({how}) took {seconds / min(rounds)[0]:.2f}x the fastest round"
            return text

        incremental = engine == "incremental"
        # Read after the rounds (the bounds of the groups the engine ran), once.
        bounds = functools.cache(lambda: self.bounds(workload))
        label = (
            f'sweep(engine="{engine}"), batch_size="auto"'
            if batch_size is None
            else f'sweep(engine="{engine}"), batch_size={batch_size} (the limit\'s)'
        )
        self.against_limit(
            benchmark,
            case,
            workload,
            method,
            key=key,
            label=label,
            rounds=case.rounds,
            warmup=None if case.smoke else warmup,
            target=target,
            group=group,
            flop_bound=(lambda: bounds()[0]) if incremental else None,
            prepare_seconds=(lambda: min(rounds)[1]) if incremental else None,
            note=note,
            traffic_bound=(lambda: bounds()[1]) if incremental else None,
            batch_size=size,
        )
        return results[-1]

    def record(
        self,
        benchmark: object,
        *,
        group: str,
        key: str,
        method: str,
        images: int,
        seconds: float,
        ratio: float,
        reference: str = "forward limit",
        target: float | None = None,
        flop_bound: float | None = None,
        bound_target: float | None = None,
        prepare_seconds: float | None = None,
        note: str = "",
        traffic_bound: float | None = None,
        reference_images_per_s: float | None = None,
        **extra: object,
    ) -> Row:
        """Store a summary row, put it in ``benchmark.extra_info``, and print it.

        group : the workload (one table per group); key : the method's kind ("dense",
        "captum", ...) for cross-row checks; ratio : images/s over the reference's images/s;
        the other fields as in `Row`.
        """
        row = Row(
            group,
            key,
            method,
            images,
            seconds,
            ratio,
            reference,
            target,
            flop_bound,
            bound_target,
            prepare_seconds,
            note,
            traffic_bound,
            reference_images_per_s,
        )
        info = benchmark.extra_info  # type: ignore[attr-defined]
        info.update(
            group=row.group,
            key=row.key,
            method=row.method,
            images=row.images,
            seconds=row.seconds,
            images_per_s=row.images_per_s,
            ratio=row.ratio,
            reference=row.reference,
            threads=self.threads,
            device=str(self.device),
            **extra,
        )
        optional = {
            "ratio_without_prepare": row.ratio_without_prepare,
            "target": row.target,
            "flop_bound": row.flop_bound,
            "flop_bound_fraction": row.bound_fraction,
            "flop_bound_fraction_target": row.bound_target,
            "traffic_bound": row.traffic_bound,
            "prepare_seconds": row.prepare_seconds,
            "engine_note": row.note or None,
            "reference_images_per_s": row.reference_images_per_s,
        }
        info.update({name: value for name, value in optional.items() if value is not None})
        self.rows.append(row)
        bound = (
            ""
            if row.flop_bound is None
            else f"; FLOP bound {row.flop_bound:.2f}, reached {row.bound_fraction:.0%}"
        ) + ("" if row.traffic_bound is None else f"; traffic bound {row.traffic_bound:.2f}")
        print(
            f"\n[{row.group}] {row.method}: {row.images} images in {row.seconds:.3f} s = "
            f"{row.images_per_s:.1f} images/s; ratio to {row.reference}: {row.ratio:.3f}{bound}"
            + (f"\n  engine note: {row.note}" if row.note else "")
        )
        return row


@contextlib.contextmanager
def timing_prepare(seconds: list[float]) -> Iterator[None]:
    """Append the duration of every `IncrementalEngine.prepare` call made inside to `seconds`.

    The sweep prepares its engine itself; wrapping the classmethod for the duration of one
    timed sweep is the only way to see how much of that sweep was reading and planning the
    model, without running anything twice. The original is restored on exit.
    """
    descriptor = IncrementalEngine.__dict__["prepare"]
    original = IncrementalEngine.prepare

    def timed(*args: Any, **kwargs: Any) -> object:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - start)

    IncrementalEngine.prepare = timed  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        IncrementalEngine.prepare = descriptor  # type: ignore[method-assign]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print one table per group: method | images/s | ratio, then the target checks."""
    harness = terminalreporter.config.stash.get(_HARNESS, None)
    if harness is None or not harness.rows:
        return
    write = terminalreporter.write_line
    terminalreporter.write_sep("=", "occlusion_probe benchmark summary")
    write(
        f"torch {torch.__version__}, {harness.threads} threads, device {harness.device}; "
        "ratios are to references timed in the same test (min of interleaved rounds)"
    )
    # Other processes on the machine distort timings; the load average says how busy it was.
    start, end = harness.load_at_start, os.getloadavg()
    write(
        f"load average (1, 5, 15 min) at start {start[0]:.2f} {start[1]:.2f} {start[2]:.2f}, "
        f"at end {end[0]:.2f} {end[1]:.2f} {end[2]:.2f}, on {os.cpu_count()} CPUs"
    )
    for key, limit in harness.limits.items():
        scan = "; ".join(
            f"{name}: "
            + ", ".join(
                f"{size}: {rate:.0f}" for (fmt, size), rate in limit.scan.items() if fmt == name
            )
            for name in dict.fromkeys(fmt for fmt, _size in limit.scan)
        )
        write(
            f"forward limit [{key}]: {limit.images_per_s:.1f} images/s at batch "
            f"{limit.batch_size}, {limit.memory_format} (scan, images/s by format and batch "
            f"size: {scan})"
        )
    groups: dict[str, list[Row]] = {}
    for row in harness.rows:
        groups.setdefault(row.group, []).append(row)
    checks: list[str] = []
    for group, rows in groups.items():
        write("")
        write(f"{group}")
        write(
            "| method | images | s (min) | ms/image | images/s | ratio | ratio to "
            "| its images/s here | FLOP bound | of bound | traffic bound | prepare s "
            "| ratio without prepare |"
        )
        write(
            "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: "
            "| ---: |"
        )
        for row in rows:
            bound = "" if row.flop_bound is None else f"{row.flop_bound:.2f}"
            fraction = "" if row.bound_fraction is None else f"{row.bound_fraction:.0%}"
            traffic = "" if row.traffic_bound is None else f"{row.traffic_bound:.2f}"
            prepare = "" if row.prepare_seconds is None else f"{row.prepare_seconds:.2f}"
            unprepared = row.ratio_without_prepare
            without = "" if unprepared is None else f"{unprepared:.3f}"
            rate = row.reference_images_per_s
            reference_rate = "" if rate is None else f"{rate:.1f}"
            write(
                f"| {row.method} | {row.images} | {row.seconds:.3f} "
                f"| {1e3 / row.images_per_s:.3f} | {row.images_per_s:.1f} "
                f"| {row.ratio:.3f} | {row.reference} | {reference_rate} | {bound} | {fraction} "
                f"| {traffic} "
                f"| {prepare} "
                f"| {without} |"
            )
            if row.target is not None:
                verdict = "met" if row.ratio >= row.target else "MISSED"
                checks.append(
                    f"{group} / {row.method}: ratio {row.ratio:.3f}, target >= {row.target} "
                    f"-> {verdict}"
                )
            if row.bound_target is not None and row.bound_fraction is not None:
                verdict = "met" if row.bound_fraction >= row.bound_target else "MISSED"
                checks.append(
                    f"{group} / {row.method}: {row.bound_fraction:.0%} of its FLOP bound "
                    f"{row.flop_bound:.2f}, target >= {row.bound_target:.0%} -> {verdict}"
                )
        notes = dict.fromkeys(f"{row.method}: {row.note}" for row in rows if row.note)
        for line in notes:
            write(f"  engine note, {line}")
        by_key = {row.key: row for row in rows}
        if "dense" in by_key and "captum" in by_key and by_key["dense"].target is not None:
            speedup = by_key["dense"].ratio / by_key["captum"].ratio
            verdict = "met" if speedup >= 6 else "MISSED"
            checks.append(
                f"{group}: dense sweep / captum = {speedup:.1f}x, target >= 6x -> {verdict}"
            )
    if checks:
        write("")
        write("targets (reported, never asserted):")
        for line in checks:
            write(f"  {line}")
