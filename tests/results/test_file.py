"""Result files: checksummed, every field validated, only ResultFileError on bad files."""

from __future__ import annotations

import io
import math
import os
import random
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import occlusion_probe as op
from occlusion_probe import ClassMeanResult, OcclusionProbeWarning, ResultFileError, SweepResult
from occlusion_probe.storage import payload_checksum


def _small_result() -> SweepResult:
    generator = torch.Generator().manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    return op.sweep(
        model,
        torch.rand(2, 1, 4, 4, generator=generator),
        op.grid(4, 4, 2, 2),
        fills=[0.0, 1.0],
        labels=[0, 2],
        class_names=["a", "b", "c"],
        progress=False,
    )


def _class_means() -> ClassMeanResult:
    generator = torch.Generator().manual_seed(6)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    return op.sweep(
        model,
        torch.rand(6, 1, 4, 4, generator=generator),
        op.grid(4, 4, 2, 2),
        fills=[0.0, 1.0],
        labels=[0, 1, 2, 0, 1, 2],
        reduce="class_mean",
        progress=False,
    )


def _same(a: SweepResult, b: SweepResult) -> bool:
    tensors = all(
        (getattr(a, n) is None and getattr(b, n) is None)
        or (
            getattr(a, n) is not None
            and getattr(b, n) is not None
            and getattr(a, n).dtype == getattr(b, n).dtype
            and torch.equal(getattr(a, n), getattr(b, n))
        )
        for n in ("baseline", "occluded", "labels")
    )
    meta = ("fill_labels", "class_names", "image_shape", "output", "engine", "engine_note")
    return (
        tensors
        and torch.equal(a.regions.masks, b.regions.masks)
        and a.regions.ids == b.regions.ids
        and all(getattr(a, m) == getattr(b, m) for m in meta)
    )


def _rewrite(path: Path, change: dict[str, np.ndarray | None], checksum: bool = True) -> None:
    """Rewrite a result file with some fields changed (None: removed), re-checksummed."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    for key, value in change.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    if checksum:
        arrays.pop("checksum")
        arrays["checksum"] = np.array(payload_checksum(arrays))
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]


def test_round_trips_keep_every_field(tmp_path: Path) -> None:
    result = _small_result()
    assert _same(SweepResult.load(result.save(tmp_path / "r.npz")), result)
    means = _class_means()
    loaded = ClassMeanResult.load(means.save(tmp_path / "m.npz"))
    for name in ("occluded_sum", "baseline_sum", "counts", "confusion"):
        assert torch.equal(getattr(loaded, name), getattr(means, name))
        assert getattr(loaded, name).dtype == getattr(means, name).dtype
    assert loaded.regions.ids == means.regions.ids and loaded.fill_labels == means.fill_labels
    torch.testing.assert_close(
        loaded.class_curves(0, correct_only=False), means.class_curves(0, correct_only=False)
    )


def test_byte_flips_load_identically_or_raise_result_file_error(tmp_path: Path) -> None:
    result = _small_result()
    data = result.save(tmp_path / "r.npz").read_bytes()
    flipped = tmp_path / "flipped.npz"
    positions = random.Random(12).sample(range(len(data)), 300)
    outcomes = {"identical": 0, "refused": 0}
    for position in positions:
        damaged = bytearray(data)
        damaged[position] ^= 0xFF if position % 2 else 0x01
        flipped.write_bytes(bytes(damaged))
        try:
            loaded = SweepResult.load(flipped)
        except ResultFileError:
            outcomes["refused"] += 1
            continue
        assert _same(loaded, result), f"flip at byte {position} loaded a different result"
        outcomes["identical"] += 1
    assert outcomes["refused"] > 200  # most bytes are array data, headers or checksummed names


def test_byte_flips_of_class_means(tmp_path: Path) -> None:
    means = _class_means()
    data = means.save(tmp_path / "m.npz").read_bytes()
    flipped = tmp_path / "flipped.npz"
    for position in random.Random(13).sample(range(len(data)), 100):
        damaged = bytearray(data)
        damaged[position] ^= 0x10
        flipped.write_bytes(bytes(damaged))
        try:
            loaded = ClassMeanResult.load(flipped)
        except ResultFileError:
            continue
        assert torch.equal(loaded.occluded_sum, means.occluded_sum)
        assert torch.equal(loaded.confusion, means.confusion)


def test_dropped_field_without_new_checksum_is_corruption(tmp_path: Path) -> None:
    path = _small_result().save(tmp_path / "r.npz")
    for field in ("labels", "class_names"):
        copy = tmp_path / f"no_{field}.npz"
        copy.write_bytes(path.read_bytes())
        _rewrite(copy, {field: None}, checksum=False)
        with pytest.raises(ResultFileError, match="checksum does not match"):
            SweepResult.load(copy)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("labels", np.array([0, 7]), "field 'labels': expected class indices in \\[0, 2\\]"),
        ("labels", np.array([0, -1]), "field 'labels': expected values >= 0"),
        ("labels", np.array([0.0, 1.0]), "field 'labels': expected an int64 array"),
        ("region_ids", np.array([1.0, 2.5, 3.0, 4.0]), "field 'region_ids': expected an int64"),
        ("region_ids", np.array([1, 1, 2, 3]), "field 'region_ids': expected distinct ids"),
        ("image_shape", np.array([1, 5, 4]), "field 'image_shape': expected \\(\\), \\(4, 4\\)"),
        ("output", np.array("banana"), "field 'output': expected 'softmax'"),
        ("output_kind", np.array("banana"), "field 'output_kind': expected \"softmax\""),
        ("engine", np.array("warp"), "field 'engine': expected 'dense' or 'incremental'"),
        ("fill_labels", np.array(["0.0"]), "field 'occluded': expected shape \\(2, 4, 1, 3\\)"),
        ("class_names", np.array(["a", "b"]), "field 'class_names': expected 3 entries"),
        ("baseline", np.full((2, 3), np.nan, np.float32), "field 'baseline': expected finite"),
        (
            "occluded",
            np.zeros((2, 4, 2, 3), np.float64),
            "field 'occluded': expected dtype float32",
        ),
        ("region_masks", np.zeros((4, 4, 4)), "field 'region_masks': expected a bool array"),
        ("kind", np.array("ClassMeanResult"), "field 'kind': expected 'SweepResult'"),
        ("format_version", np.array(5), "field 'format_version': expected 4 \\(or 3, 2, 1\\)"),
        ("format_version", np.array("2"), "field 'format_version': expected an integer scalar"),
        ("checksum", None, "field 'checksum': expected the field to be present"),
    ],
)
def test_every_field_is_validated_on_load(
    tmp_path: Path, field: str, value: np.ndarray | None, message: str
) -> None:
    path = _small_result().save(tmp_path / "r.npz")
    _rewrite(path, {field: value}, checksum=field != "checksum")
    with pytest.raises(ResultFileError, match=message) as caught:
        SweepResult.load(path)
    assert "r.npz" in str(caught.value)


def test_class_mean_fields_are_validated(tmp_path: Path) -> None:
    path = _class_means().save(tmp_path / "m.npz")
    _rewrite(path, {"counts": np.zeros((2, 3), dtype=np.int64)})
    with pytest.raises(ResultFileError, match="field 'counts': expected counts\\[0\\] = row sums"):
        ClassMeanResult.load(path)
    with pytest.raises(ResultFileError, match="field 'kind': expected 'SweepResult'"):
        SweepResult.load(_class_means().save(tmp_path / "other.npz"))


def test_unreadable_files_raise_result_file_error(tmp_path: Path) -> None:
    with pytest.raises(ResultFileError, match="no such file"):
        SweepResult.load(tmp_path / "missing.npz")
    with pytest.raises(ResultFileError, match="is a directory"):
        SweepResult.load(tmp_path)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file")
    with pytest.raises(ResultFileError, match="truncated, corrupted or not an \\.npz archive"):
        SweepResult.load(garbage)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(ResultFileError, match="not an \\.npz archive"):
        SweepResult.load(single)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, x=np.zeros(3))
    with pytest.raises(ResultFileError, match="is not a SweepResult file"):
        SweepResult.load(foreign)
    path = _small_result().save(tmp_path / "r.npz")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ResultFileError, match="truncated, corrupted"):
        SweepResult.load(path)
    assert issubclass(ResultFileError, op.InputValueError)


def _format_one(path: Path, result: SweepResult, labels: np.ndarray) -> None:
    """A file as SweepResult.save wrote it in format version 1 (no checksum, no kind)."""
    np.savez(
        path,
        format_version=np.array(1),
        baseline=result.baseline.numpy(),
        occluded=result.occluded.numpy(),
        labels=labels,
        region_ids=np.array(result.regions.ids, dtype=np.int64),
        region_masks=result.regions.masks.numpy(),
        fill_labels=np.array(result.fill_labels),
        image_shape=np.array(result.image_shape, dtype=np.int64),
        output=np.array(result.output),
        engine=np.array(result.engine),
        engine_note=np.array(result.engine_note),
    )


def test_format_one_loads_validated_with_a_warning(tmp_path: Path) -> None:
    result = _small_result()
    assert result.labels is not None
    path = tmp_path / "old.npz"
    _format_one(path, result, result.labels.numpy())
    with pytest.warns(OcclusionProbeWarning, match="format version 1 has no checksum"):
        loaded = SweepResult.load(path)
    assert torch.equal(loaded.occluded, result.occluded) and loaded.class_names is None
    _format_one(path, result, np.array([0, 9]))
    with (
        pytest.warns(OcclusionProbeWarning),
        pytest.raises(ResultFileError, match="field 'labels': expected class indices"),
    ):
        SweepResult.load(path)


def test_save_refuses_what_load_would_refuse(tmp_path: Path) -> None:
    result = _small_result()
    # Labels out of range are refused by the constructor already; an unnamed output
    # callable is a legal result that a file could not describe.
    with pytest.raises(op.InputValueError, match=r"labels: expected class indices in \[0, 2\]"):
        SweepResult(
            result.baseline,
            result.occluded,
            torch.tensor([0, 5]),
            result.regions,
            result.fill_labels,
        )
    bad = SweepResult(
        result.baseline,
        result.occluded,
        result.labels,
        result.regions,
        result.fill_labels,
        output="",
    )
    with pytest.raises(ResultFileError, match="field 'output': expected the name of the output"):
        bad.save(tmp_path / "bad.npz")
    assert not (tmp_path / "bad.npz").exists()


def test_computed_and_fidelity_fields_validated(tmp_path: Path) -> None:
    base = _small_result()
    result = SweepResult(
        **{**_fields(base), "computed": torch.tensor([[True, False, True, True]] * 2)},
        fidelity=op.Fidelity(0.95, 0.9, 0.01, 0.25, 2, 0.9, top=0.5),
    )
    path = result.save(tmp_path / "r.npz")
    loaded = SweepResult.load(path)
    assert loaded.fidelity == result.fidelity and loaded.computed is not None
    assert torch.equal(loaded.computed, result.computed)  # type: ignore[arg-type]
    bad = {
        "computed": np.ones((2, 3), dtype=bool),
        "fidelity": np.array([0.9, 0.9, 0.0, 1.5, 2.0, 0.9, 0.5]),  # tau must be in (0, 1]
    }
    for field, value in bad.items():
        copy = tmp_path / f"bad-{field}.npz"
        copy.write_bytes(path.read_bytes())
        _rewrite(copy, {field: value})
        with pytest.raises(ResultFileError, match=field):
            SweepResult.load(copy)
    bad_values = (
        np.array([0.9, 0.9, 0.0, 0.5, 2.0, 0.9, 1.5]),  # top must be in (0, 1]
        np.array([0.9, 0.9, 0.0, 0.5, 2.0, 0.9, 0.5, 1.5]),  # R^2 at most 1
        np.zeros(5),
        np.zeros(9),
    )
    for value in bad_values:
        copy = tmp_path / "bad-top.npz"
        copy.write_bytes(path.read_bytes())
        _rewrite(copy, {"fidelity": value})
        with pytest.raises(ResultFileError, match="field 'fidelity': expected"):
            SweepResult.load(copy)


def test_fidelity_of_files_written_before_drill_downs_had_one(tmp_path: Path) -> None:
    """Files from before 2026-12-03 store six numbers: a threshold's fidelity, no `top`."""
    result = SweepResult(
        **_fields(_small_result()), fidelity=op.Fidelity(0.95, 0.9, 0.01, 0.25, 2, 0.9)
    )
    path = result.save(tmp_path / "r.npz")
    _rewrite(path, {"fidelity": np.array([0.95, 0.9, 0.01, 0.25, 2.0, 0.9])})
    loaded = SweepResult.load(path)
    assert loaded.fidelity == result.fidelity and loaded.fidelity is not None
    assert loaded.fidelity.top is None
    # A drill-down without a threshold stores tau 1.0 (no cap) and its top.
    drill = SweepResult(
        **_fields(_small_result()), fidelity=op.Fidelity(0.9, 0.8, 0.1, 1.0, 1, 0.9, 0.25)
    )
    assert SweepResult.load(drill.save(tmp_path / "d.npz")).fidelity == drill.fidelity
    # Files from before the heat-map R^2 store seven numbers: read as NaN.
    measured = op.Fidelity(0.9, 0.8, 0.1, 1.0, 1, 0.9, 0.25, r2=0.95)
    path = SweepResult(**_fields(_small_result()), fidelity=measured).save(tmp_path / "c.npz")
    assert SweepResult.load(path).fidelity == measured
    _rewrite(path, {"fidelity": measured.as_array()[:7]})
    old = SweepResult.load(path).fidelity
    assert old is not None and math.isnan(old.r2) and old.top == 0.25


def _fields(result: SweepResult) -> dict[str, object]:
    return {
        "baseline": result.baseline,
        "occluded": result.occluded,
        "labels": result.labels,
        "regions": result.regions,
        "fill_labels": result.fill_labels,
        "class_names": result.class_names,
        "image_shape": result.image_shape,
    }


@pytest.mark.parametrize("path", [None, 123, b"r.npz", ""])
def test_save_and_load_of_no_path_name_the_argument(tmp_path: Path, path: object) -> None:
    result = _small_result()
    with pytest.raises(
        op.InputTypeError, match=r"path: SweepResult\.save expected a non-empty str"
    ):
        result.save(path)  # type: ignore[arg-type]
    with pytest.raises(op.InputTypeError, match=r"path: ClassMeanResult\.load expected"):
        ClassMeanResult.load(path)  # type: ignore[arg-type]


def test_save_into_a_missing_or_unusable_folder_names_the_users_path(tmp_path: Path) -> None:
    result = _small_result()
    target = tmp_path / "missing" / "r.npz"
    with pytest.raises(ResultFileError, match="cannot be written") as caught:
        result.save(target)
    assert repr(str(target)) in str(caught.value) and ".tmp-" not in str(caught.value)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ResultFileError, match=r"'.*file/r.npz': cannot be written"):
        result.save(tmp_path / "file" / "r.npz")
    with pytest.raises(ResultFileError, match="is a directory"):
        result.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders"
)
def test_save_into_a_read_only_folder_names_the_users_path(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(ResultFileError, match=r"'.*ro/r.npz': cannot be written"):
            _small_result().save(folder / "r.npz")
    finally:
        folder.chmod(0o700)


def test_a_json_file_is_refused_without_a_pickle_hint(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text('{"baseline": [[0.1, 0.9]]}')
    with pytest.raises(ResultFileError, match=r"not an \.npz archive") as caught:
        SweepResult.load(path)
    assert "pickle" not in str(caught.value)


def test_a_format_two_file_rewritten_as_format_one_is_refused(tmp_path: Path) -> None:
    path = _small_result().save(tmp_path / "r.npz")
    _rewrite(path, {"format_version": np.array(1)}, checksum=False)
    with pytest.raises(ResultFileError, match="claims format version 1 but holds fields"):
        SweepResult.load(path)
    _rewrite(path, {"checksum": None, "kind": None}, checksum=False)
    with pytest.raises(ResultFileError, match="'output_kind'"):
        SweepResult.load(path)


def test_a_compressed_member_fails_fast_and_small(tmp_path: Path) -> None:
    path = _small_result().save(tmp_path / "r.npz")
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    arrays["occluded"] = np.zeros((1 << 23, 1), dtype=np.float64)  # 64 MiB, packs to ~64 KiB
    with zipfile.ZipFile(path, "w") as archive:
        for key, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, array, allow_pickle=False)
            packing = zipfile.ZIP_DEFLATED if key == "occluded" else zipfile.ZIP_STORED
            archive.writestr(f"{key}.npy", buffer.getvalue(), compress_type=packing)
    del arrays
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(ResultFileError, match=r"'occluded\.npy' is compressed"):
            SweepResult.load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 22


def _stored(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def _result_over(regions: op.Regions) -> SweepResult:
    generator = torch.Generator().manual_seed(2)
    r = len(regions)
    return SweepResult(
        torch.rand(2, 3, generator=generator),
        torch.rand(2, r, 1, 3, generator=generator),
        torch.tensor([0, 2]),
        regions,
        ("0.0",),
    )


def test_windows_are_stored_by_their_geometry_and_other_masks_packed(tmp_path: Path) -> None:
    windows = op.sliding_windows(64, 64, 8, 2)  # 29 x 29 = 841 windows
    path = _result_over(windows).save(tmp_path / "w.npz")
    stored = _stored(path)
    assert "region_masks" not in stored and stored["region_window"].tolist() == [64, 64, 8, 8]
    assert path.stat().st_size < windows.masks.numel() // 50
    loaded = SweepResult.load(path)
    assert torch.equal(loaded.regions.masks, windows.masks) and loaded.regions.ids == windows.ids
    label_map = torch.randint(0, 7, (16, 16), generator=torch.Generator().manual_seed(0))
    parts = op.Regions.from_label_map(label_map)
    path = _result_over(parts).save(tmp_path / "p.npz")
    stored = _stored(path)
    assert stored["region_masks_packed"].dtype == np.uint8
    assert stored["region_masks_packed"].shape == (len(parts), 32)
    assert torch.equal(SweepResult.load(path).regions.masks, parts.masks)
    grid = op.grid(16, 16, 4, 4)  # a grid is windows too; a subset is not a full grid
    assert "region_window" in _stored(_result_over(grid).save(tmp_path / "g.npz"))
    subset = grid.select([1, 2, 6])
    path = _result_over(subset).save(tmp_path / "s.npz")
    assert "region_masks_packed" in _stored(path)
    assert torch.equal(SweepResult.load(path).regions.masks, subset.masks)


def test_format_two_files_with_bool_masks_still_load(tmp_path: Path) -> None:
    result = _small_result()
    path = result.save(tmp_path / "r.npz")
    _rewrite(
        path,
        {
            "format_version": np.array(2, dtype=np.int64),
            "region_window": None,
            "region_starts_0": None,
            "region_starts_1": None,
            "region_masks": result.regions.masks.numpy(),
        },
    )
    assert _same(SweepResult.load(path), result)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"region_window": np.array([10**6, 10**6, 1, 1])}, "expected masks of at most"),
        (
            {
                "region_window": np.array([10**5, 10**5, 1, 1]),
                "region_starts_0": np.arange(1000),
                "region_starts_1": np.arange(1000),
            },
            "field 'region_window': expected masks of at most",
        ),
        ({"region_window": np.array([4, 4, 5, 1])}, "expected a window inside the image"),
        ({"region_starts_0": np.array([2, 0])}, "field 'region_starts_0': expected increasing"),
        ({"region_starts_1": np.array([0, 3])}, "field 'region_starts_1': expected increasing"),
        (
            {"region_window": np.array([4, 4, 1])},
            "field 'region_window': expected the spatial size",
        ),
        ({"region_window": None}, "field 'region_mask_shape': expected the field to be present"),
    ],
)
def test_stored_region_geometry_is_validated_before_masks_are_made(
    tmp_path: Path, change: dict[str, np.ndarray | None], message: str
) -> None:
    path = _small_result().save(tmp_path / "r.npz")
    _rewrite(path, change)
    tracemalloc.start()
    try:
        with pytest.raises(ResultFileError, match=message):
            SweepResult.load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 24


def test_packed_masks_are_validated(tmp_path: Path) -> None:
    label_map = torch.arange(16).reshape(4, 4) % 3
    path = _result_over(op.Regions.from_label_map(label_map)).save(tmp_path / "p.npz")
    _rewrite(path, {"region_mask_shape": np.array([3, 8, 8])})
    with pytest.raises(ResultFileError, match=r"field 'region_masks_packed': expected a uint8"):
        SweepResult.load(path)
    _rewrite(path, {"region_mask_shape": np.array([3])})
    with pytest.raises(
        ResultFileError, match=r"field 'region_mask_shape': expected \(R, \*spatial\)"
    ):
        SweepResult.load(path)


def test_format_three_files_with_rows_and_columns_of_windows_still_load(tmp_path: Path) -> None:
    result = _result_over(op.sliding_windows(16, 16, 4, 4))
    path = result.save(tmp_path / "r.npz")
    stored = _stored(path)
    _rewrite(
        path,
        {
            "format_version": np.array(3, dtype=np.int64),
            "region_starts_0": None,
            "region_starts_1": None,
            "region_tops": stored["region_starts_0"],
            "region_lefts": stored["region_starts_1"],
        },
    )
    assert _same(SweepResult.load(path), result)
    _rewrite(path, {"region_tops": np.array([2, 0])})
    with pytest.raises(ResultFileError, match="field 'region_tops': expected increasing"):
        SweepResult.load(path)


@pytest.mark.parametrize(
    "regions",
    [
        op.sliding_windows((40,), window=8, stride=4),
        op.grid((6, 8, 10), (2, 2, 5)),
        op.sliding_windows((8, 8, 8), window=4, stride=2),
        op.Regions.from_label_map(torch.arange(60).reshape(3, 4, 5) % 7),
        op.Regions.from_label_map(torch.arange(30) % 4),
    ],
    ids=["1d-windows", "3d-grid", "3d-windows", "3d-label-map", "1d-label-map"],
)
def test_regions_of_any_rank_round_trip(tmp_path: Path, regions: op.Regions) -> None:
    result = _result_over(regions)
    path = result.save(tmp_path / "r.npz")
    stored = _stored(path)
    if regions.window_grid() is not None:
        rank = regions.ndim
        assert stored["region_window"].size == 2 * rank
        assert sorted(k for k in stored if k.startswith("region_starts_")) == [
            f"region_starts_{axis}" for axis in range(rank)
        ]
    else:
        assert stored["region_mask_shape"].tolist() == list(regions.masks.shape)
    loaded = SweepResult.load(path)
    assert torch.equal(loaded.regions.masks, regions.masks) and loaded.regions.ids == regions.ids
    assert _same(loaded, result)


def test_stored_sizes_whose_product_passes_int64_are_refused_before_allocating(
    tmp_path: Path,
) -> None:
    # volumes: (2**32)**3 pixels wrapped to 0 in an int64 product, so a 1 KB file asked for
    # TiB of masks; sizes are multiplied as Python ints and refused by the cap
    path = tmp_path / "r.npz"
    _result_over(op.sliding_windows((4, 6, 6), 2, 2)).save(path)
    for sizes in ([2**32] * 3, [2**21] * 3):
        _rewrite(path, {"region_window": np.array([*sizes, 2, 2, 2], dtype=np.int64)})
        tracemalloc.start()
        with pytest.raises(
            ResultFileError, match=r"field 'region_window': expected masks of at most"
        ):
            SweepResult.load(path)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 2**24
    packed = tmp_path / "p.npz"
    label_map = torch.arange(4 * 6 * 6).reshape(4, 6, 6) % 4
    _result_over(op.Regions.from_label_map(label_map)).save(packed)
    _rewrite(packed, {"region_mask_shape": np.array([4, 2**32, 2**32, 1], dtype=np.int64)})
    with pytest.raises(
        ResultFileError,
        match=r"field 'region_masks_packed': expected a uint8 array of shape \(4, 2305843009213693952\)",
    ):
        SweepResult.load(packed)
