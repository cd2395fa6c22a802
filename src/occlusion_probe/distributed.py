"""Sharding a sweep across torch.distributed ranks (e.g. processes started by ``torchrun``).

When the default process group is initialised with more than one rank, `sweep` gives rank
``r`` of ``W`` the input chunks ``r, r + W, r + 2W, ...`` and, at the end, every rank
receives the full result in input order (tensors exchanged with ``all_gather`` /
``all_reduce``; nothing is pickled). Works with any backend that supports those
collectives on CPU tensors (gloo) and with NCCL when tensors are on the GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .collect import ClassMeanCollector, FullCollector

__all__ = ["Shard", "current_shard", "gather_collector", "rank_path"]


@dataclass(frozen=True)
class Shard:
    """This process's share of the work: rank `rank` of `world_size`."""

    rank: int
    world_size: int

    def owns(self, chunk_index: int) -> bool:
        return chunk_index % self.world_size == self.rank


def current_shard() -> Shard | None:
    """The shard of this process when torch.distributed runs with several ranks, else None."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    world = dist.get_world_size()
    return Shard(dist.get_rank(), world) if world > 1 else None


def rank_path(path: str | os.PathLike[str], shard: Shard) -> Path:
    """Each rank checkpoints its own chunks in its own file: ``run.ckpt`` -> ``run.ckpt.rank1``."""
    path = Path(path)
    return path.with_name(f"{path.name}.rank{shard.rank}")


def _comm_device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo and others take CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_gather_rows(tensor: torch.Tensor, counts: list[int]) -> list[torch.Tensor]:
    """all_gather of tensors whose first dimension differs per rank (padded to the largest)."""
    device = _comm_device()
    longest = max(counts)
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=device)
    padded[: tensor.shape[0]] = tensor.to(device)
    gathered = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(gathered, padded)
    return [part[:count].cpu() for part, count in zip(gathered, counts, strict=True)]


def _all_gather_ints(values: list[int]) -> list[list[int]]:
    device = _comm_device()
    count = torch.tensor([len(values)], dtype=torch.int64, device=device)
    counts = [torch.empty_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    parts = _all_gather_rows(torch.tensor(values, dtype=torch.int64).reshape(-1), sizes)
    return [[int(v) for v in part] for part in parts]


def gather_collector(
    collector: FullCollector | ClassMeanCollector, shard: Shard
) -> FullCollector | ClassMeanCollector:
    """Merge the collectors of all ranks; every rank gets the merged collector."""
    if isinstance(collector, ClassMeanCollector):
        return _reduce_class_means(collector)
    return _gather_full(collector)


def _gather_full(collector: FullCollector) -> FullCollector:
    indices = _all_gather_ints(collector.chunk_indices)
    sizes = _all_gather_ints(collector.chunk_sizes)
    rows = [sum(s) for s in sizes]
    state = collector.state()
    # A rank with no chunk has empty placeholder shapes; take the shapes from a rank with data.
    shape_probe = _all_gather_ints(
        list(state["occluded"].shape) if rows[dist.get_rank()] else [0, 0, 0, 0]
    )
    full_shape = max(shape_probe, key=lambda s: s[0])
    k = full_shape[3]
    baseline = (
        torch.from_numpy(state["baseline"]).reshape(-1, k)
        if rows[dist.get_rank()]
        else torch.zeros((0, k))
    )
    occluded = (
        torch.from_numpy(state["occluded"])
        if rows[dist.get_rank()]
        else torch.zeros((0, *full_shape[1:]))
    )
    has_labels = torch.tensor([int("labels" in state)], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(has_labels, op=dist.ReduceOp.MAX)
    baselines = _all_gather_rows(baseline.float(), rows)
    occludeds = _all_gather_rows(occluded.float(), rows)
    labels_parts: list[torch.Tensor] | None = None
    if int(has_labels):
        mine = (
            torch.from_numpy(state["labels"])
            if "labels" in state
            else torch.zeros(0, dtype=torch.int64)
        )
        labels_parts = _all_gather_rows(mine, rows)
    pieces: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
    for rank, (chunk_ids, chunk_sizes) in enumerate(zip(indices, sizes, strict=True)):
        b_split = torch.split(baselines[rank], chunk_sizes)
        o_split = torch.split(occludeds[rank], chunk_sizes)
        l_split = torch.split(labels_parts[rank], chunk_sizes) if labels_parts is not None else None
        for j, chunk_id in enumerate(chunk_ids):
            pieces.append(
                (chunk_id, b_split[j], o_split[j], None if l_split is None else l_split[j])
            )
    merged = FullCollector()
    for chunk_id, b, o, lab in sorted(pieces, key=lambda piece: piece[0]):
        merged.add(b, o, lab, chunk_id)
    return merged


def _reduce_class_means(collector: ClassMeanCollector) -> ClassMeanCollector:
    state = collector.state()
    shape = list(state["occluded_sum"].shape) if state else [0, 0, 0, 0, 0]
    shapes = _all_gather_ints(shape)
    full = max(shapes, key=lambda s: s[1])
    device = _comm_device()
    merged = ClassMeanCollector()
    arrays: dict[str, np.ndarray] = {}
    k = full[1]
    templates = {
        "occluded_sum": (tuple(full), torch.float64),
        "baseline_sum": ((2, k, k), torch.float64),
        "counts": ((2, k), torch.int64),
        "confusion": ((k, k), torch.int64),
    }
    for key, (shape_of, dtype) in templates.items():
        tensor = torch.from_numpy(state[key]) if state else torch.zeros(shape_of, dtype=dtype)
        tensor = tensor.to(device)
        dist.all_reduce(tensor)
        arrays[key] = tensor.cpu().numpy()
    merged.load_state(arrays)
    return merged
