"""Sharding a sweep across torch.distributed ranks (e.g. processes started by ``torchrun``).

When the default process group is initialised with more than one rank, `sweep` gives rank
``r`` of ``W`` the input chunks ``r, r + W, r + 2W, ...`` and, at the end, every rank
receives the full result in input order (tensors exchanged with ``all_gather`` /
``all_reduce``; nothing is pickled). Works with any backend that supports those
collectives on CPU tensors (gloo) and with NCCL when tensors are on the GPU.

Sharding by chunk index is right only when every rank was given the same sweep; before any
work, `check_ranks_agree` compares what each rank was given (`describe_inputs`) and raises
`RankMismatchError` on every rank when they differ.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from .collect import ClassMeanCollector, FullCollector
from .data import ImageSource
from .errors import RankMismatchError
from .fills import Fill
from .regions import Regions

__all__ = [
    "RankMismatchError",
    "Shard",
    "check_ranks_agree",
    "current_shard",
    "describe_inputs",
    "gather_collector",
    "rank_path",
]


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


def _digest_tensor(hasher: hashlib._Hash, name: str, tensor: Tensor) -> None:
    """Name, dtype, shape and values of `tensor` (a non-strided one's dense values, a
    nested one's components)."""
    if tensor.is_nested:
        for index, part in enumerate(tensor.unbind()):
            _digest_tensor(hasher, f"{name}[{index}]", part)
        return
    hasher.update(f"{name} {tensor.dtype} {tuple(tensor.shape)};".encode())
    if tensor.device.type == "meta":
        return
    values = tensor.to_dense() if tensor.layout != torch.strided else tensor
    flat = values.detach().cpu().contiguous().reshape(-1)
    hasher.update(flat.view(torch.uint8).numpy().tobytes())


def _held_modules(model: object) -> Iterator[tuple[str, nn.Module]]:
    """The modules `model` is or holds: itself, or for a function, method, partial or
    callable object the modules among its closure, defaults, bound object or attributes."""
    if isinstance(model, nn.Module):
        yield "", model
        return
    held: list[object] = []
    if isinstance(model, functools.partial):
        held += [model.func, *model.args, *model.keywords.values()]
    held.append(getattr(model, "__self__", None))
    for cell in getattr(model, "__closure__", None) or ():
        try:
            held.append(cell.cell_contents)
        except ValueError:  # an empty cell
            continue
    held += list(getattr(model, "__defaults__", None) or ())
    held += list(vars(model).values()) if hasattr(model, "__dict__") else []
    for index, item in enumerate(held):
        if isinstance(item, nn.Module):
            yield f"[{index}]", item


def _model_fact(model: object) -> str:
    hasher = hashlib.sha256()
    modules = list(_held_modules(model))
    for prefix, module in modules:
        for name, parameter in module.named_parameters(prefix=prefix, remove_duplicate=False):
            _digest_tensor(hasher, f"parameter {name}", parameter)
        for name, buffer in module.named_buffers(prefix=prefix, remove_duplicate=False):
            _digest_tensor(hasher, f"buffer {name}", buffer)
    kind = type(model)
    what = f"{kind.__module__}.{kind.__qualname__}"
    if hasattr(model, "__qualname__"):  # a function: its own name says more than its type's
        what = f"{kind.__qualname__} {getattr(model, '__module__', '')}.{model.__qualname__}"
    if not modules:
        return f"{what} holding no nn.Module (compared by type only)"
    return f"{what}, parameters and buffers sha256 {hasher.hexdigest()[:16]}"


def _images_fact(images: object, source: ImageSource) -> str:
    hasher = hashlib.sha256()
    shape = "x".join(str(size) for size in source.image_shape)
    layout = " given as (N, H, W)" if source.single_channel else ""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if isinstance(images, Tensor):
        _digest_tensor(hasher, "images", images)
        return f"{int(images.shape[0])} images of {shape}{layout}, sha256 {hasher.hexdigest()[:16]}"
    first = source.first_images()
    if first is not None:
        _digest_tensor(hasher, "first images", first)
    return f"a stream of {shape} images{layout}, first images sha256 {hasher.hexdigest()[:16]}"


def _labels_fact(labels: object, source: ImageSource) -> str:
    if source.num_images is None:
        return "labels with the stream's batches"
    if labels is None:
        return "no labels"
    hasher = hashlib.sha256()
    _digest_tensor(hasher, "labels", torch.as_tensor(labels))
    return f"labels, sha256 {hasher.hexdigest()[:16]}"


def describe_inputs(
    model: object,
    images: object,
    labels: object,
    source: ImageSource,
    regions: Regions,
    fills: Sequence[Fill],
    output: str,
    reduce: str | None,
) -> dict[str, str]:
    """What decides a rank's share of a sweep, one short text per item, for
    `check_ranks_agree`: the number of images (for a tensor) with a SHA-256 of their values
    (of a stream: its first images') and of the labels, the regions (ids and masks), the fills (labels and
    values), the output rule, and the model (an ``nn.Module``'s parameters and buffers, or
    those of the modules a callable holds in its closure, defaults or attributes)."""
    hasher = hashlib.sha256()
    ids = list(regions.ids)
    hasher.update(repr(ids).encode())
    _digest_tensor(hasher, "masks", regions.masks)
    fill_hasher = hashlib.sha256()
    for fill in fills:
        fill_hasher.update(f"{fill.label!r} {fill.value!r};".encode())
        if fill.tensor is not None:
            _digest_tensor(fill_hasher, "tensor", fill.tensor)
    return {
        "images": _images_fact(images, source),
        "labels": _labels_fact(labels, source),
        "regions": f"{len(ids)} regions, ids and masks sha256 {hasher.hexdigest()[:16]}",
        "fills": f"{[f.label for f in fills]}, values sha256 {fill_hasher.hexdigest()[:16]}",
        "output": f"output={output!r}, reduce={reduce!r}",
        "model": _model_fact(model),
    }


def _all_gather_texts(text: str) -> list[str]:
    data = list(text.encode("utf-8"))
    lengths = _all_gather_ints([len(data)])
    parts = _all_gather_rows(torch.tensor(data, dtype=torch.uint8), [n for (n,) in lengths])
    return [bytes(part.tolist()).decode("utf-8") for part in parts]


def check_ranks_agree(facts: dict[str, str]) -> None:
    """Check that every rank of the process group describes the same sweep.

    A collective: every rank must call it, with the same keys. The texts are compared by
    SHA-256 (one ``all_gather`` of 32 bytes per item); only when they differ are the texts
    themselves gathered, for the message.

    Parameters
    ----------
    facts : dict of str to str
        `describe_inputs` of this rank.

    Raises
    ------
    RankMismatchError
        On every rank, when any item differs between ranks; the message names each item
        that differs and every rank's value.
    """
    names = sorted(facts)
    digests = torch.tensor(
        [list(hashlib.sha256(facts[name].encode()).digest()) for name in names], dtype=torch.uint8
    )
    world = dist.get_world_size()
    gathered = _all_gather_rows(digests, [len(names)] * world)
    differing = [
        index
        for index in range(len(names))
        if any(not torch.equal(part[index], gathered[0][index]) for part in gathered)
    ]
    if not differing:
        return
    clauses = []
    for index in differing:  # the same on every rank: each takes part in the same gathers
        values = _all_gather_texts(facts[names[index]])
        shown = "; ".join(f"rank {rank} has {value}" for rank, value in enumerate(values))
        clauses.append(f"{names[index]}: {shown}. ")
    raise RankMismatchError(
        f"sweep: the {world} ranks of this torch.distributed run were given different sweeps, "
        f"and sharding by chunk would mix them. {''.join(clauses)}Give every rank the same "
        "images (in the same order), labels, regions, fills, output and model (e.g. the same "
        "seed or the same loaded weights)."
    )
