"""Run by tests/test_distributed.py under torchrun: ranks given different sweeps must all
get RankMismatchError before any work, and an agreeing sweep afterwards must still run."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

import occlusion_probe as op
from occlusion_probe.distributed import RankMismatchError


def linear(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(144, 3)).eval()


def images(count: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 1, 12, 12, generator=torch.Generator().manual_seed(seed))


def cases(rank: int) -> dict[str, Callable[[], op.SweepResult]]:
    model, regions, x = linear(0), op.grid(12, 12, 2, 2), images(6)
    calls: list[int] = []

    def counting(batch: torch.Tensor) -> torch.Tensor:
        calls.append(int(batch.shape[0]))
        return model(batch)

    def run(*args: object, **kwargs: object) -> op.SweepResult:
        result = op.sweep(*args, progress=False, **kwargs)  # type: ignore[call-overload]
        assert isinstance(result, op.SweepResult)
        return result

    seeded = linear(rank)
    return {
        "count": lambda: run(counting, images(37 - 7 * rank), regions, [0.0]),
        "pixels": lambda: run(counting, images(6, seed=rank), regions, [0.0]),
        "labels": lambda: run(counting, x, regions, [0.0], labels=[rank, 0, 1, 2, 0, 1]),
        "model": lambda: run(seeded, x, regions, [0.0]),
        "closure": lambda: run(lambda batch: seeded(batch), x, regions, [0.0]),
        "regions": lambda: run(counting, x, op.grid(12, 12, 2 + rank, 2), [0.0]),
        "fills": lambda: run(counting, x, regions, [0.5 * rank]),
        "output": lambda: run(counting, x, regions, [0.0], output=("softmax", "logits")[rank]),
        "calls": lambda: torch.tensor(calls),  # type: ignore[return-value]
        "agreeing": lambda: run(model, x, regions, [0.0]),
    }


def main(out: Path) -> None:
    rank = dist.get_rank()
    for name, case in cases(rank).items():
        try:
            got = case()
        except RankMismatchError as error:
            text = f"RankMismatchError: {error}"
        else:
            text = f"ok {got.num_images}" if isinstance(got, op.SweepResult) else f"ok {got}"
        (out / f"rank{rank}_{name}.txt").write_text(text)


if __name__ == "__main__":
    dist.init_process_group("gloo")
    try:
        main(Path(sys.argv[1]))
    finally:
        dist.destroy_process_group()
