"""engines/auto.py: engine="auto" chooses by estimated cost, reuses kept engines, and is
safe under threads. Every choice here rests on injected rates and forward times, never on
the machine's speed."""

from __future__ import annotations

import sys
import threading
import weakref

import pytest
import torch
from torch import nn

import occlusion_probe as op
from occlusion_probe.engines import auto, incremental
from occlusion_probe.engines.auto import Estimate, ReadingRates, choose_engine, estimate_cost
from occlusion_probe.errors import InputValueError


def _conv_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    ).eval()


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch: pytest.MonkeyPatch) -> auto._State:
    """Each test starts with nothing kept, nothing forgone, and no export seen."""
    state = auto._State()
    monkeypatch.setattr(auto, "_STATE", state)
    monkeypatch.setattr(incremental, "_PREPARED", weakref.WeakKeyDictionary())
    return state


def _rates(read: float, forward: float, size: int = 32) -> ReadingRates:
    """Rates under which reading `_conv_net` costs `read` seconds and one forward
    `forward` seconds (torch.export's setup is counted as paid: the suite has exported)."""
    ops = estimate_cost(
        _conv_net(), torch.rand(1, 3, size, size), 1, rates=ReadingRates(forward_seconds=1.0)
    ).ops
    return ReadingRates(
        seconds_per_op=read / ops, setup_seconds=0.0, expected_gain=2.0, forward_seconds=forward
    )


def test_estimate_counts_ops_and_prices_the_sweep(
    fresh_state: auto._State, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A process that has not exported yet pays torch.export's setup.
    monkeypatch.delitem(sys.modules, "torch._dynamo", raising=False)
    model = _conv_net()
    rates = ReadingRates(seconds_per_op=0.5, setup_seconds=3.0, forward_seconds=0.01)
    estimate = estimate_cost(model, torch.rand(1, 3, 16, 16), 100, 0.25, rates)
    # Four convs/pools/linear and friends: each module's forward calls at least one op.
    assert estimate.ops >= 10
    assert estimate.read_seconds == pytest.approx(3.0 + 0.5 * estimate.ops)
    assert estimate.dense_seconds == pytest.approx(1.0)
    assert estimate.saved_seconds == pytest.approx(0.5)
    assert estimate.worth_reading == (0.75 >= estimate.read_seconds)
    assert "100 occluded images" in estimate.describe()
    fresh_state.exported = True
    again = estimate_cost(model, torch.rand(1, 3, 16, 16), 100, 0.25, rates)
    assert again.read_seconds == pytest.approx(0.5 * estimate.ops)


def test_estimate_restores_the_models_flags() -> None:
    model = _conv_net().train()
    model[1].eval()
    estimate_cost(model, torch.rand(1, 3, 16, 16), 10, rates=_rates(1.0, 0.1, 16))
    assert model.training and not model[1].training and model[0].training


def test_a_stream_of_unknown_length_always_reads() -> None:
    estimate = Estimate(0.01, 10, None, 1e9, 0.0, ReadingRates())
    assert estimate.worth_reading and estimate.dense_seconds is None
    assert "unknown length" in estimate.describe()


def test_small_sweep_runs_dense_and_says_what_it_estimated() -> None:
    masks = op.grid(16, 16, rows=2, cols=2).masks
    engine, note = choose_engine(
        "auto",
        _conv_net(),
        (3, 16, 16),
        False,
        masks,
        4,
        torch.float32,
        rates=_rates(10.0, 0.1, 16),
    )
    assert engine is None
    assert "estimated: dense 0.40 s" in note and "reading 10.00 s" in note


def test_large_sweep_reads_at_once() -> None:
    masks = op.grid(32, 32, rows=4, cols=4).masks
    engine, note = choose_engine(
        "auto", _conv_net(), (3, 32, 32), False, masks, 400, torch.float32, rates=_rates(10.0, 0.1)
    )
    assert engine is not None, note
    assert "read because estimated: dense 40.00 s" in note


def test_repeated_small_sweeps_read_once_their_forgone_savings_pay(
    fresh_state: auto._State,
) -> None:
    """Ski rental: reading costs 1 s, each sweep would save 0.2 s (4 images x 0.1 s, gain 2):
    the first four sweeps run dense, the fifth reads (0.8 s forgone + 0.2 s saved = 1 s)."""
    model, masks = _conv_net(), op.grid(32, 32, rows=4, cols=4).masks
    chosen = [
        choose_engine(
            "auto", model, (3, 32, 32), False, masks, 4, torch.float32, rates=_rates(1.0, 0.1)
        )[0]
        for _ in range(6)
    ]
    assert [engine is None for engine in chosen] == [True] * 4 + [False] * 2
    # The sixth found the fifth's engine kept: nothing read again.
    assert chosen[5] is chosen[4] and chosen[5] is not None and chosen[5].reused


def test_forgone_savings_are_per_input_shape() -> None:
    model = _conv_net()
    for size in (16, 32):
        masks = op.grid(size, size, rows=2, cols=2).masks
        engine, _ = choose_engine(
            "auto",
            model,
            (3, size, size),
            False,
            masks,
            4,
            torch.float32,
            rates=_rates(1.0, 0.1, size),
        )
        assert engine is None
    key = ((3, 16, 16), torch.float32, "cpu")
    assert auto._STATE.forgone[model][key] == pytest.approx(0.2)


def test_kept_engine_is_used_by_auto_whatever_the_estimate() -> None:
    model = _conv_net()
    images = torch.rand(1, 3, 16, 16)
    regions = op.grid(16, 16, rows=4, cols=4)
    forced = op.sweep(model, images, regions, engine="incremental", progress=False)
    result = op.sweep(model, images, regions, progress=False)
    assert result.engine == "incremental", result.engine_note
    assert "kept from an earlier sweep" in result.engine_note
    torch.testing.assert_close(result.occluded, forced.occluded, rtol=0, atol=0)


def test_changed_weights_are_not_kept() -> None:
    model = _conv_net()
    masks = op.grid(16, 16, rows=2, cols=2).masks
    first, _ = choose_engine("incremental", model, (3, 16, 16), False, masks, 4, torch.float32)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    second, _ = choose_engine("incremental", model, (3, 16, 16), False, masks, 4, torch.float32)
    assert first is not None and second is not None and second is not first


def test_model_it_cannot_read_is_dense_with_the_reason() -> None:
    engine, note = choose_engine(
        "auto",
        lambda x: x.flatten(1)[:, :3],
        (3, 16, 16),
        False,
        op.grid(16, 16).masks,
        10**6,
        torch.float32,
    )
    assert engine is None and "not an nn.Module" in note
    with pytest.raises(InputValueError, match='engine: "incremental" cannot run'):
        choose_engine(
            "incremental",
            lambda x: x,
            (3, 16, 16),
            False,
            op.grid(16, 16).masks,
            1,
            torch.float32,
        )


def test_unknown_engine_name() -> None:
    with pytest.raises(InputValueError, match="engine: expected"):
        choose_engine(
            "fast", _conv_net(), (3, 16, 16), False, op.grid(16, 16).masks, 1, torch.float32
        )


@pytest.mark.parametrize("kept", [True, False], ids=["kept-engine", "fresh-reading"])
def test_threads_share_one_reading_and_equal_sequential_sweeps(kept: bool) -> None:
    """Four threads sweeping one model equal sequential sweeps: bit for bit with the engine
    the sequential sweeps used (a per-engine lock keeps each run's shared state its own);
    with one read afresh by the threads, to rounding (its first run times its layout and
    call sizes anew, which may order sums differently)."""
    model = _conv_net()
    regions = op.grid(16, 16, rows=4, cols=4)
    images = [
        torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(4)
    ]
    want = [
        op.sweep(model, x, regions, engine="incremental", progress=False).occluded for x in images
    ]
    if not kept:
        incremental._PREPARED.clear()
    got: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(2):
                got[i] = op.sweep(
                    model, images[i], regions, engine="incremental", progress=False
                ).occluded
        except BaseException as error:  # reported below with the thread's index
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for i in range(4):
        if kept:
            assert torch.equal(got[i], want[i]), i
        else:
            torch.testing.assert_close(got[i], want[i], rtol=0, atol=1e-6)
