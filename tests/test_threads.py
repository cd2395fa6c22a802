"""Concurrent sweeps of one model equal sequential ones (docs/semantics.md, "Threads")."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import torch
from reference_models import small_cnn
from torch import Tensor, nn

import occlusion_probe as op
from occlusion_probe.model import evaluation_mode

THREADS = 4
SWEEPS_PER_THREAD = 2


def _images(seed: int) -> Tensor:
    return torch.rand(3, 1, 12, 12, generator=torch.Generator().manual_seed(seed))


def _dropout_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(),
        nn.Linear(4 * 12 * 12, 5),
    ).train()  # fmt: skip


def _batchnorm_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * 12 * 12, 5),
    )  # fmt: skip
    batch_norm = model[1]
    assert isinstance(batch_norm, nn.BatchNorm2d)
    batch_norm.running_mean.uniform_(-0.5, 0.5)
    batch_norm.running_var.uniform_(0.5, 2.0)
    return model.train()


def _in_threads(work: Callable[[int], object]) -> list[object]:
    """Run `work(i)` for i in 0..THREADS * SWEEPS_PER_THREAD - 1 on THREADS threads."""
    results: list[object] = [None] * (THREADS * SWEEPS_PER_THREAD)
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def worker(thread: int) -> None:
        try:
            start.wait()
            for k in range(SWEEPS_PER_THREAD):
                index = thread * SWEEPS_PER_THREAD + k
                results[index] = work(index)
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize(
    ("make", "engine"),
    [
        (_dropout_model, "dense"),
        (_batchnorm_model, "dense"),
        (lambda: small_cnn().eval(), "incremental"),
        (_batchnorm_model, "incremental"),
    ],
)
def test_concurrent_sweeps_equal_sequential_ones(
    make: Callable[[], nn.Module], engine: str
) -> None:
    model = make()
    flags = [module.training for module in model.modules()]
    regions = op.grid(12, 12, 3, 3)

    def run(index: int) -> op.SweepResult:
        return op.sweep(
            model, _images(index % 3), regions, [0.0, 1.0], progress=False,
            engine=engine,  # type: ignore[arg-type]
        )  # fmt: skip

    sequential = [run(i) for i in range(THREADS * SWEEPS_PER_THREAD)]
    concurrent = _in_threads(run)
    for alone, together in zip(sequential, concurrent, strict=True):
        assert isinstance(together, op.SweepResult)
        assert together.engine == alone.engine == engine
        torch.testing.assert_close(together.baseline, alone.baseline, rtol=0, atol=0)
        torch.testing.assert_close(together.occluded, alone.occluded, rtol=1e-6, atol=1e-7)
    assert [module.training for module in model.modules()] == flags


def test_concurrent_keep_only_leaves_the_flags_alone() -> None:
    model = _dropout_model()
    labels = torch.tensor([0, 1, 2])
    regions = op.grid(12, 12, 2, 2)

    def run(index: int) -> Tensor:
        report = op.keep_only(model, _images(index % 3), labels, regions, [1, 2], progress=False)
        return report.confusion

    sequential = [run(i) for i in range(THREADS * SWEEPS_PER_THREAD)]
    for alone, together in zip(sequential, _in_threads(run), strict=True):
        assert isinstance(together, Tensor)
        assert torch.equal(alone, together)
    assert model.training


def test_evaluation_mode_is_reentrant_and_restores_once() -> None:
    model = _dropout_model()
    model[0].eval()  # a deliberately mixed model keeps its mix
    with evaluation_mode(model):
        assert not any(module.training for module in model.modules())
        with evaluation_mode(model):
            assert not model.training
        assert not model.training  # the inner exit leaves the outer's eval mode on
    assert [module.training for module in model.modules()] == [True, False, True, True, True, True]
