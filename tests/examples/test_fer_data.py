"""FER-2013 csv and folder loaders: good input, each malformed-row kind, skipping with counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fer_paper.classes import CLASS_NAMES
from fer_paper.data import (
    MalformedRowError,
    MalformedRowWarning,
    load_fer2013_csv,
    load_fer_folder,
)
from PIL import Image

HEADER = "emotion,pixels,Usage"


def pixel_text(value: int | list[int]) -> str:
    values = [value] * 2304 if isinstance(value, int) else value
    return " ".join(str(v) for v in values)


def good_rows() -> list[str]:
    """Six rows: 3 Training, 2 PublicTest, 1 PrivateTest (lines 2..7 of the file)."""
    ramp = [i % 256 for i in range(2304)]
    return [
        f"3,{pixel_text(ramp)},Training",
        f"0,{pixel_text(0)},Training",
        f"6,{pixel_text(255)},Training",
        f"5,{pixel_text(51)},PublicTest",
        f"1,{pixel_text(102)},PublicTest",
        f"4,{pixel_text(204)},PrivateTest",
    ]


def write_csv(path: Path, rows: list[str], header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def test_csv_good_file(tmp_path: Path) -> None:
    data = load_fer2013_csv(write_csv(tmp_path / "fer2013.csv", good_rows()))
    assert data.source == "csv" and data.test_split == "PublicTest"
    assert data.train_images.shape == (3, 1, 48, 48) and data.train_images.dtype == torch.float32
    assert data.train_labels.tolist() == [3, 0, 6]
    assert data.test_labels.tolist() == [5, 1]
    # row-major 48x48, pixels / 255
    expected = torch.tensor([i % 256 for i in range(2304)], dtype=torch.float32).reshape(48, 48)
    torch.testing.assert_close(data.train_images[0, 0], expected / 255)
    assert float(data.train_images[2].min()) == 1.0
    torch.testing.assert_close(data.test_images[0], torch.full((1, 48, 48), 0.2))
    assert data.counts()["test"] == dict.fromkeys(CLASS_NAMES, 0) | {"Disgust": 1, "Surprise": 1}


def test_csv_private_test_split_and_column_order(tmp_path: Path) -> None:
    # columns in another order, spaces after commas in the header (as some exports have)
    rows = [
        f"{usage},{label},{pixels}" for label, pixels, usage in (r.split(",") for r in good_rows())
    ]
    path = write_csv(tmp_path / "f.csv", rows, header="Usage, emotion, pixels")
    data = load_fer2013_csv(path, test_split="PrivateTest")
    assert data.test_labels.tolist() == [4]
    torch.testing.assert_close(data.test_images[0], torch.full((1, 48, 48), 0.8))
    assert "2 PublicTest rows unused" in data.description


@pytest.mark.parametrize(
    ("bad_row", "reason", "detail"),
    [
        (f"3,{pixel_text([1] * 2303)},Training", "wrong pixel count", "got 2303"),
        (f"3,{pixel_text([1] * 2305)},Training", "wrong pixel count", "got 2305"),
        (f"7,{pixel_text(1)},Training", "label not an integer in 0..6", "got 7"),
        (f"-1,{pixel_text(1)},Training", "label not an integer in 0..6", "got -1"),
        (f"happy,{pixel_text(1)},Training", "label not an integer in 0..6", "'happy'"),
        (f"3,{pixel_text(1)},Validation", "unknown Usage", "'Validation'"),
        (
            f"3,{pixel_text([1] * 10 + ['1.5'] + [1] * 2293)},Training",
            "non-integer pixel",
            "pixel 10 is '1.5'",
        ),  # type: ignore[list-item]
        (
            f"3,{pixel_text([1] * 5 + ['x'] + [1] * 2298)},Training",
            "non-integer pixel",
            "pixel 5 is 'x'",
        ),  # type: ignore[list-item]
        (
            f"3,{pixel_text([1] * 7 + [256] + [1] * 2296)},Training",
            "pixel outside 0..255",
            "pixel 7 is 256",
        ),
        (f"3,{pixel_text([-3] + [1] * 2303)},Training", "pixel outside 0..255", "pixel 0 is -3"),
        (
            f"3,{pixel_text([10**30] + [1] * 2303)},Training",
            "pixel outside 0..255",
            "pixel 0 is 1000",
        ),
        (f"3,{pixel_text(1)}", "missing or extra fields", "got 2"),
    ],
)
def test_csv_malformed_row_names_line_and_reason(
    tmp_path: Path, bad_row: str, reason: str, detail: str
) -> None:
    rows = good_rows()
    rows.insert(2, bad_row)  # header is line 1, so the bad row is line 4
    path = write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(MalformedRowError) as caught:
        load_fer2013_csv(path)
    assert isinstance(caught.value, ValueError)
    assert caught.value.line == 4 and caught.value.reason == reason
    message = str(caught.value)
    assert "line 4" in message and reason in message and detail in message


def test_csv_skip_bad_rows_warns_with_counts_per_reason(tmp_path: Path) -> None:
    rows = good_rows()
    bad = [
        f"3,{pixel_text([1] * 100)},Training",  # line 8
        f"9,{pixel_text(1)},Training",  # line 9
        f"3,{pixel_text([1] * 50)},PublicTest",  # line 10
        f"3,{pixel_text([300] * 2304)},Training",  # line 11
        f"3,{pixel_text(1)},Nope",  # line 12
        f"3,{pixel_text(['a'] * 2304)},Training",  # type: ignore[list-item]  # line 13
    ]
    path = write_csv(tmp_path / "mixed.csv", rows + bad)
    with pytest.warns(MalformedRowWarning) as record:
        data = load_fer2013_csv(path, skip_bad_rows=True)
    assert len(record) == 1
    message = str(record[0].message)
    assert "skipped 6 malformed rows" in message
    assert "wrong pixel count: 2 (first at line 8)" in message
    assert "label not an integer in 0..6: 1 (first at line 9)" in message
    assert "pixel outside 0..255: 1 (first at line 11)" in message
    assert "unknown Usage: 1 (first at line 12)" in message
    assert "non-integer pixel: 1 (first at line 13)" in message
    # the good rows all arrive, and the report notes the skipping
    assert data.train_labels.tolist() == [3, 0, 6] and data.test_labels.tolist() == [5, 1]
    assert data.notes == (message,)


def test_csv_without_bad_rows_does_not_warn(tmp_path: Path) -> None:
    data = load_fer2013_csv(write_csv(tmp_path / "ok.csv", good_rows()), skip_bad_rows=True)
    assert data.notes == ()


def test_csv_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="columns"):
        load_fer2013_csv(write_csv(tmp_path / "h.csv", good_rows(), header="label,pixels,Usage"))
    with pytest.raises(ValueError, match="'PublicTest'"):
        load_fer2013_csv(write_csv(tmp_path / "t.csv", good_rows()[:3]))
    with pytest.raises(ValueError, match="test_split"):
        load_fer2013_csv(tmp_path / "t.csv", test_split="Validation")
    with pytest.raises(ValueError, match="existing file"):
        load_fer2013_csv(tmp_path / "missing.csv")
    (tmp_path / "empty.csv").write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="empty file"):
        load_fer2013_csv(tmp_path / "empty.csv")


def write_png(path: Path, pixels: np.ndarray, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "RGB":
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    Image.fromarray(pixels.astype(np.uint8), mode=mode).save(path)


def test_folder_loader(tmp_path: Path) -> None:
    ramp = (np.arange(2304).reshape(48, 48) % 256).astype(np.uint8)
    write_png(tmp_path / "train" / "happy" / "b.png", ramp)
    write_png(tmp_path / "train" / "happy" / "a.png", np.full((48, 48), 51))
    write_png(tmp_path / "train" / "Angry" / "x.png", np.zeros((48, 48)), mode="RGB")
    write_png(tmp_path / "test" / "surprise" / "s.png", np.full((48, 48), 255))
    write_png(tmp_path / "test" / "neutral" / "n.png", np.full((48, 48), 102), mode="RGB")
    data = load_fer_folder(tmp_path)
    assert data.source == "folder" and data.test_split == "test"
    # classes in folder-name order (Angry < happy, case-insensitive sort is not assumed), files sorted
    assert sorted(data.train_labels.tolist()) == [0, 3, 3]
    happy = data.train_images[data.train_labels == 3]
    torch.testing.assert_close(happy[0, 0], torch.full((48, 48), 0.2))  # a.png first
    torch.testing.assert_close(happy[1, 0], torch.from_numpy(ramp).float() / 255)
    assert sorted(data.test_labels.tolist()) == [5, 6]
    neutral = data.test_images[data.test_labels == 6]
    torch.testing.assert_close(neutral, torch.full((1, 1, 48, 48), 0.4), atol=1e-6, rtol=0)
    assert data.counts()["train"]["Happiness"] == 2


def test_folder_loader_errors(tmp_path: Path) -> None:
    write_png(tmp_path / "train" / "happy" / "a.png", np.zeros((48, 48)))
    with pytest.raises(ValueError, match="test"):
        load_fer_folder(tmp_path)
    write_png(tmp_path / "test" / "joy" / "a.png", np.zeros((48, 48)))
    with pytest.raises(ValueError, match="joy"):
        load_fer_folder(tmp_path)
    (tmp_path / "test" / "joy" / "a.png").unlink()
    (tmp_path / "test" / "joy").rmdir()
    write_png(tmp_path / "test" / "sad" / "big.png", np.zeros((64, 64)))
    with pytest.raises(ValueError, match=r"48x48.*big\.png"):
        load_fer_folder(tmp_path)
    (tmp_path / "test" / "sad" / "big.png").unlink()
    (tmp_path / "test" / "sad" / "notes.txt").write_text("x", encoding="utf-8")
    with pytest.raises(ValueError, match="found none"):
        load_fer_folder(tmp_path)
    write_png(tmp_path / "test" / "sad" / "ok.png", np.zeros((48, 48)))
    with pytest.warns(UserWarning, match="ignored 1 files"):
        data = load_fer_folder(tmp_path)
    assert data.test_labels.tolist() == [4]
