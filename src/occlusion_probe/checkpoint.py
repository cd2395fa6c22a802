"""Checkpoint and resume for long sweeps.

A checkpoint is an ``.npz`` file (no pickles) written atomically after every completed chunk
(temporary file, fsync, rename). It carries fingerprints of what produced it (model weights,
regions, fills, settings, and a running hash of the images seen), a checksum of its own
arrays, and the collector's state. Resuming refuses a checkpoint whose fingerprints differ
and reports a truncated or corrupted file instead of loading it.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from .data import Chunk, ImageSource
from .errors import InputValueError
from .fills import Fill
from .regions import Regions
from .resultfile import atomic_write_npz as _atomic_write_npz

__all__ = ["Checkpoint", "CheckpointError", "Fingerprint"]

_FORMAT = "occlusion_probe.checkpoint.v1"
_PARTS = ("model", "regions", "fills", "settings")


class CheckpointError(InputValueError):
    """A checkpoint cannot be used: another run's, truncated, or corrupted."""


class _Collector(Protocol):
    def state(self) -> dict[str, np.ndarray]: ...

    def load_state(self, arrays: dict[str, np.ndarray]) -> None: ...


def _hash_tensor(digest: hashlib._Hash, tensor: torch.Tensor) -> None:
    digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    digest.update(
        tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    )


class Fingerprint:
    """Hashes of everything that determines a sweep's outputs."""

    def __init__(self, parts: dict[str, str]) -> None:
        self.parts = parts
        self._images = hashlib.sha256()

    @classmethod
    def of(
        cls,
        model: object,
        regions: Regions,
        fills: Sequence[Fill],
        output: str,
        reduce: str | None,
        source: ImageSource,
    ) -> Fingerprint:
        model_hash = hashlib.sha256()
        if isinstance(model, nn.Module):
            model_hash.update(type(model).__qualname__.encode())
            for name, tensor in model.state_dict().items():
                model_hash.update(name.encode())
                _hash_tensor(model_hash, tensor)
        else:
            # A plain callable's weights are invisible to us; its name is the best we can do.
            model_hash.update(getattr(model, "__qualname__", type(model).__qualname__).encode())
        region_hash = hashlib.sha256(repr(regions.ids).encode())
        _hash_tensor(region_hash, regions.masks)
        fill_hash = hashlib.sha256()
        for fill in fills:
            fill_hash.update(f"{fill.label}|{fill.value}".encode())
            if fill.tensor is not None:
                _hash_tensor(fill_hash, fill.tensor)
        settings = (
            f"{output}|{reduce}|{source.chunk_images}|{source.image_shape}|{source.single_channel}"
        )
        return cls(
            {
                "model": model_hash.hexdigest(),
                "regions": region_hash.hexdigest(),
                "fills": fill_hash.hexdigest(),
                "settings": hashlib.sha256(settings.encode()).hexdigest(),
            }
        )

    def add_chunk(self, chunk: Chunk) -> None:
        """Fold one chunk of images (and labels) into the running image hash."""
        _hash_tensor(self._images, chunk.images)
        if chunk.labels is not None:
            _hash_tensor(self._images, chunk.labels)

    def images_digest(self) -> str:
        return self._images.hexdigest()


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for key in sorted(arrays):
        digest.update(key.encode())
        digest.update(str(arrays[key].dtype).encode() + str(arrays[key].shape).encode())
        digest.update(np.ascontiguousarray(arrays[key]).tobytes())
    return digest.hexdigest()


class Checkpoint:
    """One checkpoint file: `resume` reads it (if present), `save` rewrites it atomically."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._done = 0
        self._images_digest = ""

    def resume(self, fingerprint: Fingerprint, collector: _Collector) -> int:
        """Load the collector's state; returns how many chunks are already done (0 if no file)."""
        if not self.path.exists():
            return 0
        try:
            # Our own file handle: np.load leaks its handle when the zip is unreadable.
            with open(self.path, "rb") as handle, np.load(handle, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as error:
            raise CheckpointError(
                f"checkpoint: {os.fspath(self.path)!r} is truncated or corrupted and was not loaded "
                f"({type(error).__name__}: {error}); delete it to start over"
            ) from error
        meta = {
            key: str(arrays.pop(key))
            for key in ("format", "checksum", "images", *_PARTS)
            if key in arrays
        }
        done = arrays.pop("done", None)
        if meta.get("format") != _FORMAT or done is None or "checksum" not in meta:
            raise CheckpointError(
                f"checkpoint: {os.fspath(self.path)!r} is not an occlusion_probe checkpoint "
                f"(expected format {_FORMAT!r}, got {meta.get('format')!r})"
            )
        if _checksum(arrays) != meta["checksum"]:
            raise CheckpointError(
                f"checkpoint: {os.fspath(self.path)!r} is corrupted (its checksum does not match "
                "its contents) and was not loaded; delete it to start over"
            )
        differing = [part for part in _PARTS if meta.get(part) != fingerprint.parts[part]]
        if differing:
            raise CheckpointError(
                f"checkpoint: {os.fspath(self.path)!r} was written by a different run "
                f"(its {', '.join(differing)} differ from this call's); refusing to mix results. "
                "Use another checkpoint path or delete the file."
            )
        collector.load_state(arrays)
        self._done = int(done)
        self._images_digest = meta.get("images", "")
        return self._done

    def check_images(self, fingerprint: Fingerprint, chunk_index: int) -> None:
        """After re-reading the chunks a resumed run skips, check they are the same images."""
        if (
            self._done
            and chunk_index == self._done - 1
            and fingerprint.images_digest() != self._images_digest
        ):
            raise CheckpointError(
                f"checkpoint: {os.fspath(self.path)!r} was written for different images (or "
                "labels) than this call's; refusing to mix results. Use another checkpoint path "
                "or delete the file."
            )

    def save(self, fingerprint: Fingerprint, done: int, collector: _Collector) -> None:
        arrays = collector.state()
        payload: dict[str, np.ndarray] = dict(arrays)
        payload["checksum"] = np.array(_checksum(arrays))
        payload["format"] = np.array(_FORMAT)
        payload["done"] = np.array(done, dtype=np.int64)
        payload["images"] = np.array(fingerprint.images_digest())
        for part in _PARTS:
            payload[part] = np.array(fingerprint.parts[part])
        _atomic_write_npz(self.path, payload)
