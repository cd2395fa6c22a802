"""How many occluded images go into one model call, and in which memory format.

A fixed memory budget picks the wrong batch for many models: on a 2-core CPU a half-width
ResNet-18 at 224x224 ran 1.3x faster at 8 images per call than at the 4 the old 1 MiB budget
gave, and 1.8x faster again with channels-last inputs, while the paper's small CNN is fastest
at 32-96 images. So ``batch_size="auto"`` times a few candidates on the sweep's own first
occluded images and keeps the fastest for the rest:

1. the starting size is the memory budget's (`auto_batch_size`); the candidates are that size
   halved (on CPU not below 4), doubled and quadrupled (at most 64 MiB of input per call),
   each with contiguous and, for images of more than one channel, channels-last inputs;
2. every candidate runs one block of the sweep's real work (nothing is thrown away) as a
   warm-up (the first call of a new shape pays one-off costs such as oneDNN primitive
   setup: 80x a warm call on the incremental engine's small pieces), then one timed block,
   then those within 1.25x of the fastest one more; a candidate's time is its best
   per-image time (building the block and the forward, device work included);
3. the fastest is used for the rest of the sweep and remembered for this model, image shape,
   dtype and device (for the process's lifetime), so later sweeps skip the trial.

The trial runs only when the sweep has at least 1.25 times the trial's images. A smaller
sweep with 1.25 times two calls of every size runs a short trial: the sizes in one layout
(channels-last on a CPU), one warm-up and one timed call each, not remembered; a smaller one
still uses the starting size, on a CPU with channels-last input. A channels-last input is
the model's own forward on the same values in another memory layout: outputs agree with
contiguous inputs to float rounding (1.5e-7 on a float32 ResNet-18, 1e-7 relative), like a
change of batch size.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = [
    "BatchConfig",
    "BatchPlan",
    "as_channels_last",
    "auto_batch_size",
    "fixed_batch_size",
    "remembered_batch",
]

# Input bytes per call of the starting size: near the fast end of the CPU forward-limit scans
# of benchmarks/test_sweep.py (docs/performance.md); on CUDA a larger budget keeps it busy.
_AUTO_BATCH_BYTES = {"cpu": 2**20, "cuda": 256 * 2**20}
# The trial never tries calls of more input than this (a CPU's caches are long exceeded).
_TRIAL_MAX_BYTES = {"cpu": 64 * 2**20, "cuda": 1024 * 2**20}
# Candidates within this factor of the fastest after the timed round are timed once more.
_SECOND_ROUND_FACTOR = 1.25
# A sweep must hold this many times the images of the trial's warm-up and timed round for
# the trial to run (a second timed round for the close candidates runs if images are left).
TRIAL_MIN_SHARE = 1.25


def auto_batch_size(
    image_shape: Sequence[int], device: torch.device, items: int, element_size: int = 4
) -> int:
    """The starting batch size of ``batch_size="auto"``: a memory budget's.

    The budget (1 MiB of input on CPU, 256 MiB on CUDA, or 1/16 of the free GPU memory if
    smaller) divided by the bytes of one image and rounded down to a power of two; on CPU
    at least 4 images while they fit in 16 MiB (one large image per call leaves the
    convolutions too little work to split across threads). The smaller of that and `items`.

    Parameters
    ----------
    image_shape : sequence of int
        Shape of one image, e.g. (C, H, W).
    device : torch.device
        Where the model runs; ``"cuda"`` devices get the CUDA budget.
    items : int
        How many images there are in all; the batch is never larger.
    element_size : int
        Bytes per pixel value in the dtype the model gets (4 for float32, 2 for bfloat16,
        8 for float64).

    Returns
    -------
    int
        Images per model call, at least 1 and at most `items`.

    Examples
    --------
    >>> auto_batch_size((1, 48, 48), torch.device("cpu"), items=1000)
    64
    >>> auto_batch_size((3, 224, 224), torch.device("cpu"), items=1000)
    4
    >>> auto_batch_size((1, 48, 48), torch.device("cpu"), items=1000, element_size=2)
    128
    """
    bytes_per_image = element_size * math.prod(image_shape)
    budget = _AUTO_BATCH_BYTES["cuda" if device.type == "cuda" else "cpu"]
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        budget = min(budget, int(free) // 16)
    size = max(1, budget // bytes_per_image)
    if device.type != "cuda":
        size = max(size, min(4, 16 * budget // bytes_per_image))
    size = 1 << int(math.log2(size))
    return max(1, min(size, items))


def as_channels_last(images: Tensor) -> Tensor:
    """A copy of `images` (n, C, H, W) with channels-last strides, also for C = 1.

    ``contiguous(memory_format=torch.channels_last)`` keeps one-channel images as they are
    (their layout is both at once), and a convolution then runs NCHW; with channels-last
    strides set explicitly it runs channels-last: 2.6x faster on the paper's 1x48x48 CNN
    on 2 CPU cores, with the same outputs to float rounding (3e-8).
    """
    _n, c, h, w = images.shape
    out = torch.empty_strided(
        images.shape, (h * w * c, 1, w * c, c), dtype=images.dtype, device=images.device
    )
    return out.copy_(images)


@dataclass(frozen=True)
class BatchConfig:
    """One way to call the model: `size` images per call, in channels-last memory or not."""

    size: int
    channels_last: bool = False

    def prepare(self, batch: Tensor) -> Tensor:
        """`batch` (b, C, H, W) in this config's memory format (a copy when it changes)."""
        return as_channels_last(batch) if self.channels_last and batch.dim() == 4 else batch

    def describe(self) -> str:
        return f"{self.size}{' channels-last' if self.channels_last else ''}"


# Choices made by earlier trials, per model (dropped with it) and (shape, dtype, device).
_REMEMBERED: weakref.WeakKeyDictionary[object, dict[tuple[object, ...], BatchConfig]] = (
    weakref.WeakKeyDictionary()
)


def _key(
    image_shape: Sequence[int], dtype: torch.dtype, device: torch.device
) -> tuple[object, ...]:
    return (tuple(image_shape), dtype, str(device))


def remembered_batch(
    model: object, image_shape: Sequence[int], dtype: torch.dtype, device: torch.device
) -> BatchConfig | None:
    """The config an earlier trial chose for this model and input, or None."""
    try:
        return _REMEMBERED.get(model, {}).get(_key(image_shape, dtype, device))
    except TypeError:  # a callable that cannot be weakly referenced is never remembered
        return None


def _remember(
    model: object,
    image_shape: Sequence[int],
    dtype: torch.dtype,
    device: torch.device,
    config: BatchConfig,
) -> None:
    try:
        _REMEMBERED.setdefault(model, {})[_key(image_shape, dtype, device)] = config
    except TypeError:
        return


def fixed_batch_size(
    model: object,
    batch_size: int | str,
    image_shape: Sequence[int],
    dtype: torch.dtype,
    device: torch.device,
    items: int | None,
) -> int:
    """Images per model call of the runs that do not time a trial (`keep_only`,
    `perturbation_curve`): `batch_size` when it is an int; for ``"auto"`` the size an earlier
    sweep's trial chose for this model and input (its memory format is not used), else the
    memory budget's (`auto_batch_size` for `items` images, 1024 when unknown)."""
    if batch_size != "auto":
        return int(batch_size)
    known = remembered_batch(model, image_shape, dtype, device)
    if known is not None:
        return known.size
    return auto_batch_size(image_shape, device, items or 1024, dtype.itemsize)


@dataclass
class BatchPlan:
    """The batches of one sweep: a fixed config, or a timing trial followed by the fastest.

    Use `fixed` or `auto` to make one; the dense engine asks `blocks` for the sizes of each
    chunk's blocks and reports each block's time with `record`.

    Attributes
    ----------
    current : BatchConfig
        The config in use outside the trial (the starting one until the trial ends).
    trial : list of BatchConfig
        The candidates still to be timed (empty once decided).
    how : str
        How `current` was chosen, for `note`.
    unit : str
        What a config's size counts, for `note` ("images"; the incremental engine's
        pieces count "regions").
    equal_rounds : bool
        Time each candidate over about as many images as the largest (several calls of a
        small one); False: one call each (where the work to time on is short).
    rounds : int
        Timed rounds after the warm-up: 2 times the candidates within 1.25x of the fastest
        once more; 1 decides after the first (a short trial of a small sweep).
    """

    current: BatchConfig
    trial: list[BatchConfig] = field(default_factory=list)
    how: str = "given"
    unit: str = "images"
    equal_rounds: bool = True
    rounds: int = 2
    channels_last_refused: bool = False
    _times: dict[BatchConfig, float] = field(default_factory=dict)
    _round: int = 0
    _candidates: list[BatchConfig] = field(default_factory=list)
    _spent: dict[BatchConfig, list[float]] = field(default_factory=dict)
    _owner: tuple[object, Sequence[int], torch.dtype, torch.device] | None = None

    def __post_init__(self) -> None:
        self._candidates = list(self.trial)

    @classmethod
    def fixed(cls, size: int) -> BatchPlan:
        """Always `size` images per call, contiguous (an explicit ``batch_size=``)."""
        return cls(BatchConfig(size), how="given")

    @classmethod
    def auto(
        cls,
        model: object,
        image_shape: Sequence[int],
        dtype: torch.dtype,
        device: torch.device,
        items: int | None,
        *,
        formats: bool = True,
    ) -> BatchPlan:
        """The plan of ``batch_size="auto"`` for a sweep of `items` occluded images
        (None: unknown, a stream); `formats` allows channels-last candidates."""
        known = remembered_batch(model, image_shape, dtype, device)
        if known is not None:
            return cls(known, how="remembered from an earlier trial")
        start = auto_batch_size(image_shape, device, items or 2**62, dtype.itemsize)
        budget = _TRIAL_MAX_BYTES["cuda" if device.type == "cuda" else "cpu"]
        most = max(1, budget // (dtype.itemsize * math.prod(image_shape)))
        factors = (1, 2, 4) if device.type == "cuda" else (1, 2, 4, 8)
        # On CPU fewer than 4 images per call leave the convolutions too little work to
        # split across threads (never the fastest in the benchmarks' scans).
        smallest = 1 if device.type == "cuda" else min(4, start)
        sizes = sorted(
            {max(smallest, start * f // 2) for f in factors if start * f // 2 <= most} or {start}
        )
        layouts = [False, True] if formats and len(image_shape) == 3 else [False]
        candidates = [BatchConfig(s, cl) for cl in layouts for s in sizes]
        plan = cls(
            BatchConfig(start), candidates, "timed", _owner=(model, image_shape, dtype, device)
        )
        # The warm-up and the first timed round must fit; a stream (items None) may end
        # before the trial does, and the best so far is used for what is left.
        trial_items = sum(c.size for c in candidates + plan._timed_round(candidates))
        if (items is not None and items < TRIAL_MIN_SHARE * trial_items) or len(candidates) < 2:
            # Without the full trial a CPU gets channels-last input where the model takes
            # 4-d images: the faster layout on every CNN of benchmarks/test_architectures.py
            # and test_sweep.py but ConvNeXt-T, where it is within 5 % of contiguous.
            layout = formats and len(image_shape) == 3 and device.type == "cpu"
            short = [BatchConfig(size, layout) for size in sizes]
            if items is not None and len(short) > 1 and items >= TRIAL_MIN_SHARE * 2 * sum(sizes):
                # A short trial: the sizes in that layout, one warm-up and one timed call
                # each (the budget's size alone can be far from the best: DenseNet-121 at
                # 224x224 in benchmarks/test_architectures.py). Its choice is not
                # remembered: one call each is too noisy to bind larger sweeps.
                return cls(BatchConfig(start, layout), short, "timed", equal_rounds=False, rounds=1)
            return cls(BatchConfig(start, layout), how="memory budget (too few images to time)")
        return plan

    def blocks(self, total: int) -> Iterator[BatchConfig]:
        """Configs of consecutive blocks covering `total` items; trial blocks first, then
        blocks of the current size, split evenly (sizes differ by at most one)."""
        remaining = total
        while remaining > 0 and self.trial:
            config = self.trial[0]
            if config.size > remaining:
                break
            yield config
            remaining -= config.size
        if remaining <= 0:
            return
        # A candidate larger than what is left waits for the next chunk.
        count = -(-remaining // self.current.size)
        size, extra = divmod(remaining, count)
        for index in range(count):
            yield BatchConfig(size + (1 if index < extra else 0), self.current.channels_last)

    def record(self, config: BatchConfig, seconds: float) -> None:
        """The time of one block of `config` (building it and the forward)."""
        if not self.trial or config != self.trial[0]:
            return
        self.trial.pop(0)
        if self._round > 0:  # round 0 is a warm-up: first calls hold one-off costs
            spent = self._spent.setdefault(config, [0.0, 0])
            spent[0] += seconds
            spent[1] += config.size
            if config not in self.trial:  # this candidate's blocks of the round are done
                per_image = spent[0] / max(1, spent[1])
                self._times[config] = min(self._times.get(config, math.inf), per_image)
                self.current = min(self._times, key=lambda c: self._times[c])
                del self._spent[config]
        if not self.trial:
            self._next_round()

    def _next_round(self) -> None:
        """After a round: the timed round, then the close candidates again, then decide."""
        if self._round < self.rounds:
            best = min(self._times.values(), default=0.0)
            close = [
                c
                for c in self._candidates
                if self._round == 0 or self._times[c] <= _SECOND_ROUND_FACTOR * best
            ]
            self._round += 1
            if self._round == 1 or len(close) > 1:
                self.trial = self._timed_round(close)
                return
        if self._owner is not None:
            _remember(*self._owner, self.current)

    def refuse_channels_last(self) -> None:
        """The model raised an error on channels-last input: time and use contiguous only."""
        self.channels_last_refused = True
        refused = [c.size for c in self._candidates if c.channels_last]
        self.trial = [c for c in self.trial if not c.channels_last]
        self._candidates = [c for c in self._candidates if not c.channels_last]
        if not self._candidates and refused and self.how == "timed":
            # A trial of channels-last candidates only (a short one) times the same sizes
            # contiguous, from their warm-up.
            self._candidates = [BatchConfig(size) for size in refused]
            self.trial = list(self._candidates)
            self._round = 0
            self._spent = {}
        self._times = {c: t for c, t in self._times.items() if not c.channels_last}
        if self.current.channels_last:
            self.current = min(
                self._times, key=lambda c: self._times[c], default=BatchConfig(self.current.size)
            )
        if self.how == "timed" and not self.trial and self._candidates:
            self._next_round()

    def _timed_round(self, candidates: list[BatchConfig]) -> list[BatchConfig]:
        """Blocks of one timed round: every candidate over about as many images as the
        largest holds (several calls of a small size), so that each time averages alike."""
        if not self.equal_rounds:
            return list(candidates)
        largest = max(c.size for c in candidates)
        return [c for c in candidates for _ in range(max(1, largest // c.size))]

    @property
    def note(self) -> str:
        """One clause for `engine_note`: the config and how it was chosen."""
        refused = (
            "; the model raised an error on channels-last input, so it gets contiguous input"
            if self.channels_last_refused
            else ""
        )
        return self._choice_note() + refused

    def _choice_note(self) -> str:
        if self.how == "timed" and self._times and not self.trial:
            timed = ", ".join(
                f"{c.describe()}: {1 / t:.0f}/s"
                for c, t in sorted(self._times.items(), key=lambda i: i[1])
            )
            return (
                f"batches of {self.current.describe()} {self.unit} (timed on the first blocks, "
                f"{self.unit} per second: {timed})"
            )
        how = "the trial did not finish" if self.how == "timed" else self.how
        return f"batches of {self.current.describe()} {self.unit} ({how})"


def clock(device: torch.device) -> float:
    """Seconds for timing blocks, after waiting for queued work on `device`."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
