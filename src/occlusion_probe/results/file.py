"""The on-disk format of `SweepResult` and `ClassMeanResult`: checksummed ``.npz`` files.

A result file is an ``.npz`` archive (no pickles) holding the result's arrays, its metadata
as small string / integer arrays, ``format_version`` (4), ``kind`` (``"SweepResult"`` or
``"ClassMeanResult"``) and ``checksum``: the SHA-256 over the name, dtype, shape and bytes of
every other array (`payload_checksum`). Loading recomputes the checksum, then validates every
field (dtype, shape, range, and agreement between fields) before a result is built, and
raises `ResultFileError` naming the file and the field; no other exception escapes.

Regions of any spatial rank are stored by their geometry when they are sliding windows
(``region_window`` = the spatial size, then the window size, one int per axis each;
``region_starts_0``, ``region_starts_1``, ...: the window starts along each axis, so a
2,809-window 224 x 224 result carries no 141 MB of masks), else as bit-packed masks
(``region_masks_packed``, 8 pixels per byte, with ``region_mask_shape`` = (R, *spatial)).
Format 3 (2D only) named the starts ``region_tops`` and ``region_lefts`` and is read as
before; format 2 stored the bool masks (``region_masks``) and is read as before.

Format 1 (written before checksums existed) is still read, with every field validated and an
`OcclusionProbeWarning` that the file carries no checksum; a file claiming format 1 that
holds a field format 1 never had (a newer file whose version was changed) is refused.

Files are written and read through `occlusion_probe.storage`: exclusive temporary files
renamed over the target, and archive members checked before they are read.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import (
    InputTypeError,
    InputValueError,
    OcclusionProbeWarning,
    ResultFileError,
    describe,
)
from ..regions import Regions
from ..storage import ARCHIVE_ERRORS, atomic_write_npz, payload_checksum, read_npz

__all__ = ["FORMAT_VERSION", "check_path", "read_result", "write_result"]

FORMAT_VERSION = 4
_LEGACY_VERSION = 1
_VERSIONS = (1, 2, 3, 4)
# Format 3 named the window starts of its (2D) windows by row and column.
_FORMAT_3_STARTS = ("region_tops", "region_lefts")
# Masks a window file may expand to: a few integers describe R x H x W bools, so a hostile
# file could ask for terabytes. Larger masks are written packed (8 pixels per byte) instead.
_MAX_WINDOW_MASK_BYTES = 1 << 28
_KINDS = ("ClassMeanResult", "SweepResult")
# Every field a format-1 file had: a file claiming format 1 with any other field (a checksum,
# a kind) is a newer file rewritten to skip its checksum, and is refused.
_LEGACY_FIELDS = frozenset(
    (
        "format_version",
        "baseline",
        "occluded",
        "labels",
        "region_ids",
        "region_masks",
        "fill_labels",
        "class_names",
        "image_shape",
        "output",
        "engine",
        "engine_note",
    )
)
_ENGINES = ("dense", "incremental")
_BUILTIN_OUTPUTS = ("softmax", "logits")


class _Fields:
    """Typed access to the arrays of one result file; every failure names file and field."""

    def __init__(self, path: Path, arrays: dict[str, np.ndarray]) -> None:
        self.path = path
        self.arrays = arrays
        # The regions' masks, once decoded from whichever form the file stores.
        self.decoded_masks: np.ndarray | None = None

    def error(self, field: str, expected: str, got: str) -> ResultFileError:
        return ResultFileError(
            f"result file {os.fspath(self.path)!r}: field {field!r}: expected {expected}, got {got}"
        )

    def has(self, field: str) -> bool:
        return field in self.arrays

    def array(self, field: str) -> np.ndarray:
        if field not in self.arrays:
            raise self.error(field, "the field to be present", "no such field")
        return self.arrays[field]

    def floats(self, field: str, shape: tuple[int | None, ...]) -> np.ndarray:
        array = self.array(field)
        if array.dtype.kind != "f" or array.dtype.itemsize not in (2, 4, 8):
            raise self.error(field, "a float array", f"dtype {array.dtype}")
        self._shape(field, array, shape)
        if not np.isfinite(array).all():
            raise self.error(field, "finite values", "NaN or inf")
        return array

    def integers(self, field: str, shape: tuple[int | None, ...], low: int = 0) -> np.ndarray:
        array = self.array(field)
        if array.dtype != np.int64:
            raise self.error(field, "an int64 array", f"dtype {array.dtype}")
        self._shape(field, array, shape)
        if array.size and int(array.min()) < low:
            raise self.error(field, f"values >= {low}", f"minimum {int(array.min())}")
        return array

    def strings(self, field: str, length: int | None = None) -> tuple[str, ...]:
        array = self.array(field)
        if array.dtype.kind != "U" or array.ndim != 1:
            raise self.error(
                field, "a 1-d array of str", f"dtype {array.dtype}, shape {array.shape}"
            )
        if length is not None and array.shape[0] != length:
            raise self.error(field, f"{length} entries", f"{array.shape[0]}")
        return tuple(str(s) for s in array)

    def string(self, field: str) -> str:
        array = self.array(field)
        if array.dtype.kind != "U" or array.ndim != 0:
            raise self.error(field, "a str scalar", f"dtype {array.dtype}, shape {array.shape}")
        return str(array)

    def integer(self, field: str) -> int:
        array = self.array(field)
        if array.dtype.kind not in "iu" or array.ndim != 0:
            raise self.error(
                field, "an integer scalar", f"dtype {array.dtype}, shape {array.shape}"
            )
        return int(array)

    def _shape(self, field: str, array: np.ndarray, shape: tuple[int | None, ...]) -> None:
        ok = array.ndim == len(shape) and all(
            want is None or want == got for want, got in zip(shape, array.shape, strict=True)
        )
        if not ok:
            wanted = tuple("?" if s is None else s for s in shape)
            raise self.error(field, f"shape {wanted}".replace("'", ""), f"shape {array.shape}")


def check_path(path: object, method: str) -> Path:
    """`path` as a Path, or `InputTypeError` naming the argument of `method`."""
    if isinstance(path, (str, os.PathLike)) and not isinstance(path, bytes):
        text = os.fspath(path)
        if isinstance(text, str) and text and "\x00" not in text:
            return Path(text)
    raise InputTypeError(
        f"path: {method} expected a non-empty str or os.PathLike naming the file, got "
        f"{describe(path)}"
    )


def _read_checked(path: str | os.PathLike[str], kind: str) -> tuple[_Fields, int]:
    """Open a result file, check its version, kind and checksum; returns fields and version."""
    path = check_path(path, f"{kind}.load")
    if path.is_dir():
        raise ResultFileError(
            f"result file {os.fspath(path)!r}: is a directory; expected a file written by {kind}.save"
        )
    if not path.exists():
        raise ResultFileError(f"result file {os.fspath(path)!r}: no such file")
    try:
        arrays = read_npz(path)
    except OSError as error:
        raise ResultFileError(
            f"result file {os.fspath(path)!r}: cannot be read ({error.strerror or error})"
        ) from error
    except ARCHIVE_ERRORS as error:
        raise ResultFileError(
            f"result file {os.fspath(path)!r}: is truncated, corrupted or not an .npz archive "
            f"and was not loaded ({type(error).__name__}: {error})"
        ) from error
    fields = _Fields(path, arrays)
    if not fields.has("format_version"):
        raise ResultFileError(
            f"result file {os.fspath(path)!r}: is not a {kind} file (it has no 'format_version' "
            f"field; its fields are {sorted(arrays)[:8]})"
        )
    version = fields.integer("format_version")
    if version == _LEGACY_VERSION:
        if kind != "SweepResult":
            raise fields.error("format_version", f"{FORMAT_VERSION} for a {kind}", "1")
        newer = sorted(set(arrays) - _LEGACY_FIELDS)
        if newer:
            raise ResultFileError(
                f"result file {os.fspath(path)!r}: claims format version 1 but holds fields "
                f"format 1 never had ({', '.join(repr(f) for f in newer[:5])}): a newer file "
                "whose version was changed, so its checksum would go unchecked; not loaded"
            )
        warnings.warn(
            f"result file {os.fspath(path)!r}: format version 1 has no checksum; its fields "
            f"were validated but damage to its numbers cannot be detected. Save it again to "
            f"write format version {FORMAT_VERSION}.",
            OcclusionProbeWarning,
            stacklevel=4,
        )
        return fields, version
    if version not in _VERSIONS:
        raise fields.error(
            "format_version",
            f"{FORMAT_VERSION} (or 3, 2, 1) -- this file may come from a newer occlusion_probe",
            str(version),
        )
    stored = fields.string("checksum")
    payload = {key: value for key, value in arrays.items() if key != "checksum"}
    if payload_checksum(payload) != stored:
        raise ResultFileError(
            f"result file {os.fspath(path)!r}: is corrupted (its SHA-256 checksum does not match "
            "its contents) and was not loaded"
        )
    stored_kind = fields.string("kind")
    if stored_kind != kind:
        raise fields.error("kind", repr(kind), repr(stored_kind))
    return fields, version


def _write(
    path: str | os.PathLike[str],
    kind: str,
    arrays: dict[str, np.ndarray],
    masks: np.ndarray | None = None,
) -> Path:
    path = check_path(path, f"{kind}.save")
    if path.is_dir():
        raise ResultFileError(
            f"result file {os.fspath(path)!r}: is a directory; expected the path of a file"
        )
    payload = dict(arrays)
    payload["format_version"] = np.array(FORMAT_VERSION, dtype=np.int64)
    payload["kind"] = np.array(kind, dtype=np.str_)
    payload["checksum"] = np.array(payload_checksum(payload), dtype=np.str_)
    # Refuse to write what `read` would refuse: a saved file always loads again.
    fields = _Fields(path, payload)
    if masks is not None and masks.dtype == np.bool_ and 2 <= masks.ndim <= 4:
        fields.decoded_masks = masks  # what the stored form encodes, without decoding it
    _validate(fields, kind, FORMAT_VERSION, writing=True)
    try:
        atomic_write_npz(path, payload)
    except OSError as error:  # its message would name the temporary file, not the user's
        reason = error.strerror or type(error).__name__
        raise ResultFileError(
            f"result file {os.fspath(path)!r}: cannot be written ({reason}); check that its "
            "folder exists and is writable"
        ) from error
    return path


def _metadata_arrays(
    regions: Regions,
    fill_labels: tuple[str, ...],
    class_names: tuple[str, ...] | None,
    image_shape: tuple[int, ...],
    output: str,
    engine: str,
    engine_note: str,
) -> dict[str, np.ndarray]:
    arrays = {
        "region_ids": np.array(regions.ids, dtype=np.int64),
        **_region_arrays(regions),
        **(
            {}
            if regions.weights is None
            else {"region_weights": regions.weights.cpu().float().numpy()}
        ),
        "fill_labels": np.array(fill_labels, dtype=np.str_).reshape(-1),
        "image_shape": np.array(image_shape, dtype=np.int64).reshape(-1),
        "output": np.array(output, dtype=np.str_),
        "output_kind": np.array(
            output if output in _BUILTIN_OUTPUTS else "callable", dtype=np.str_
        ),
        "engine": np.array(engine, dtype=np.str_),
        "engine_note": np.array(engine_note, dtype=np.str_),
    }
    if class_names is not None:
        arrays["class_names"] = np.array(class_names, dtype=np.str_).reshape(-1)
    return arrays


def _window_masks(
    spatial: tuple[int, ...], window: tuple[int, ...], starts: list[list[int]]
) -> np.ndarray:
    """(R, *spatial) bool masks of the windows at every combination of starts, row-major
    (the last axis fastest), as sliding_windows makes them."""
    masks = np.ones((1,) * (len(spatial) + 1), dtype=np.bool_)
    for axis, (size, length, axis_starts) in enumerate(zip(spatial, window, starts, strict=True)):
        inside = np.zeros((len(axis_starts), size), dtype=np.bool_)
        for i, start in enumerate(axis_starts):
            inside[i, int(start) : int(start) + length] = True
        # every earlier window times every position along this axis
        earlier = masks.reshape(masks.shape[0], 1, *masks.shape[1 : axis + 1], 1)
        along = inside.reshape(1, len(axis_starts), *([1] * axis), size)
        masks = (earlier & along).reshape(-1, *masks.shape[1 : axis + 1], size)
    return masks


def _starts_fields(version: int, rank: int) -> tuple[str, ...]:
    if version == 3:
        return _FORMAT_3_STARTS
    return tuple(f"region_starts_{axis}" for axis in range(rank))


def _region_arrays(regions: Regions) -> dict[str, np.ndarray]:
    """Format 4's regions: sliding windows by their geometry, other masks packed."""
    masks = regions.masks.detach().cpu().numpy()
    if masks.dtype != np.bool_ or not 2 <= masks.ndim <= 4:
        return {"region_masks": masks}  # refused by the validation that follows
    spatial = tuple(int(size) for size in masks.shape[1:])
    geometry = regions.window_grid()
    if geometry is not None and masks.size <= _MAX_WINDOW_MASK_BYTES:
        # window_grid proved every mask equal to its window (filled boxes, row-major lattice)
        names = _starts_fields(FORMAT_VERSION, len(spatial))
        return {
            "region_window": np.array([*spatial, *geometry.window], dtype=np.int64),
            **{
                name: np.array(starts, dtype=np.int64)
                for name, starts in zip(names, geometry.starts, strict=True)
            },
        }
    return {
        "region_masks_packed": np.packbits(masks.reshape(masks.shape[0], -1), axis=1),
        "region_mask_shape": np.array(masks.shape, dtype=np.int64),
    }


def _stored_masks(fields: _Fields, version: int) -> np.ndarray:
    """The (R, *spatial) masks of any format version, validated before anything large is made."""
    if fields.decoded_masks is not None:
        return fields.decoded_masks
    if version < 3 or fields.has("region_masks"):
        masks = fields.array("region_masks")
    elif fields.has("region_window"):
        masks = _stored_windows(fields, version)
    else:
        shape = fields.integers("region_mask_shape", (None,), low=1)
        sizes = (3,) if version == 3 else (2, 3, 4)  # format 3 held 2D regions only
        if shape.size not in sizes:
            raise fields.error(
                "region_mask_shape", "(R, *spatial) with 1 to 3 spatial axes", str(shape.tolist())
            )
        r, pixels = int(shape[0]), math.prod(int(size) for size in shape[1:])
        packed = fields.array("region_masks_packed")
        if packed.dtype != np.uint8 or packed.shape != (r, (pixels + 7) // 8):
            raise fields.error(
                "region_masks_packed",
                f"a uint8 array of shape ({r}, {(pixels + 7) // 8})",
                f"dtype {packed.dtype}, shape {packed.shape}",
            )
        unpacked = np.unpackbits(packed, axis=1, count=pixels).astype(np.bool_)
        masks = unpacked.reshape(tuple(int(size) for size in shape))
    fields.decoded_masks = masks
    return masks


def _stored_windows(fields: _Fields, version: int) -> np.ndarray:
    """The masks of a file that stores sliding windows by their geometry."""
    window = fields.integers("region_window", (None,), low=1)
    rank = window.size // 2
    if window.size % 2 or not (rank == 2 if version == 3 else 1 <= rank <= 3):
        raise fields.error(
            "region_window",
            "the spatial size then the window size, one int per axis (1 to 3 axes)",
            str(window.tolist()),
        )
    spatial = tuple(int(x) for x in window[:rank])
    sizes = tuple(int(x) for x in window[rank:])
    if any(length > size for length, size in zip(sizes, spatial, strict=True)):
        raise fields.error("region_window", "a window inside the image", str(window.tolist()))
    starts = []
    for name, size, length in zip(_starts_fields(version, rank), spatial, sizes, strict=True):
        axis_starts = fields.integers(name, (None,))
        limit = size - length
        if (
            not axis_starts.size
            or int(axis_starts.max()) > limit
            or np.any(np.diff(axis_starts) <= 0)
        ):
            raise fields.error(
                name, f"increasing starts in [0, {limit}], at least one", str(axis_starts[:10])
            )
        starts.append(axis_starts.tolist())
    # Python ints: np.prod wraps past 2**63, and (2**32)**3 pixels would read as 0
    count = math.prod(len(axis_starts) for axis_starts in starts)
    if count * math.prod(spatial) > _MAX_WINDOW_MASK_BYTES:
        raise fields.error(
            "region_window",
            f"masks of at most {_MAX_WINDOW_MASK_BYTES} bytes",
            f"{count} windows of {'x'.join(map(str, spatial))}",
        )
    return _window_masks(spatial, sizes, starts)


def _region_count(fields: _Fields, version: int) -> int | None:
    """R, read from the masks' own shape (None when they are malformed: reported later)."""
    try:
        shape = _stored_masks(fields, version).shape
    except ResultFileError:
        return None
    return shape[0] if 2 <= len(shape) <= 4 else None


def _metadata(fields: _Fields, version: int, k: int, writing: bool) -> dict[str, Any]:
    """Validated regions, fills, class names, image shape, output and engine."""
    masks = _stored_masks(fields, version)
    if masks.dtype != np.bool_ or not 2 <= masks.ndim <= 4 or masks.shape[0] == 0:
        raise fields.error(
            "region_masks",
            "a bool array of shape (R, *spatial), 1 to 3 spatial axes, R >= 1",
            f"dtype {masks.dtype}, shape {masks.shape}",
        )
    r, spatial = masks.shape[0], tuple(int(size) for size in masks.shape[1:])
    ids = fields.integers("region_ids", (r,), low=-(2**62))
    if len(set(ids.tolist())) != r:
        raise fields.error("region_ids", "distinct ids", str(ids.tolist()[:20]))
    empty = np.flatnonzero(~masks.reshape(r, -1).any(axis=1))
    if empty.size:
        raise fields.error(
            "region_masks",
            "every region to cover a pixel",
            f"empty regions at {empty.tolist()[:10]}",
        )
    fill_labels = fields.strings("fill_labels")
    if not fill_labels or len(set(fill_labels)) != len(fill_labels):
        raise fields.error("fill_labels", "at least one label, all distinct", str(fill_labels[:10]))
    class_names = fields.strings("class_names", k) if fields.has("class_names") else None
    image_shape = tuple(int(s) for s in fields.integers("image_shape", (None,), low=1))
    if image_shape and image_shape != spatial and image_shape[1:] != spatial:
        size = ", ".join(map(str, spatial))
        raise fields.error(
            "image_shape", f"(), ({size}) or (C, {size}) to match the regions", str(image_shape)
        )
    output = fields.string("output")
    if version == _LEGACY_VERSION:
        output_kind = output if output in _BUILTIN_OUTPUTS else "callable"
    else:
        output_kind = fields.string("output_kind")
    if output_kind not in (*_BUILTIN_OUTPUTS, "callable"):
        raise fields.error("output_kind", '"softmax", "logits" or "callable"', repr(output_kind))
    if output_kind in _BUILTIN_OUTPUTS and output != output_kind:
        raise fields.error("output", repr(output_kind) + " (as output_kind says)", repr(output))
    if output_kind == "callable" and (not output or not output.isprintable()):
        raise fields.error("output", "the name of the output callable", repr(output))
    engine = fields.string("engine")
    if engine not in _ENGINES:
        raise fields.error("engine", " or ".join(repr(e) for e in _ENGINES), repr(engine))
    meta: dict[str, Any] = {
        "fill_labels": fill_labels,
        "class_names": class_names,
        "image_shape": image_shape,
        "output": output,
        "engine": engine,
        "engine_note": fields.string("engine_note"),
    }
    if not writing:
        weights = None
        if fields.has("region_weights"):
            weights = torch.from_numpy(fields.floats("region_weights", masks.shape))
        try:
            meta["regions"] = Regions(torch.from_numpy(masks), tuple(int(i) for i in ids), weights)
        except InputValueError as error:
            raise fields.error("region_weights", "soft-region weights", str(error)) from error
    return meta


def _validate(fields: _Fields, kind: str, version: int, writing: bool = False) -> dict[str, Any]:
    """Check every field of a result of `kind`; returns the constructor's keyword arguments."""
    try:
        if kind == "SweepResult":
            return _sweep_fields(fields, version, writing)
        if kind == "ClassMeanResult":
            return _class_mean_fields(fields, version, writing)
        raise InputValueError(f"kind: expected one of {sorted(_KINDS)}, got {kind!r}")
    except ResultFileError:
        raise
    except InputValueError as error:  # e.g. Regions' own checks
        raise ResultFileError(f"result file {os.fspath(fields.path)!r}: {error}") from error


def _sweep_fields(fields: _Fields, version: int, writing: bool) -> dict[str, Any]:
    baseline = fields.floats("baseline", (None, None))
    n, k = baseline.shape
    r = _region_count(fields, version)
    v = fields.array("fill_labels").shape[0] if fields.array("fill_labels").ndim == 1 else None
    occluded = fields.floats("occluded", (n, r, v, k))
    labels = None
    if fields.has("labels"):
        labels = fields.integers("labels", (n,))
        if labels.size and int(labels.max()) >= k:
            raise fields.error(
                "labels", f"class indices in [0, {k - 1}]", f"maximum {int(labels.max())}"
            )
    meta = _metadata(fields, version, k, writing)
    if baseline.dtype != occluded.dtype:
        raise fields.error(
            "occluded", f"dtype {baseline.dtype} like baseline", f"dtype {occluded.dtype}"
        )
    optional: dict[str, Any] = {}
    # Both are absent from files of exact, fully computed sweeps (and from older files).
    if fields.has("computed"):
        computed = fields.array("computed")
        if computed.dtype != np.bool_ or computed.shape != (n, r):
            raise fields.error(
                "computed",
                f"a bool array of shape ({n}, {r})",
                f"dtype {computed.dtype}, shape {computed.shape}",
            )
        optional["computed"] = torch.from_numpy(computed)
    if fields.has("fidelity"):
        fidelity = fields.array("fidelity")
        # Files written before drill-downs had a fidelity store six numbers (no `top`),
        # before the heat-map R^2 seven.
        if fidelity.dtype != np.float64 or fidelity.shape not in ((6,), (7,), (8,)):
            raise fields.error(
                "fidelity",
                "a float64 array of shape (8,) (or (6,) / (7,), written by earlier versions)",
                f"dtype {fidelity.dtype}, shape {fidelity.shape}",
            )
        top = fidelity[6] if fidelity.shape[0] >= 7 else np.nan
        r2 = fidelity[7] if fidelity.shape[0] >= 8 else np.nan
        # The Spearman correlation (entry 1) is NaN when the drops are constant, `top`
        # (entry 6) when there was no drill-down, the heat-map R^2 (entry 7) when
        # the file predates it.
        if not (
            np.isfinite(fidelity[[0, 2, 3, 4, 5]]).all()
            and 0.0 < fidelity[3] <= 1.0
            and fidelity[4] >= 1
            and float(fidelity[4]).is_integer()
            and (np.isnan(top) or 0.0 < top <= 1.0)
            and (np.isnan(r2) or (np.isfinite(r2) and r2 <= 1.0 + 1e-9))
        ):
            raise fields.error(
                "fidelity",
                "(ssim, spearman, max_abs_error, tau in (0, 1], calibration images >= 1, "
                "target, top in (0, 1] or NaN, R^2 at most 1 or NaN)",
                str(fidelity.tolist()),
            )
        optional["fidelity"] = fidelity
    return {
        "baseline": torch.from_numpy(baseline),
        "occluded": torch.from_numpy(occluded),
        "labels": None if labels is None else torch.from_numpy(labels),
        **meta,
        **optional,
    }


def _class_mean_fields(fields: _Fields, version: int, writing: bool) -> dict[str, Any]:
    confusion = fields.integers("confusion", (None, None))
    k = confusion.shape[0]
    if confusion.shape != (k, k):
        raise fields.error("confusion", "a square (K, K) array", f"shape {confusion.shape}")
    counts = fields.integers("counts", (2, k))
    if not np.array_equal(counts[0], confusion.sum(axis=1)):
        raise fields.error("counts", "counts[0] = row sums of confusion", f"{counts[0].tolist()}")
    if not np.array_equal(counts[1], np.diagonal(confusion)):
        raise fields.error("counts", "counts[1] = diagonal of confusion", f"{counts[1].tolist()}")
    r = _region_count(fields, version)
    v = fields.array("fill_labels").shape[0] if fields.array("fill_labels").ndim == 1 else None
    occluded_sum = fields.floats("occluded_sum", (2, k, r, v, k))
    baseline_sum = fields.floats("baseline_sum", (2, k, k))
    for field, array in (("occluded_sum", occluded_sum), ("baseline_sum", baseline_sum)):
        if array.dtype != np.float64:
            raise fields.error(field, "float64 sums", f"dtype {array.dtype}")
    meta = _metadata(fields, version, k, writing)
    return {
        "occluded_sum": torch.from_numpy(occluded_sum),
        "baseline_sum": torch.from_numpy(baseline_sum),
        "counts": torch.from_numpy(counts),
        "confusion": torch.from_numpy(confusion),
        **meta,
    }


def write_result(
    path: str | os.PathLike[str],
    kind: str,
    arrays: Mapping[str, torch.Tensor | np.ndarray | None],
    meta: dict[str, Any],
) -> Path:
    """Write a result's arrays and metadata (`_metadata_arrays`' arguments) to `path`.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write; an existing file is replaced atomically.
    kind : {"SweepResult", "ClassMeanResult"}
        The result type, stored in the file and checked on load.
    arrays : mapping of str to Tensor, ndarray or None
        The result's own arrays; None entries (optional fields) are not written, so files
        of exact, fully computed sweeps hold no ``computed`` or ``fidelity``.
    meta : dict
        Regions, fill labels, class names, image shape, output and engine.

    Raises
    ------
    ResultFileError
        When a field could not be loaded again: a saved file always loads.
    """
    stored = {
        key: value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        for key, value in arrays.items()
        if value is not None
    }
    masks = meta["regions"].masks.detach().cpu().numpy()
    return _write(path, kind, {**stored, **_metadata_arrays(**meta)}, masks)


def read_result(path: str | os.PathLike[str], kind: str) -> dict[str, Any]:
    """Validated constructor arguments of a result of `kind` from a file of `write_result`.

    Raises
    ------
    ResultFileError
        When the file is missing, unreadable, corrupted, of another kind or version, or
        has a field with an invalid value; the message names the file and the field.
    """
    if kind not in _KINDS:
        raise InputValueError(f"kind: expected one of {sorted(_KINDS)}, got {kind!r}")
    fields, version = _read_checked(path, kind)
    return _validate(fields, kind, version)
