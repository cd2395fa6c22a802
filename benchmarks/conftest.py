"""Shared machinery of the benchmarks: options, the forward limit, paired timing, the summary.

Every number is reported as a ratio to a reference measured in the same process, in the same
test, interleaved with the method's rounds (the reference runs once before each round), so
that a change in machine load between tests does not distort the comparison. The reference
of a sweep is the *forward limit*: plain ``model(batch)`` calls over occluded images prebuilt
in memory, at the batch size that was fastest in a scan of several batch sizes. Times are the
minimum over rounds. See benchmarks/README.md.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest
import torch
from models import Case, Workload, workload_of
from torch import Tensor, nn

_HARNESS = pytest.StashKey["Harness"]()


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


@pytest.fixture(scope="session")
def harness(pytestconfig: pytest.Config) -> Harness:
    """The session's timing helper: device, forward limits, recorded rows."""
    return pytestconfig.stash[_HARNESS]


@dataclass(frozen=True)
class ForwardLimit:
    """Plain forwards of prebuilt occluded images: the best batch size of a scan.

    scan : images/s per batch size tried (minimum time over the repeats)
    """

    batch_size: int
    images_per_s: float
    scan: dict[int, float]


@dataclass(frozen=True)
class Row:
    """One line of the summary table.

    ratio : the method's images/s divided by the reference's images/s, both measured in the
        same test (interleaved rounds, minimum time of each)
    target : the ratio the project aims for, as a lower bound (None: no target)
    """

    group: str
    key: str
    method: str
    images: int
    seconds: float
    ratio: float
    reference: str
    target: float | None = None

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds


@dataclass
class Harness:
    """Timing helpers shared by all benchmark modules (one per session)."""

    device: torch.device
    threads: int
    load_at_start: tuple[float, float, float] = field(default_factory=os.getloadavg)
    rows: list[Row] = field(default_factory=list)
    limits: dict[str, ForwardLimit] = field(default_factory=dict)

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

    def forward_limit(
        self,
        key: str,
        model: nn.Module,
        occluded: Tensor,
        batch_sizes: Sequence[int],
        repeats: int = 2,
    ) -> ForwardLimit:
        """The forward limit of `model` on these prebuilt occluded images, scanned once per
        session and `key`: every batch size is warmed up, then timed `repeats` times with the
        sizes interleaved (so that load changes hit all sizes alike); best images/s wins."""
        if key in self.limits:
            return self.limits[key]
        sizes = sorted({min(size, occluded.shape[0]) for size in batch_sizes})
        runs = {size: self.forwards(model, occluded, size) for size in sizes}
        for size in sizes:
            self.seconds(self.forwards(model, occluded[:size], size))
        best = dict.fromkeys(sizes, float("inf"))
        for _ in range(repeats):
            for size in sizes:
                best[size] = min(best[size], self.seconds(runs[size]))
        scan = {size: occluded.shape[0] / best[size] for size in sizes}
        fastest = max(scan, key=lambda size: scan[size])
        limit = ForwardLimit(fastest, scan[fastest], scan)
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
            case.title, workload.model, workload.occluded(case.scan_images), case.batch_sizes
        )

    def reference(self, case: Case, workload: Workload) -> tuple[Callable[[], None], int]:
        """(callable, images): plain forwards of `workload`'s first ``case.scan_images``
        prebuilt occluded images at the case's best batch size: the forward limit, paired
        with a method in a test. A workload with fewer images borrows the case's main
        workload (same model and input size), so that the limit keeps its full batches."""
        if workload.count < case.scan_images:
            workload = workload_of(case, self.device)
        images = workload.occluded(case.scan_images)
        return self.forwards(workload.model, images, self.limit(case).batch_size), images.shape[0]

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
        **extra: object,
    ) -> Row:
        """Time `method` (which evaluates all of `workload`'s occluded images) against the
        forward limit on the same workload, and record the row (in `group`, default: the
        workload's name). Smoke cases carry no target."""
        reference, reference_images = self.reference(case, workload)
        seconds, reference_seconds = self.paired(benchmark, method, reference, rounds, warmup)
        limit_rate = reference_images / reference_seconds
        return self.record(
            benchmark,
            group=group or workload.name,
            key=key,
            method=label,
            images=workload.count,
            seconds=seconds,
            ratio=workload.count / seconds / limit_rate,
            target=None if case.smoke else target,
            forward_limit_images_per_s=limit_rate,
            forward_limit_batch_size=self.limit(case).batch_size,
            **extra,
        )

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
        **extra: object,
    ) -> Row:
        """Store a summary row, put it in ``benchmark.extra_info``, and print it.

        group : the workload (one table per group); key : the method's kind ("dense",
        "captum", ...) for cross-row checks; ratio : images/s over the reference's images/s.
        """
        row = Row(group, key, method, images, seconds, ratio, reference, target)
        info = benchmark.extra_info  # type: ignore[attr-defined]
        info.update(
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
        if row.target is not None:
            info["target"] = row.target
        self.rows.append(row)
        print(
            f"\n[{row.group}] {row.method}: {row.images} images in {row.seconds:.3f} s = "
            f"{row.images_per_s:.1f} images/s; ratio to {row.reference}: {row.ratio:.3f}"
        )
        return row


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
        scan = ", ".join(f"{size}: {rate:.0f}" for size, rate in limit.scan.items())
        write(
            f"forward limit [{key}]: {limit.images_per_s:.1f} images/s at batch "
            f"{limit.batch_size} (scan, images/s by batch size: {scan})"
        )
    groups: dict[str, list[Row]] = {}
    for row in harness.rows:
        groups.setdefault(row.group, []).append(row)
    checks: list[str] = []
    for group, rows in groups.items():
        write("")
        write(f"{group}")
        write("| method | images | s (min) | ms/image | images/s | ratio | ratio to |")
        write("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
        for row in rows:
            write(
                f"| {row.method} | {row.images} | {row.seconds:.3f} "
                f"| {1e3 / row.images_per_s:.3f} | {row.images_per_s:.1f} "
                f"| {row.ratio:.3f} | {row.reference} |"
            )
            if row.target is not None:
                verdict = "met" if row.ratio >= row.target else "MISSED"
                checks.append(
                    f"{group} / {row.method}: ratio {row.ratio:.3f}, target >= {row.target} "
                    f"-> {verdict}"
                )
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
