"""Safe files: exclusive temporary files, and .npz members checked before they are read."""

from __future__ import annotations

import io
import os
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from occlusion_probe import storage
from occlusion_probe.storage import atomic_write_npz, is_temporary_name, read_npz


def test_round_trip_and_nothing_left_behind(tmp_path: Path) -> None:
    arrays = {"a": np.arange(6, dtype=np.int64).reshape(2, 3), "s": np.array("text")}
    size = atomic_write_npz(tmp_path / "x.npz", arrays)
    assert size == (tmp_path / "x.npz").stat().st_size
    back = read_npz(tmp_path / "x.npz")
    assert np.array_equal(back["a"], arrays["a"]) and str(back["s"]) == "text"
    assert back["a"].flags.writeable
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npz"]


def test_a_link_planted_at_the_temporary_name_is_never_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    target = tmp_path / "r.npz"
    tokens = iter(["a" * 16, "b" * 16])
    monkeypatch.setattr(storage.secrets, "token_hex", lambda n: next(tokens))
    planted = tmp_path / f".r.npz.tmp-{os.getpid()}-{'a' * 16}"
    os.symlink(victim, planted)
    # The name the library used to write to (no random part) is planted too.
    os.symlink(victim, tmp_path / f".r.npz.tmp-{os.getpid()}")
    atomic_write_npz(target, {"a": np.zeros(3)})
    assert victim.read_text() == "keep me"
    assert planted.is_symlink() and os.readlink(planted) == str(victim)
    assert np.array_equal(read_npz(target)["a"], np.zeros(3))


def test_a_failed_write_removes_only_its_own_file(tmp_path: Path) -> None:
    other = tmp_path / f".r.npz.tmp-{os.getpid()}-{'c' * 16}"
    other.write_text("a user's file")

    def fail(handle: object) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        storage.atomic_write(tmp_path / "r.npz", fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name]


def test_temporary_names() -> None:
    name = f".chunk-00000001.npz.tmp-123-{'0f' * 8}"
    assert is_temporary_name(name, "chunk-00000001.npz")
    assert not is_temporary_name(".chunk-00000001.npz.tmp-123", "chunk-00000001.npz")
    assert not is_temporary_name(f".chunk-00000001.npz.tmp-x-{'0f' * 8}", "chunk-00000001.npz")
    assert not is_temporary_name(f".other.tmp-1-{'0f' * 8}", "chunk-00000001.npz")


def _npy_header(shape: tuple[int, ...], dtype: str = "<f8") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": dtype, "fortran_order": False, "shape": shape}
    )
    return buffer.getvalue()


def test_a_compressed_bomb_is_refused_before_it_is_unpacked(tmp_path: Path) -> None:
    path = tmp_path / "bomb.npz"
    mib = 1 << 20
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("occluded.npy", "w", force_zip64=True) as member:
            member.write(_npy_header((64 * mib // 8,)))
            zeros = bytes(mib)
            for _ in range(64):
                member.write(zeros)
    assert path.stat().st_size < mib  # 64 MiB of zeros packed into well under 1 MiB
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"'occluded\.npy' is compressed"):
            read_npz(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * mib


def test_a_header_declaring_more_than_the_member_holds_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "liar.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("baseline.npy", _npy_header((1 << 30,)) + bytes(16))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"declares \d+ bytes, but its shape \(1073741824,\)"):
            read_npz(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 22


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b'{"format": 2}', "not an .npz archive"),
        (np.lib.format.magic(1, 0) + b"rest", "not an .npz archive"),
    ],
)
def test_files_that_are_no_zip_never_reach_numpy(
    tmp_path: Path, content: bytes, match: str
) -> None:
    path = tmp_path / "x.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as caught:
        read_npz(path)
    assert "pickle" not in str(caught.value)


def test_objects_and_foreign_byte_order_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.npz"
    np.savez(path, a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError, match="holds Python objects"):
        read_npz(path)
    np.savez(path, a=np.arange(3, dtype=">f8"))
    with pytest.raises(ValueError, match="non-native byte order"):
        read_npz(path)
