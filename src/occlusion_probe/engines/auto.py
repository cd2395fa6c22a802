"""``engine="auto"``: which engine runs a sweep, chosen by what each would cost.

Reading a model for the incremental engine (torch.export, then planning every region) costs
seconds; the dense engine costs one forward per occluded image. The chooser:

1. uses the prepared incremental engine kept for the same model, input shape, dtype,
   device and regions when there is one (reading it again would cost nothing it saves);
2. otherwise measures one forward of one image, counting the torch ops it calls, and
   estimates the dense work of this sweep (occluded images x that forward) and the reading
   (`ReadingRates`: seconds per op, plus torch.export's one-off setup in a process that has
   not exported yet);
3. reads the model when the dense work the engine is expected to save (`expected_gain`),
   added to what earlier dense sweeps of the same model and input forwent, reaches the
   reading's cost: a user explaining one image at a time pays at most about twice the
   better choice (the ski-rental rule), and a large sweep reads at once;
4. after reading, runs incremental when the plan's FLOP and memory-traffic bounds both
   reach `MIN_BOUND`, else dense.

Every step is said in the sweep's ``engine_note``. Reading is serialised by one lock
(torch.export is not thread-safe), and the kept engines and forgone savings are guarded by it.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..errors import InputValueError, describe
from ..model import evaluation_mode
from .graph import hook_reason
from .incremental import MIN_BOUND, IncrementalEngine

__all__ = [
    "READING_RATES",
    "Estimate",
    "ReadingRates",
    "assumed_rates",
    "choose_engine",
    "estimate_cost",
]


@dataclass(frozen=True)
class ReadingRates:
    """What reading a model costs, and what the incremental engine is expected to save.

    seconds_per_op : seconds of torch.export and planning per torch op the model's forward
        calls (ResNet-18: 89 ops, 2.3 s; see benchmarks/test_auto.py)
    setup_seconds : torch.export's one-off setup, paid by the first export of a process
        (about 2-4 s on 2 cores)
    expected_gain : the dense time over the incremental time assumed before the plan is
        known (zoo CNNs at 16x16 patches run 1.4-7.7x; 2 is their median)
    forward_seconds : one image's forward time to assume instead of timing one (None: timed;
        tests give one so that no choice depends on the machine's speed)
    """

    seconds_per_op: float = 0.03
    setup_seconds: float = 3.0
    expected_gain: float = 2.0
    forward_seconds: float | None = None


#: The rates `choose_engine` uses unless given others (tests inject their own).
READING_RATES = ReadingRates()


@dataclass(frozen=True)
class Estimate:
    """What `choose_engine` estimated before reading a model.

    forward_seconds : one forward of one image, measured
    ops : torch ops that forward called, counted
    items : occluded images of the sweep (None: a stream of unknown length)
    read_seconds : estimated cost of reading the model
    forgone_seconds : savings earlier dense sweeps of this model and input did not take
    rates : the rates used
    """

    forward_seconds: float
    ops: int
    items: int | None
    read_seconds: float
    forgone_seconds: float
    rates: ReadingRates

    @property
    def dense_seconds(self) -> float | None:
        """The dense engine's estimated time for this sweep (None for a stream)."""
        return None if self.items is None else self.items * self.forward_seconds

    @property
    def saved_seconds(self) -> float | None:
        """The time the incremental engine is expected to save on this sweep."""
        dense = self.dense_seconds
        return None if dense is None else dense * (1.0 - 1.0 / self.rates.expected_gain)

    @property
    def worth_reading(self) -> bool:
        """Whether this and the earlier sweeps' expected savings pay for the reading (a
        stream of unknown length always reads)."""
        saved = self.saved_seconds
        return saved is None or saved + self.forgone_seconds >= self.read_seconds

    def describe(self) -> str:
        """One clause with the figures, for ``engine_note``."""
        saved = self.saved_seconds
        if saved is None:
            return (
                f"a stream of unknown length; reading the model estimated {self.read_seconds:.1f} s"
            )
        return (
            f"estimated: dense {self.dense_seconds:.2f} s ({self.items} occluded images x "
            f"{self.forward_seconds * 1e3:.1f} ms per forward of one image), the engine saving "
            f"{saved:.2f} s at an assumed {self.rates.expected_gain:g}x, "
            f"{self.forgone_seconds:.2f} s forgone by earlier sweeps of this model; reading "
            f"{self.read_seconds:.2f} s ({self.ops} torch ops)"
        )


class _OpCounter(TorchFunctionMode):
    """Counts the torch functions a forward calls (the size of the graph export reads)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        self.calls += 1
        return func(*args, **(kwargs or {}))


class _State:
    """What the chooser keeps between sweeps, guarded by `lock`."""

    def __init__(self) -> None:
        # Reentrant: preparing calls back into nothing of ours, but a model's forward may
        # start a nested sweep (a model that explains itself).
        self.lock = threading.RLock()
        self.exported = False
        self.rates = READING_RATES
        # Per model: savings forgone per (image shape, dtype, device).
        self.forgone: weakref.WeakKeyDictionary[nn.Module, dict[tuple[object, ...], float]] = (
            weakref.WeakKeyDictionary()
        )


_STATE = _State()


@contextlib.contextmanager
def assumed_rates(rates: ReadingRates) -> Iterator[None]:
    """Within the block, ``engine="auto"`` assumes `rates` (for tests, and for callers who
    measured their own), and forgets the savings forgone before it; both are restored after.

    >>> with assumed_rates(ReadingRates(forward_seconds=1e-3)):
    ...     pass
    """
    with _STATE.lock:
        saved = (_STATE.rates, _STATE.forgone)
        _STATE.rates, _STATE.forgone = rates, weakref.WeakKeyDictionary()
    try:
        yield
    finally:
        with _STATE.lock:
            _STATE.rates, _STATE.forgone = saved


def estimate_cost(
    model: nn.Module,
    example: Tensor,
    items: int | None,
    forgone_seconds: float = 0.0,
    rates: ReadingRates | None = None,
) -> Estimate:
    """Measure one forward of `example` (1, C, H, W) and estimate reading `model`.

    The model runs in eval mode under ``torch.inference_mode()`` (its flags restored).
    """
    given = rates if rates is not None else _STATE.rates
    counter = _OpCounter()
    with evaluation_mode(model), counter:
        start = time.perf_counter()
        model(example)
        seconds = time.perf_counter() - start
    setup = 0.0 if _export_set_up() else given.setup_seconds
    return Estimate(
        forward_seconds=seconds if given.forward_seconds is None else given.forward_seconds,
        ops=counter.calls,
        items=items,
        read_seconds=setup + given.seconds_per_op * counter.calls,
        forgone_seconds=forgone_seconds,
        rates=given,
    )


def _export_set_up() -> bool:
    """Whether this process has paid torch.export's setup (ours, or the user's own export
    or torch.compile, which load torch._dynamo)."""
    return _STATE.exported or "torch._dynamo" in sys.modules


def _prepare(
    model: nn.Module,
    image_shape: tuple[int, ...],
    masks: Tensor,
    dtype: torch.dtype,
) -> tuple[IncrementalEngine | str, float]:
    """The prepared engine (or the reason it cannot run) and the seconds reading took."""
    with evaluation_mode(model), torch.inference_mode(False):
        start = time.perf_counter()
        prepared = IncrementalEngine.prepare(model, image_shape, masks, dtype, masks.device)
        return prepared, time.perf_counter() - start


def _reason_not_to_read(model: object, single_channel: bool, rank: int) -> str | None:
    if not isinstance(model, nn.Module):
        return f"the model is {describe(model)}, not an nn.Module whose graph can be read"
    hooked = hook_reason(model)
    if hooked is not None:
        return hooked
    if single_channel:
        return (
            "images were given without their channel axis; the incremental engine needs "
            "(N, C, *spatial) input"
        )
    if rank != 2:
        return f"the incremental engine plans 2D images only, these have {rank} spatial axes"
    return None


def choose_engine(
    engine: str,
    model: object,
    image_shape: tuple[int, ...],
    single_channel: bool,
    masks: Tensor,
    items: int | None,
    dtype: torch.dtype,
    example: Tensor | None = None,
    rates: ReadingRates | None = None,
) -> tuple[IncrementalEngine | None, str]:
    """Pick the engine that computes the occluded outputs, and prepare it.

    Parameters
    ----------
    engine : {"auto", "dense", "incremental"}
        The engine requested from `sweep`.
    model : object
        The model.
    image_shape : tuple of int
        (C, *spatial) of one image.
    single_channel : bool
        Whether the images came without their channel axis; the incremental engine needs
        (N, C, *spatial) input.
    masks : Tensor, shape (R, *spatial), bool
        The regions, on the device the model runs on.
    items : int or None
        How many occluded images the sweep computes (None: unknown, a stream).
    dtype : torch.dtype
        The floating dtype the model gets its images in (the engine is read and run in it).
    example : Tensor, shape (1, C, H, W), optional
        One image in `dtype` on the run device, for the measured forward (zeros if None).
    rates : ReadingRates, optional
        The reading costs assumed (default: `READING_RATES`, refined by each reading).

    Returns
    -------
    engine : IncrementalEngine or None
        The prepared incremental engine, or None for the dense engine.
    note : str
        One sentence explaining the choice, with the estimates it rests on.

    Raises
    ------
    InputValueError
        When `engine` is unknown, or ``"incremental"`` is requested for a model it cannot run.

    Examples
    --------
    >>> import torch, occlusion_probe as op
    >>> from occlusion_probe.engines.auto import choose_engine
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(),
    ...                             torch.nn.LazyLinear(2))
    >>> _ = model(torch.zeros(1, 1, 8, 8))
    >>> masks = op.grid(8, 8, rows=2, cols=2).masks
    >>> engine, note = choose_engine("dense", model, (1, 8, 8), False, masks, 4, torch.float32)
    >>> engine is None, note
    (True, 'dense engine requested')
    """
    if engine not in ("auto", "dense", "incremental"):
        raise InputValueError(f'engine: expected "auto", "dense" or "incremental", got {engine!r}')
    if engine == "dense":
        return None, "dense engine requested"
    reason = _reason_not_to_read(model, single_channel, masks.dim() - 1)
    if reason is None and isinstance(model, nn.Module):
        with _STATE.lock:
            prepared, estimate = _cached_or_read(
                engine == "auto", model, image_shape, masks, items, dtype, example, rates
            )
        if prepared is None:
            return None, (
                "dense engine: reading the model would cost more than it saves so far "
                f'({estimate.describe() if estimate else ""}; engine="incremental" forces it)'
            )
        if isinstance(prepared, str):
            reason = prepared
        elif engine == "auto" and prepared.bound < MIN_BOUND:
            reason = (
                f"its plan saves too little: FLOP bound {prepared.flop_bound:.2f}x and "
                f"memory-traffic bound {prepared.traffic_bound:.2f}x over dense, the smaller "
                f"below {MIN_BOUND}x (the extra launches would cost as much)"
            )
        else:
            if estimate is not None and engine == "auto":
                return prepared, f"{prepared.note} (read because {estimate.describe()})"
            return prepared, prepared.note
    if engine == "incremental":
        raise InputValueError(f'engine: "incremental" cannot run this model: {reason}')
    return None, f"incremental engine not applicable: {reason}"


def _cached_or_read(
    auto: bool,
    model: nn.Module,
    image_shape: tuple[int, ...],
    masks: Tensor,
    items: int | None,
    dtype: torch.dtype,
    example: Tensor | None,
    rates: ReadingRates | None,
) -> tuple[IncrementalEngine | str | None, Estimate | None]:
    """Under the lock: the kept engine, or a fresh reading when it pays (always when not
    `auto`); None with the estimate when auto keeps to dense."""
    kept = IncrementalEngine.kept(model, image_shape, masks, dtype, masks.device)
    if kept is not None:
        return kept, None
    estimate: Estimate | None = None
    key = (tuple(image_shape), dtype, str(masks.device))
    if auto:
        shown = (
            example
            if example is not None
            else torch.zeros((1, *image_shape), dtype=dtype, device=masks.device)
        )
        forgone = _STATE.forgone.get(model, {}).get(key, 0.0)
        estimate = estimate_cost(model, shown[:1], items, forgone, rates)
        if not estimate.worth_reading:
            saved = estimate.saved_seconds or 0.0
            _STATE.forgone.setdefault(model, {})[key] = forgone + saved
            return None, estimate
    set_up = _export_set_up()
    prepared, seconds = _prepare(model, image_shape, masks, dtype)
    if estimate is not None and estimate.ops > 0 and set_up and rates is None:
        # Later estimates use this process's own measured rate (the first export also paid
        # torch.export's setup, so it is not used for the per-op rate).
        _STATE.rates = replace(_STATE.rates, seconds_per_op=seconds / estimate.ops)
    _STATE.exported = True
    _STATE.forgone.pop(model, None)
    return prepared, estimate
