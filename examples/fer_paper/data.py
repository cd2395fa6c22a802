"""FER-2013 loaders: Kaggle's ``fer2013.csv`` and the common ``train/<class>/*.png`` folders.

Both give a `FERData`: train and test images as float32 tensors (N, 1, 48, 48) with pixel
values in [0, 1], int64 labels (N,) in Kaggle's order (0 Angry, 1 Disgust, 2 Fear, 3 Happy,
4 Sad, 5 Surprise, 6 Neutral), and a description of where they came from.

The csv loader never drops a row silently: a malformed row raises `MalformedRowError` (a
``ValueError``) naming its line number, or, with ``skip_bad_rows=True``, is skipped and counted,
and one `MalformedRowWarning` reports the counts per reason.
"""

from __future__ import annotations

import csv
import os
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from .classes import CLASS_NAMES, FOLDER_NAME_TO_LABEL, NUM_CLASSES

__all__ = [
    "CSV_COLUMNS",
    "IMAGE_EXTENSIONS",
    "TEST_SPLITS",
    "FERData",
    "MalformedRowError",
    "MalformedRowWarning",
    "load_fer2013_csv",
    "load_fer_folder",
]

IMAGE_SIDE = 48
NUM_PIXELS = IMAGE_SIDE * IMAGE_SIDE
CSV_COLUMNS = ("emotion", "pixels", "Usage")
TRAIN_USAGE = "Training"
TEST_SPLITS = ("PublicTest", "PrivateTest")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

# Reasons a csv row is rejected; the keys of the skip counts.
REASON_FIELDS = "missing or extra fields"
REASON_LABEL = "label not an integer in 0..6"
REASON_USAGE = "unknown Usage"
REASON_PIXEL_COUNT = "wrong pixel count"
REASON_NON_INTEGER = "non-integer pixel"
REASON_RANGE = "pixel outside 0..255"


@dataclass(frozen=True, eq=False)
class FERData:
    """A train/test pair of labelled 48x48 grayscale face sets.

    Attributes
    ----------
    train_images, test_images : Tensor, shape (N, 1, 48, 48), float32 in [0, 1]
    train_labels, test_labels : Tensor, shape (N,), int64 in 0..6
    source : str
        "synthetic", "csv" or "folder".
    description : str
        Where the data came from (path, split, generator settings), for the report.
    test_split : str
        Which split is the test set ("PublicTest", "PrivateTest", "test", "synthetic").
    notes : tuple of str
        Anything the report should mention (e.g. skipped rows).
    """

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    source: str
    description: str
    test_split: str
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            if images.dim() != 4 or tuple(images.shape[1:]) != (1, IMAGE_SIDE, IMAGE_SIDE):
                raise ValueError(
                    f"{split}_images: expected shape (N, 1, 48, 48), got {tuple(images.shape)}"
                )
            if labels.shape != (images.shape[0],):
                raise ValueError(
                    f"{split}_labels: expected shape ({images.shape[0]},), got {tuple(labels.shape)}"
                )
            if images.shape[0] == 0:
                raise ValueError(f"{split}_images: expected at least one image, got none")

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per class name in each split: ``{"train": {...}, "test": {...}}``."""
        return {
            split: dict(
                zip(
                    CLASS_NAMES,
                    torch.bincount(
                        getattr(self, f"{split}_labels"), minlength=NUM_CLASSES
                    ).tolist(),
                    strict=True,
                )
            )
            for split in ("train", "test")
        }


class MalformedRowError(ValueError):
    """A row of ``fer2013.csv`` cannot be read; ``line`` is its 1-based line in the file."""

    def __init__(self, path: Path, line: int, reason: str, detail: str) -> None:
        super().__init__(f"{path}, line {line}: {reason}: {detail}")
        self.path = path
        self.line = line
        self.reason = reason


class MalformedRowWarning(UserWarning):
    """Malformed csv rows were skipped (``skip_bad_rows=True``); the message counts them."""


def _parse_row(
    row: list[str], columns: dict[str, int], path: Path, line: int
) -> tuple[int, str, NDArray[np.uint8]]:
    """Label, Usage and pixels (2304,) uint8 of one csv row, or `MalformedRowError`."""
    if len(row) != len(columns):
        raise MalformedRowError(
            path, line, REASON_FIELDS, f"expected {len(columns)} fields, got {len(row)}"
        )
    label_text = row[columns["emotion"]].strip()
    try:
        label = int(label_text)
    except ValueError:
        raise MalformedRowError(path, line, REASON_LABEL, f"got {label_text!r}") from None
    if not 0 <= label < NUM_CLASSES:
        raise MalformedRowError(path, line, REASON_LABEL, f"got {label}")
    usage = row[columns["Usage"]].strip()
    if usage != TRAIN_USAGE and usage not in TEST_SPLITS:
        raise MalformedRowError(
            path,
            line,
            REASON_USAGE,
            f"expected one of {(TRAIN_USAGE, *TEST_SPLITS)}, got {usage!r}",
        )
    tokens = row[columns["pixels"]].split()
    if len(tokens) != NUM_PIXELS:
        raise MalformedRowError(
            path, line, REASON_PIXEL_COUNT, f"expected {NUM_PIXELS} pixels, got {len(tokens)}"
        )
    try:
        values = np.array(tokens, dtype=np.int64)
    except ValueError:
        position = next(index for index, token in enumerate(tokens) if not _is_int(token))
        raise MalformedRowError(
            path, line, REASON_NON_INTEGER, f"pixel {position} is {tokens[position]!r}"
        ) from None
    except OverflowError:
        # An integer too large for int64 is still an integer, just far outside 0..255.
        position = next(index for index, token in enumerate(tokens) if abs(int(token)) > 2**62)
        raise MalformedRowError(
            path, line, REASON_RANGE, f"pixel {position} is {tokens[position]}"
        ) from None
    out_of_range = (values < 0) | (values > 255)
    if out_of_range.any():
        position = int(np.argmax(out_of_range))
        raise MalformedRowError(
            path, line, REASON_RANGE, f"pixel {position} is {int(values[position])}"
        )
    return label, usage, values.astype(np.uint8)


def _is_int(token: str) -> bool:
    try:
        int(token)
    except ValueError:
        return False
    return True


def _rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank data row, after checking the header."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise ValueError(
                f"csv: expected a header {list(CSV_COLUMNS)} in {path}, got an empty file"
            )
        yield 1, [name.strip() for name in header]
        for row in reader:
            if row:
                yield reader.line_num, row


def load_fer2013_csv(
    path: str | os.PathLike[str],
    *,
    test_split: str = "PublicTest",
    skip_bad_rows: bool = False,
) -> FERData:
    """Read Kaggle's ``fer2013.csv`` (columns emotion, pixels, Usage).

    Parameters
    ----------
    path : path of the csv file
    test_split : "PublicTest" (default: the paper's 3,588 test images) or "PrivateTest"
        Rows of the other test split are not used.
    skip_bad_rows : bool
        False (default): the first malformed row raises `MalformedRowError` with its line
        number. True: malformed rows are skipped and one `MalformedRowWarning` counts them per
        reason (wrong pixel count, label out of range, unknown Usage, non-integer pixel, pixel
        outside 0..255, missing or extra fields).

    Returns
    -------
    FERData
        Training rows as the train set, `test_split` rows as the test set, pixels / 255.
    """
    if test_split not in TEST_SPLITS:
        raise ValueError(f"test_split: expected one of {TEST_SPLITS}, got {test_split!r}")
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"csv: expected an existing file, got {str(path)!r}")
    rows = _rows(path)
    _, header = next(rows)
    missing = [name for name in CSV_COLUMNS if name not in header]
    if missing:
        raise ValueError(
            f"csv: expected columns {list(CSV_COLUMNS)} in the header of {path}, got {header} "
            f"(missing {missing})"
        )
    columns = {name: header.index(name) for name in CSV_COLUMNS}
    columns.update({name: index for index, name in enumerate(header) if name not in columns})
    pixels: dict[str, list[NDArray[np.uint8]]] = {TRAIN_USAGE: [], test_split: []}
    labels: dict[str, list[int]] = {TRAIN_USAGE: [], test_split: []}
    skipped: Counter[str] = Counter()
    first_skipped: dict[str, int] = {}
    unused = 0
    for line, row in rows:
        try:
            label, usage, values = _parse_row(row, columns, path, line)
        except MalformedRowError as error:
            if not skip_bad_rows:
                raise
            skipped[error.reason] += 1
            first_skipped.setdefault(error.reason, line)
            continue
        if usage not in pixels:
            unused += 1
            continue
        pixels[usage].append(values)
        labels[usage].append(label)
    notes: list[str] = []
    if skipped:
        counts = ", ".join(
            f"{reason}: {count} (first at line {first_skipped[reason]})"
            for reason, count in sorted(skipped.items())
        )
        message = f"skipped {sum(skipped.values())} malformed rows of {path}: {counts}"
        warnings.warn(message, MalformedRowWarning, stacklevel=2)
        notes.append(message)
    for usage in (TRAIN_USAGE, test_split):
        if not labels[usage]:
            raise ValueError(f"csv: expected rows with Usage {usage!r} in {path}, found none")

    def stack(usage: str) -> tuple[Tensor, Tensor]:
        images = np.stack(pixels[usage]).reshape(-1, 1, IMAGE_SIDE, IMAGE_SIDE)
        return (
            torch.from_numpy(images.astype(np.float32) / 255.0),
            torch.tensor(labels[usage], dtype=torch.int64),
        )

    train_images, train_labels = stack(TRAIN_USAGE)
    test_images, test_labels = stack(test_split)
    other = next(split for split in TEST_SPLITS if split != test_split)
    return FERData(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        source="csv",
        description=(
            f"FER-2013 csv {path}: Training rows for training, {test_split} rows for testing "
            f"({unused} {other} rows unused)"
        ),
        test_split=test_split,
        notes=tuple(notes),
    )


def _read_gray(path: Path) -> NDArray[np.float32]:
    """One image file as a (48, 48) float32 array in [0, 1] (colour converted to luminance)."""
    # matplotlib reads PNG itself and other formats through Pillow (a matplotlib dependency).
    from matplotlib import image as mpimg

    try:
        array = np.asarray(mpimg.imread(path))
    except (OSError, ValueError, SyntaxError) as error:
        raise ValueError(f"image: could not read {path}: {error}") from error
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        array = array.astype(np.float32) / 65535.0
    array = array.astype(np.float32)
    if array.ndim == 3:
        # ITU-R 601 luma, as Pillow's "L" conversion; an alpha channel is dropped.
        if array.shape[2] in (3, 4):
            array = array[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        elif array.shape[2] in (1, 2):
            array = array[..., 0]
    if array.shape != (IMAGE_SIDE, IMAGE_SIDE):
        raise ValueError(
            f"image: expected a 48x48 grayscale or colour image, got shape {array.shape} in {path}"
        )
    gray: NDArray[np.float32] = np.clip(array, 0.0, 1.0)
    return gray


def _load_split(split_dir: Path) -> tuple[Tensor, Tensor, int]:
    """Images (N, 1, 48, 48), labels (N,) and the number of ignored non-image files."""
    if not split_dir.is_dir():
        raise ValueError(f"data_dir: expected a folder {split_dir} with one folder per class")
    images: list[NDArray[np.float32]] = []
    labels: list[int] = []
    ignored = 0
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        name = class_dir.name.lower()
        if name not in FOLDER_NAME_TO_LABEL:
            raise ValueError(
                f"data_dir: expected class folders named {sorted(set(FOLDER_NAME_TO_LABEL))}, "
                f"got {str(class_dir)!r}"
            )
        for file in sorted(class_dir.iterdir()):
            if file.suffix.lower() not in IMAGE_EXTENSIONS or not file.is_file():
                ignored += not file.name.startswith(".")
                continue
            images.append(_read_gray(file))
            labels.append(FOLDER_NAME_TO_LABEL[name])
    if not images:
        raise ValueError(
            f"data_dir: expected {'/'.join(IMAGE_EXTENSIONS)} images under {split_dir}/<class>/, "
            "found none"
        )
    stacked = torch.from_numpy(np.stack(images)).unsqueeze(1)
    return stacked, torch.tensor(labels, dtype=torch.int64), ignored


def load_fer_folder(root: str | os.PathLike[str]) -> FERData:
    """Read the folder layout ``root/train/<class>/*.png`` and ``root/test/<class>/*.png``.

    Class folders are named after the classes, in Kaggle's words (angry, disgust, fear, happy,
    sad, surprise, neutral) or the paper's (anger, happiness, sadness, ...), any case. Files
    ending in .png, .jpg or .jpeg are read (48x48 grayscale; colour is converted to luminance);
    other files are ignored and counted in a warning.

    Parameters
    ----------
    root : path of the folder holding ``train/`` and ``test/``

    Returns
    -------
    FERData
        Pixels in [0, 1], files in sorted order within each class.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"data_dir: expected an existing folder, got {str(root)!r}")
    train_images, train_labels, ignored_train = _load_split(root / "train")
    test_images, test_labels, ignored_test = _load_split(root / "test")
    notes: list[str] = []
    if ignored_train + ignored_test:
        message = (
            f"ignored {ignored_train + ignored_test} files under {root} that are not "
            f"{'/'.join(IMAGE_EXTENSIONS)} images"
        )
        warnings.warn(message, UserWarning, stacklevel=2)
        notes.append(message)
    return FERData(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        source="folder",
        description=f"FER-2013 image folders {root}/train and {root}/test",
        test_split="test",
        notes=tuple(notes),
    )
