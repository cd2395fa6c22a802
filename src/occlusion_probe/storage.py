"""Files on disk that are safe to write into shared folders and safe to read from others.

Writing (`atomic_write`, `atomic_write_npz`): the temporary file is created beside the
target exclusively (``O_CREAT | O_EXCL | O_NOFOLLOW``, a random name), so a file or link
planted at that name is never followed or overwritten; the data is flushed to disk and
renamed over the target (a reader never sees half a file), and the folder is synced so
that the rename survives a crash. On failure only the temporary file this call created is
removed.

Reading (`read_npz`): arrays are read from the zip archive member by member, without numpy's
pickle path, and a member is read only after its ``.npy`` header was checked: no objects,
native byte order, stored uncompressed (the library never compresses) and a declared size
(``ZipInfo.file_size``) equal to what its shape and dtype take. Memory therefore never
exceeds the file's own size: a small file with a compressed 1.5 GiB member, or a header
declaring a huge shape over a few bytes, is refused before anything large is allocated.
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets
import struct
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

import numpy as np

__all__ = [
    "ARCHIVE_ERRORS",
    "TEMPORARY_MARK",
    "atomic_write",
    "atomic_write_npz",
    "is_temporary_name",
    "payload_checksum",
    "read_npz",
]

# What reading a damaged archive raises: a damaged file is reported, not crashed on.
ARCHIVE_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    KeyError,
    IndexError,
    OverflowError,
    MemoryError,
    NotImplementedError,  # zipfile, for a damaged header naming an unknown compression method
    RuntimeError,  # zipfile: "File ... is encrypted, password required" for a flipped flag bit
    zipfile.BadZipFile,
    zlib.error,
    struct.error,
)

#: Temporary files are named ``.<target name>.tmp-<pid>-<16 hex digits>``.
TEMPORARY_MARK = ".tmp-"
_RANDOM_HEX = 16
_ZIP_MAGIC = b"PK\x03\x04"
_EMPTY_ZIP = b"PK\x05\x06"
_PIECE = 1 << 24  # bytes copied at a time from a member into its array


def is_temporary_name(name: str, target: str) -> bool:
    """Whether `name` is a temporary file `atomic_write` made for a file named `target`."""
    prefix = f".{target}{TEMPORARY_MARK}"
    if not name.startswith(prefix):
        return False
    pid, _, token = name[len(prefix) :].partition("-")
    return (
        pid.isdigit() and len(token) == _RANDOM_HEX and all(c in "0123456789abcdef" for c in token)
    )


def _create_exclusive(path: Path) -> tuple[Path, int]:
    """A new temporary file beside `path`, opened for writing; never follows a link."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    flags |= getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(16):
        token = secrets.token_hex(_RANDOM_HEX // 2)
        tmp = path.with_name(f".{path.name}{TEMPORARY_MARK}{os.getpid()}-{token}")
        try:
            return tmp, os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue  # someone else's file (or link) at that name: never touched
    raise FileExistsError(f"no free temporary name beside {os.fspath(path)!r}")


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> int:
    """Write a file atomically through `write(handle)`; returns the bytes written.

    Raises
    ------
    OSError
        When the folder is missing or not writable (nothing is left behind then).
    """
    tmp, descriptor = _create_exclusive(path)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
            size = handle.tell()
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)  # ours: created exclusively above
        except FileNotFoundError:
            pass
        raise
    if hasattr(os, "O_DIRECTORY"):
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    return size


def atomic_write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> int:
    """Write `arrays` to an uncompressed ``.npz`` at `path` atomically (`atomic_write`)."""

    def write(handle: IO[bytes]) -> None:
        np.savez(handle, **arrays)  # type: ignore[arg-type]

    return atomic_write(path, write)


def payload_checksum(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over every array's name, dtype, shape and bytes, in name order (hex digest)."""
    digest = hashlib.sha256()
    for key in sorted(arrays):
        array = np.ascontiguousarray(arrays[key])
        digest.update(f"{len(key)}:{key}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    name = info.filename
    if info.compress_type != zipfile.ZIP_STORED:
        raise ValueError(
            f"member {name!r} is compressed (declared {info.file_size} bytes unpacked); the "
            "library stores arrays uncompressed and reads no compressed member"
        )
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
        else:
            raise ValueError(f"member {name!r} has .npy format version {version}")
        if dtype.hasobject:
            raise ValueError(f"member {name!r} holds Python objects (dtype {dtype})")
        if not dtype.isnative:
            raise ValueError(f"member {name!r} has a non-native byte order (dtype {dtype})")
        nbytes = math.prod(shape) * dtype.itemsize
        header = member.tell()
        if info.file_size != header + nbytes:
            raise ValueError(
                f"member {name!r} declares {info.file_size} bytes, but its shape {shape} of "
                f"{dtype} takes {header + nbytes}"
            )
        buffer = bytearray(nbytes)
        done = 0
        while done < nbytes:
            piece = member.read(min(_PIECE, nbytes - done))
            if not piece:
                raise EOFError(f"member {name!r} ends after {done} of {nbytes} bytes")
            buffer[done : done + len(piece)] = piece
            done += len(piece)
    flat = np.frombuffer(buffer, dtype=dtype)
    return flat.reshape(shape, order="F" if fortran else "C")


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file written by `atomic_write_npz` (see the module).

    Raises
    ------
    OSError, ValueError, zipfile.BadZipFile, ...
        For an unreadable or refused archive (see ``ARCHIVE_ERRORS``); callers turn it into
        their own error.
    """
    with open(path, "rb") as handle:
        start = handle.read(4)
        if start not in (_ZIP_MAGIC, _EMPTY_ZIP):
            raise ValueError(f"not an .npz archive (it starts with {start!r}, not a zip header)")
        handle.seek(0)
        with zipfile.ZipFile(handle) as archive:
            arrays: dict[str, np.ndarray] = {}
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    raise ValueError(f"member {info.filename!r} is not an .npy array")
                arrays[info.filename[: -len(".npy")]] = _read_member(archive, info)
            return arrays
