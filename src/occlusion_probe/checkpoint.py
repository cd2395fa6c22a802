"""Checkpoint and resume for long sweeps: a small manifest plus one file per chunk.

Layout, for ``checkpoint="run.ckpt"``:

``run.ckpt``
    The manifest, written once when the run starts: JSON with the format, the collector kind,
    the run's fingerprint (model, regions, fills, settings) and a SHA-256 of all of it; once
    more when the batch trial has ended, adding the engine and batches used (runplan.py).
``run.ckpt.chunks/chunk-00000012.npz``
    One file per completed chunk (no pickles), written atomically (temporary file, fsync,
    rename, directory fsync): the collector's state of that chunk alone, the chunk index, a
    SHA-256 of that chunk's images and labels, the run id, and a SHA-256 over all of them.
``run.ckpt.lock``
    Held with an exclusive ``flock`` while a sweep uses the checkpoint.

Each chunk is written once, so a sweep writes O(N) bytes. What is resumed is decided only by
checksummed content: a chunk counts as done when its file verifies and names this run and
this chunk; a truncated or damaged chunk file is recomputed (with a warning), a chunk of
another run or of other images is refused with `CheckpointError`.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import os
import sys
import types
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from .data import Chunk, ImageSource
from .errors import (
    CheckpointError,
    InputTypeError,
    InputValueError,
    OcclusionProbeWarning,
    describe,
)
from .fills import Fill
from .regions import Regions
from .runplan import StoredPlan
from .storage import (
    ARCHIVE_ERRORS,
    atomic_write,
    atomic_write_npz,
    is_temporary_name,
    payload_checksum,
    read_npz,
)

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "Fingerprint",
    "check_checkpoint_path",
    "chunk_digest",
]

_FORMAT = "occlusion_probe.checkpoint.v2"
_OLD_FORMAT = "occlusion_probe.checkpoint.v1"
_CHUNK_FORMAT = "occlusion_probe.checkpoint-chunk.v2"
_PARTS = ("model", "regions", "fills", "settings")
_CHUNK_META = ("chunk_format", "run", "index", "images", "checksum")
# Attributes every nn.Module has (parameter/buffer/submodule tables, hook tables, the training
# flag): parameters and buffers are hashed by name, hooks as callables, and `training` does
# not decide outputs because the sweep runs in eval mode.
_MODULE_INTERNALS = frozenset(vars(nn.Module()))
_MAX_DEPTH = 24


def _open_lock(path: Path, shown: str) -> IO[bytes]:
    """The lock file, opened for appending without following a link (dangling or not)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
    try:
        descriptor = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as error:
        what = (
            "a symbolic link"
            if path.is_symlink()
            else "a folder"
            if path.is_dir()
            else f"not usable ({error.strerror or error})"
        )
        raise CheckpointError(
            f"checkpoint: the lock file {os.fspath(path)!r} of {shown!r} is {what}; the "
            "library locks only a plain file it may create (remove it)"
        ) from error
    return os.fdopen(descriptor, "a+b")


class _Collector(Protocol):
    def last_chunk_state(self) -> dict[str, np.ndarray]: ...

    def add_chunk_state(
        self, arrays: dict[str, np.ndarray], chunk_index: int, images: int, labels: Tensor | None
    ) -> None: ...


class _Hasher:
    """A SHA-256 of a Python value that is the same in every process for equal values.

    Reads tensors' bytes (a sparse tensor's indices and values), numpy arrays' bytes (an
    object array's elements as values), containers element by element, functions by code,
    constants, defaults and closure contents, modules by parameters, buffers and plain
    attributes, and other objects by type, ``vars()`` and ``__slots__``. Objects with neither
    (C extension types) are identified by their type only; ``repr`` is never used for them
    (it may hold an address).
    """

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self._seen: set[int] = set()

    def text(self, text: str) -> None:
        data = text.encode("utf-8", "surrogatepass")
        self.digest.update(f"{len(data)}:".encode() + data)

    def tensor(self, tensor: Tensor) -> None:
        if tensor.is_nested:  # its shape holds symbols that differ between equal tensors
            parts = tensor.detach().unbind()
            self.text(f"nested tensor {tensor.dtype} {tensor.layout} [{len(parts)}]")
            for part in parts:
                self.tensor(part)
            return
        self.text(f"tensor {tensor.dtype} {tuple(tensor.shape)} {tensor.layout}")
        if tensor.device.type == "meta":  # no values to read
            self.text(repr(tensor.device))
            return
        if tensor.layout != torch.strided:
            for part in _sparse_parts(tensor):
                self.tensor(part)
            return
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        self.digest.update(flat.view(torch.uint8).numpy().tobytes())

    def value(self, value: object, depth: int = 0) -> None:
        if depth > _MAX_DEPTH:
            self.text("<too deep>")
            return
        if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
            self.text(f"{type(value).__name__}:{value!r}")
            return
        if isinstance(value, (torch.dtype, torch.device, torch.Size, enum.Enum, range, slice)):
            self.text(f"{type(value).__name__}:{value!r}")
            return
        if isinstance(value, Tensor):
            self.tensor(value)
            return
        if isinstance(value, np.ndarray):
            self.array(value, depth)
            return
        if isinstance(value, np.generic):
            self.text(f"{type(value).__name__}:{value!r}")
            return
        if id(value) in self._seen:
            self.text("<seen>")
            return
        self._seen.add(id(value))
        self._object(value, depth + 1)

    def array(self, array: np.ndarray, depth: int) -> None:
        self.text(f"ndarray {array.dtype.str} {array.shape}")
        if array.dtype.hasobject:
            # The bytes of an object array are addresses: read the objects themselves.
            self.value(array.tolist(), depth + 1)
            return
        self.digest.update(np.ascontiguousarray(array).tobytes())

    def _object(self, value: object, depth: int) -> None:
        if isinstance(value, nn.Module):
            self.module(value, depth)
        elif isinstance(value, (list, tuple)):
            self.text(f"{type(value).__name__}[{len(value)}]")
            for item in value:
                self.value(item, depth)
        elif isinstance(value, dict):
            self.text(f"{type(value).__name__}[{len(value)}]")
            for key, item in value.items():
                self.value(key, depth)
                self.value(item, depth)
        elif isinstance(value, (set, frozenset)):
            parts = []
            for item in value:
                sub = _Hasher()
                sub.value(item, depth)
                parts.append(sub.digest.hexdigest())
            self.text(f"set {sorted(parts)}")
        elif isinstance(value, functools.partial):
            self.text("partial")
            self.value(value.func, depth)
            self.value(value.args, depth)
            self.value(value.keywords, depth)
        elif isinstance(value, types.MethodType):
            self.text("method")
            self.value(value.__func__, depth)
            self.value(value.__self__, depth)
        elif isinstance(value, types.FunctionType):
            self.function(value, depth)
        elif isinstance(value, types.CodeType):
            self.code(value, depth)
        elif isinstance(value, (types.BuiltinFunctionType, types.ModuleType, type)):
            self.text(f"{type(value).__name__} {_qualified(value)}")
        elif hasattr(value, "__dict__"):
            kind = type(value)
            self.text(f"object {_qualified(kind)}")
            call = getattr(kind, "__call__", None)  # noqa: B004 -- the class's own method
            if isinstance(call, types.FunctionType):
                self.function(call, depth)
            self.value(dict(vars(value)), depth)
            self.slots(value, depth)
        elif _slot_names(type(value)):
            self.text(f"object {_qualified(type(value))}")
            self.slots(value, depth)
        else:
            self.text(f"opaque {_qualified(type(value))}")

    def slots(self, value: object, depth: int) -> None:
        for name in _slot_names(type(value)):
            self.text(name)
            self.value(getattr(value, name, "<unset slot>"), depth)

    def function(self, function: types.FunctionType, depth: int) -> None:
        self.text(f"function {_qualified(function)}")
        self.code(function.__code__, depth)
        self.value(function.__defaults__, depth)
        self.value(function.__kwdefaults__, depth)
        for cell in function.__closure__ or ():
            try:
                contents = cell.cell_contents
            except ValueError:  # an empty cell: a name not yet bound
                self.text("<empty cell>")
                continue
            self.value(contents, depth)

    def code(self, code: types.CodeType, depth: int) -> None:
        self.text(f"code {code.co_name} {code.co_names} {code.co_argcount}")
        self.digest.update(code.co_code)
        for constant in code.co_consts:
            if isinstance(constant, types.CodeType):
                self.code(constant, depth + 1)
            else:
                self.value(constant, depth + 1)

    def module(self, module: nn.Module, depth: int) -> None:
        for name, sub in module.named_modules(remove_duplicate=False):
            kind = type(sub)
            self.text(f"module {name} {_qualified(kind)}")
            forward = getattr(kind, "forward", None)
            if isinstance(forward, types.FunctionType):
                self.function(forward, depth)
            for key, item in vars(sub).items():
                if key not in _MODULE_INTERNALS:
                    self.text(key)
                    self.value(item, depth)
            for table in ("_forward_hooks", "_forward_pre_hooks"):
                hooks = getattr(sub, table, {})
                self.text(f"{table}[{len(hooks)}]")
                for hook in hooks.values():
                    self.value(hook, depth)
        for name, parameter in module.named_parameters(remove_duplicate=False):
            self.text(f"parameter {name}")
            self.tensor(parameter)
        for name, buffer in module.named_buffers(remove_duplicate=False):
            self.text(f"buffer {name}")
            self.tensor(buffer)


def _sparse_parts(tensor: Tensor) -> tuple[Tensor, ...]:
    """The strided tensors that hold a non-strided tensor's values: a sparse COO tensor's
    coalesced indices and values, a compressed one's index vectors and values, another
    layout's dense copy."""
    layout = tensor.layout
    tensor = tensor.detach()
    if layout == torch.sparse_coo:
        tensor = tensor.coalesce()
        return tensor.indices(), tensor.values()
    if layout in (torch.sparse_csr, torch.sparse_bsr):
        return tensor.crow_indices(), tensor.col_indices(), tensor.values()
    if layout in (torch.sparse_csc, torch.sparse_bsc):
        return tensor.ccol_indices(), tensor.row_indices(), tensor.values()
    try:
        return (tensor.to_dense(),)
    except (RuntimeError, NotImplementedError) as error:
        raise CheckpointError(
            f"checkpoint: cannot fingerprint a tensor of layout {layout} (its values cannot be "
            f"read: {error}); convert it to a strided tensor or run without checkpoint="
        ) from error


def _slot_names(kind: type) -> tuple[str, ...]:
    """The ``__slots__`` attributes of `kind` and its bases (objects without ``__dict__``)."""
    names: list[str] = []
    for klass in kind.__mro__:
        slots = vars(klass).get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name.startswith("__") and not name.endswith("__"):
                name = f"_{klass.__name__.lstrip('_')}{name}"  # a private slot's real name
            if name not in ("__dict__", "__weakref__") and name not in names:
                names.append(name)
    return tuple(names)


def _qualified(thing: object) -> str:
    module = getattr(thing, "__module__", None) or ""
    name = getattr(thing, "__qualname__", None) or getattr(thing, "__name__", "?")
    return f"{module}.{name}"


def _hash(*values: object) -> str:
    hasher = _Hasher()
    for value in values:
        hasher.value(value)
    return hasher.digest.hexdigest()


class Fingerprint:
    """Hashes of what decides a sweep's outputs, in four parts named in error messages.

    ``model``: for an ``nn.Module``, every parameter and buffer (by name, dtype, shape and
    bytes), and for every submodule its class, its ``forward``'s code and its plain
    attributes (e.g. a ``temperature``, ``stride``), and its forward hooks; for another
    callable, its code, constants, defaults and closure contents, or for a callable object
    its class, ``__call__`` and attributes. ``regions``: ids and masks. ``fills``: values,
    tensors, the code, constants, defaults and closures of fill callables, and the class and
    parameters of region-aware fills. ``settings``:
    `output` (a callable's code as for fills), `reduce`, chunk size, image shape.

    Not covered, because nothing in the model object shows it: global variables and module
    state that ``forward`` reads, code of called functions that are not attributes or closure
    contents, C extensions and objects with neither ``__dict__`` nor ``__slots__``
    (identified by type only), random state, and the library versions (torch, numpy).
    Sparse tensors count by their indices and values (COO ones coalesced), numpy object
    arrays by their elements.
    """

    def __init__(self, parts: dict[str, str]) -> None:
        self.parts = parts

    @classmethod
    def of(
        cls,
        model: object,
        regions: Regions,
        fills: Sequence[Fill],
        output: str | Callable[[Tensor], Tensor],
        reduce: str | None,
        source: ImageSource,
    ) -> Fingerprint:
        """The fingerprint of one sweep call (see the class docstring for what is read)."""
        # A region-aware fill is named by its class and parameters (its caches are not read).
        fill_parts = [
            (f.label, f.value, f.tensor, f.function)
            if f.region is None
            else (f.label, f.region.fingerprint)
            for f in fills
        ]
        settings = (output, reduce, source.chunk_images, source.image_shape, source.single_channel)
        return cls(
            {
                "model": _hash(model),
                "regions": _hash(regions.ids, regions.masks)
                if regions.weights is None
                else _hash(regions.ids, regions.masks, regions.weights),
                "fills": _hash(fill_parts),
                "settings": _hash(settings),
            }
        )

    @property
    def run_id(self) -> str:
        """One SHA-256 of all parts: what a chunk file names as the run it belongs to."""
        return hashlib.sha256(json.dumps(self.parts, sort_keys=True).encode()).hexdigest()


def chunk_digest(chunk: Chunk) -> str:
    """SHA-256 of one chunk's images and labels (dtype, shape and bytes)."""
    hasher = _Hasher()
    hasher.tensor(chunk.images)
    hasher.value(chunk.labels)
    return hasher.digest.hexdigest()


def _manifest_checksum(manifest: dict[str, Any]) -> str:
    body = {key: value for key, value in manifest.items() if key != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _lock(handle: IO[bytes]) -> bool:
    """Take an exclusive, non-blocking lock on an open file; False when another holds it."""
    if sys.platform == "win32":
        import msvcrt

        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class Checkpoint:
    """A checkpoint of one sweep (see the module docstring for the layout).

    Opening checks the place (the folder exists and is writable, the path is not a folder)
    and takes the lock, before any work. `resume` reads or writes the manifest; the chunk loop
    calls `restore` for every chunk (True: its stored outputs were added to the collector) and
    `save` after computing one; `close` releases the lock. `stored_plan` and `record_plan`
    read and write the engine and batches the run used.

    Parameters
    ----------
    path : str or os.PathLike
        The manifest's path; chunk files go to ``<path>.chunks/``, the lock to ``<path>.lock``.

    Raises
    ------
    CheckpointError
        When the path is a folder, its folder is missing or not writable, or another process
        holds the lock.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.chunks = self.path.with_name(f"{self.path.name}.chunks")
        self._fingerprint: Fingerprint | None = None
        self._stored: dict[int, Path] = {}
        self._lock_file: IO[bytes] | None = None
        shown = os.fspath(self.path)
        if self.path.is_dir():
            raise CheckpointError(
                f"checkpoint: {shown!r} is a directory; expected the path of a checkpoint file "
                f"inside one, e.g. {os.fspath(self.path / 'run.ckpt')!r}"
            )
        folder = self.path.parent
        if not folder.is_dir():
            raise CheckpointError(
                f"checkpoint: the folder {os.fspath(folder)!r} of {shown!r} does not exist; "
                "create it first"
            )
        if not os.access(folder, os.W_OK | os.X_OK):
            raise CheckpointError(
                f"checkpoint: the folder {os.fspath(folder)!r} of {shown!r} is not writable"
            )
        if self.chunks.is_symlink() or (self.chunks.exists() and not self.chunks.is_dir()):
            what = "a symbolic link" if self.chunks.is_symlink() else "not a folder"
            raise CheckpointError(
                f"checkpoint: the chunk folder {os.fspath(self.chunks)!r} of {shown!r} is "
                f"{what}; the library writes only into a real folder it made (remove it)"
            )
        lock_path = self.path.with_name(f"{self.path.name}.lock")
        handle = _open_lock(lock_path, shown)  # held open until close()
        if not _lock(handle):
            handle.close()
            raise CheckpointError(
                f"checkpoint: {shown!r} is in use by another sweep, in this process or another "
                f"(it holds {os.fspath(lock_path)!r}); wait for it to finish or use another "
                "checkpoint path"
            )
        self._lock_file = handle

    def close(self) -> None:
        """Release the lock (the files stay: a later run resumes from them)."""
        if self._lock_file is not None:
            self._lock_file.close()  # closing the descriptor releases the flock
            self._lock_file = None

    def resume(self, fingerprint: Fingerprint, collector: object) -> int:
        """Check the manifest against `fingerprint` (or write it); returns the stored chunks.

        Parameters
        ----------
        fingerprint : Fingerprint
            This call's fingerprint.
        collector : FullCollector or ClassMeanCollector
            The collector of this call; its kind is part of the manifest.

        Returns
        -------
        int
            How many chunk files are stored (each is verified when its chunk comes).

        Raises
        ------
        CheckpointError
            When the manifest is truncated, corrupted, of another format, or of another run
            (naming the parts that differ). The lock is released then.
        """
        try:
            return self._resume(fingerprint, type(collector).__name__)
        except BaseException:
            self.close()
            raise

    def _resume(self, fingerprint: Fingerprint, kind: str) -> int:
        shown = os.fspath(self.path)
        manifest = {
            "format": _FORMAT,
            "collector": kind,
            "fingerprint": fingerprint.parts,
            "chunks": self.chunks.name,
        }
        self._fingerprint = fingerprint
        if self.chunks.is_dir():
            for stale in self.chunks.iterdir():
                # A chunk write a crash interrupted (we hold the lock); only files named as
                # the library names its temporary files, never a link or a user's own file.
                target = stale.name.split(".tmp-")[0][1:]
                if (
                    target.startswith("chunk-")
                    and is_temporary_name(stale.name, target)
                    and stale.is_file()
                    and not stale.is_symlink()
                ):
                    stale.unlink()
        if not self.path.exists():
            if self.chunks.is_dir() and any(self.chunks.glob("chunk-*.npz")):
                raise CheckpointError(
                    f"checkpoint: {os.fspath(self.chunks)!r} holds chunk files but the manifest "
                    f"{shown!r} is missing; delete the folder to start over"
                )
            self.chunks.mkdir(exist_ok=True)
            manifest["checksum"] = _manifest_checksum(manifest)
            text = json.dumps(manifest, sort_keys=True, indent=1).encode()
            atomic_write(self.path, lambda handle: handle.write(text))
            return 0
        stored = self._read_manifest()
        differing = [
            part
            for part in _PARTS
            if stored["fingerprint"].get(part) != fingerprint.parts[part]
            or (part == "settings" and stored["collector"] != kind)
        ]
        if differing:
            raise CheckpointError(
                f"checkpoint: {shown!r} was written by a different run "
                f"(its {', '.join(differing)} differ from this call's); refusing to mix results. "
                "Use another checkpoint path or delete the file and its .chunks folder."
            )
        self.chunks.mkdir(exist_ok=True)
        for file in self.chunks.glob("chunk-*.npz"):
            try:
                self._stored[int(file.name[len("chunk-") : -len(".npz")])] = file
            except ValueError:
                continue  # not one of ours
        return len(self._stored)

    def _read_manifest(self) -> dict[str, Any]:
        shown = os.fspath(self.path)
        try:
            data = self.path.read_bytes()
        except OSError as error:
            raise CheckpointError(f"checkpoint: {shown!r} cannot be read ({error})") from error
        if data.startswith(b"PK"):
            try:
                old = read_npz(self.path)
                old_format = str(old.get("format", ""))
            except ARCHIVE_ERRORS:  # any unreadable zip is "not a checkpoint"
                old_format = ""
            if old_format == _OLD_FORMAT:
                raise CheckpointError(
                    f"checkpoint: {shown!r} has format {_OLD_FORMAT!r} (one file rewritten per "
                    f"chunk); this version reads {_FORMAT!r} only. Delete it to start over."
                )
            raise CheckpointError(
                f"checkpoint: {shown!r} is not an occlusion_probe checkpoint "
                f"(expected format {_FORMAT!r}, got a zip archive)"
            )
        try:
            manifest = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
            raise CheckpointError(
                f"checkpoint: {shown!r} is truncated or corrupted and was not loaded "
                f"({type(error).__name__}: {error}); delete it and its .chunks folder to start over"
            ) from error
        if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
            got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
            raise CheckpointError(
                f"checkpoint: {shown!r} is not an occlusion_probe checkpoint "
                f"(expected format {_FORMAT!r}, got {got!r})"
            )
        if (
            manifest.get("checksum") != _manifest_checksum(manifest)
            or not isinstance(manifest.get("fingerprint"), dict)
            or manifest.get("chunks") != self.chunks.name
        ):
            raise CheckpointError(
                f"checkpoint: {shown!r} is corrupted (its checksum does not match its contents) "
                "and was not loaded; delete it and its .chunks folder to start over"
            )
        return manifest

    def _chunk_path(self, index: int) -> Path:
        return self.chunks / f"chunk-{index:08d}.npz"

    def restore(self, chunk: Chunk, collector: _Collector) -> bool:
        """Add the stored outputs of `chunk` to `collector`, if a valid chunk file has them.

        Returns
        -------
        bool
            True when the chunk was restored; False when it must be computed (no file, or a
            damaged one, which is then removed with an `OcclusionProbeWarning`).

        Raises
        ------
        CheckpointError
            When the chunk file belongs to another run, or holds other images or labels.
        """
        path = self._stored.pop(chunk.index, None)
        if path is None or self._fingerprint is None:
            return False
        shown = os.fspath(path)
        try:
            arrays = read_npz(path)
        except ARCHIVE_ERRORS as error:  # an unreadable chunk file is recomputed
            return self._damaged(path, f"unreadable ({type(error).__name__}: {error})")
        stored = arrays.pop("checksum", None)
        if stored is None or payload_checksum(arrays) != str(stored):
            return self._damaged(path, "its checksum does not match its contents")
        meta = {key: arrays.pop(key, None) for key in _CHUNK_META if key != "checksum"}
        if str(meta["chunk_format"]) != _CHUNK_FORMAT or meta["index"] is None:
            return self._damaged(path, f"not a chunk file of format {_CHUNK_FORMAT!r}")
        if str(meta["run"]) != self._fingerprint.run_id:
            raise CheckpointError(
                f"checkpoint: {shown!r} was written by a different run than {os.fspath(self.path)!r}"
                "; refusing to mix results. Delete the file and its .chunks folder to start over."
            )
        if int(meta["index"]) != chunk.index:
            return self._damaged(path, f"it holds chunk {int(meta['index'])}, not {chunk.index}")
        if str(meta["images"]) != chunk_digest(chunk):
            raise CheckpointError(
                f"checkpoint: {os.fspath(self.path)!r} was written for different images (or "
                f"labels) than this call's (chunk {chunk.index} differs); refusing to mix "
                "results. Use another checkpoint path or delete the file and its .chunks folder."
            )
        try:
            collector.add_chunk_state(arrays, chunk.index, int(chunk.images.shape[0]), chunk.labels)
        except InputValueError as error:
            raise CheckpointError(
                f"checkpoint: {shown!r} does not fit its chunk: {error}"
            ) from error
        return True

    def _damaged(self, path: Path, why: str) -> bool:
        warnings.warn(
            f"checkpoint: chunk file {os.fspath(path)!r} is damaged ({why}); recomputing it",
            OcclusionProbeWarning,
            stacklevel=3,
        )
        path.unlink()
        return False

    def save(self, chunk: Chunk, collector: _Collector) -> int:
        """Write the collector's state of the chunk just added as that chunk's file.

        Returns
        -------
        int
            The bytes written.
        """
        if self._fingerprint is None:
            raise CheckpointError("checkpoint: save() before resume()")  # a library bug
        arrays = dict(collector.last_chunk_state())
        arrays["chunk_format"] = np.array(_CHUNK_FORMAT)
        arrays["run"] = np.array(self._fingerprint.run_id)
        arrays["index"] = np.array(chunk.index, dtype=np.int64)
        arrays["images"] = np.array(chunk_digest(chunk))
        arrays["checksum"] = np.array(payload_checksum(arrays))
        return atomic_write_npz(self._chunk_path(chunk.index), arrays)

    def stored_plan(self) -> StoredPlan | None:
        """The engine and batches an earlier run of this checkpoint recorded, or None.

        Raises
        ------
        CheckpointError
            When the manifest changed since `resume` or its plan is not readable.
        """
        data = self._read_manifest().get("plan")
        if data is None:
            return None
        try:
            return StoredPlan.from_json(data)
        except ValueError as error:
            raise CheckpointError(
                f"checkpoint: {os.fspath(self.path)!r} holds an unreadable plan ({error}); "
                "delete it and its .chunks folder to start over"
            ) from error

    def record_plan(self, plan: StoredPlan) -> None:
        """Add `plan` to the manifest (rewritten atomically, its checksum with it), so that a
        resumed run computes its chunks with the engine and batches of the stored ones."""
        manifest = self._read_manifest()
        manifest["plan"] = plan.to_json()
        manifest["checksum"] = _manifest_checksum(manifest)
        text = json.dumps(manifest, sort_keys=True, indent=1).encode("utf-8")
        try:
            atomic_write(self.path, lambda handle: handle.write(text))
        except OSError as error:
            raise CheckpointError(
                f"checkpoint: cannot record the run's plan in {os.fspath(self.path)!r} ({error})"
            ) from error


# Characters the library adds to a checkpoint's file name (".<name>.tmp-<pid>", "<name>.chunks").
_NAME_SUFFIX_ROOM = 32


def check_checkpoint_path(value: object) -> Path | None:
    """The `checkpoint` argument as a path, checked before any work; None stays None.

    Raises
    ------
    InputTypeError
        When `value` is neither None, a str nor an ``os.PathLike`` of str (bytes, ints and
        bools are refused).
    CheckpointError
        (An `InputValueError`.) When the path is empty, holds a NUL character, names no file (``"/"``, a path ending
        in a separator) or has a file name too long for the folder's file system once the
        library's suffixes are added.

    Examples
    --------
    >>> check_checkpoint_path("run.ckpt").name
    'run.ckpt'
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, os.PathLike)):
        raise InputTypeError(
            f"checkpoint: expected None or a file path (str or os.PathLike), got {describe(value)}"
        )
    text = os.fspath(value)
    if not isinstance(text, str):
        raise InputTypeError(f"checkpoint: expected a str path, got bytes {text!r}")
    if text == "":
        raise CheckpointError("checkpoint: expected a file path, got an empty string")
    if "\x00" in text:
        raise CheckpointError(f"checkpoint: the path holds a NUL character: {text!r}")
    path = Path(text)
    if text.endswith(("/", os.sep)) or path.name in ("", ".", ".."):
        raise CheckpointError(
            f"checkpoint: expected the path of a file, got {text!r}, which names a folder; "
            "e.g. 'runs/sweep.ckpt'"
        )
    folder = path.parent if str(path.parent) else Path(".")
    try:
        longest = os.pathconf(folder, "PC_NAME_MAX") if folder.is_dir() else 255
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows) or no such name
        longest = 255
    size = len(path.name.encode("utf-8", "surrogateescape"))
    if size + _NAME_SUFFIX_ROOM > longest:
        raise CheckpointError(
            f"checkpoint: the file name is {size} bytes long; at most "
            f"{longest - _NAME_SUFFIX_ROOM} fit the file system's {longest} once the library "
            "adds its suffixes ('.chunks', '.lock', temporary names)"
        )
    return path
