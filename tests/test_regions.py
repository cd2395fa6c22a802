from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import occlusion_probe as op
from occlusion_probe import InputTypeError, InputValueError, Regions, grid, sliding_windows


def test_paper_grid_numbering_is_row_major() -> None:
    regions = grid(48, 48)
    assert regions.ids == tuple(range(1, 17))
    assert regions.masks.shape == (16, 48, 48) and regions.masks.dtype == torch.bool
    # area 6 = second row, second column; area 11 = third row, third column
    assert regions.masks[5, 12:24, 12:24].all() and regions.masks[5].sum() == 144
    assert regions.masks[10, 24:36, 24:36].all() and regions.masks[10].sum() == 144
    assert regions.union([10, 11])[24:36, 12:36].all()
    assert int(regions.union([10, 11]).sum()) == 288


@pytest.mark.parametrize(
    ("h", "w", "rows", "cols"), [(50, 47, 4, 4), (7, 5, 3, 2), (1, 1, 1, 1), (9, 9, 9, 9)]
)
def test_uneven_grid_is_partition(h: int, w: int, rows: int, cols: int) -> None:
    regions = grid(h, w, rows, cols)
    assert len(regions) == rows * cols
    assert regions.is_partition
    sizes = regions.masks.flatten(1).sum(1)
    assert int(sizes.max() - sizes.min()) <= max(h // rows + 1, w // cols + 1) * 2


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 40), w=st.integers(1, 40), data=st.data())
def test_grid_covers_each_pixel_once(h: int, w: int, data: st.DataObject) -> None:
    rows = data.draw(st.integers(1, h))
    cols = data.draw(st.integers(1, w))
    regions = grid(h, w, rows, cols)
    assert bool((regions.coverage == 1).all())
    # cells are rectangles: each is the outer product of a row band and a column band
    for mask in regions.masks:
        r_any, c_any = mask.any(1), mask.any(0)
        assert torch.equal(mask, r_any[:, None] & c_any[None, :])


def test_select_and_union() -> None:
    regions = grid(8, 8, 2, 2)
    sub = regions.select([4, 1])
    assert sub.ids == (4, 1)
    assert torch.equal(sub.masks[0], regions.masks[3])
    assert torch.equal(regions.union(), torch.ones(8, 8, dtype=torch.bool))
    assert not regions.union([]).any()


def test_unknown_ids_name_the_valid_ones() -> None:
    with pytest.raises(InputValueError, match=r"unknown region ids \[17\]; valid ids are 1\.\.16"):
        grid(48, 48).select([17])
    with pytest.raises(InputTypeError, match="integer region ids"):
        grid(48, 48).select(["a"])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"rows": 0}, InputValueError, "rows: expected a positive int, got 0"),
        ({"cols": 0}, InputValueError, "cols: expected a positive int, got 0"),
        ({"rows": 49}, InputValueError, "rows: expected at most height=48 rows, got 49"),
        ({"rows": 2.0}, InputTypeError, "rows: expected a positive int"),
        ({"rows": True}, InputTypeError, "rows: expected a positive int"),
    ],
)
def test_grid_rejects_bad_arguments(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        grid(48, 48, **kwargs)  # type: ignore[arg-type]


def test_errors_are_value_and_type_errors() -> None:
    assert issubclass(InputValueError, ValueError) and issubclass(InputTypeError, TypeError)


def test_from_label_map_accepts_captum_feature_mask() -> None:
    label_map = torch.tensor([[0, 0, 1], [2, 2, 1]])
    regions = Regions.from_label_map(label_map[None, None])
    assert regions.ids == (0, 1, 2)
    assert torch.equal(regions.label_map(), label_map)
    assert Regions.from_label_map(label_map.numpy()).ids == (0, 1, 2)
    assert Regions.from_label_map(label_map, ignore=0).ids == (1, 2)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 5), min_size=4, max_size=4), min_size=3, max_size=3))
def test_label_map_round_trip(rows: list[list[int]]) -> None:
    label_map = torch.tensor(rows)
    regions = Regions.from_label_map(label_map)
    assert regions.is_partition
    assert torch.equal(regions.label_map(), label_map)
    assert set(regions.ids) == set(np.unique(np.array(rows)).tolist())


@pytest.mark.parametrize(
    ("label_map", "error", "message"),
    [
        (torch.zeros(3, 3), InputTypeError, "expected an integer dtype, got torch.float32"),
        (torch.zeros(3, 3, dtype=torch.bool), InputTypeError, "expected an integer dtype"),
        (torch.zeros(2, 3, 3, dtype=torch.int64), InputValueError, r"got shape \(2, 3, 3\)"),
        (torch.zeros(3, dtype=torch.int64), InputValueError, r"got shape \(3,\)"),
        ([[0, 1]], InputTypeError, "expected an integer Tensor or ndarray"),
    ],
)
def test_from_label_map_errors(label_map: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        Regions.from_label_map(label_map)  # type: ignore[arg-type]


def test_regions_validation() -> None:
    with pytest.raises(InputValueError, match="regions \\[2\\] are empty"):
        Regions(torch.tensor([[[True]], [[False]]]), (1, 2))
    with pytest.raises(InputValueError, match="distinct ids"):
        Regions(torch.ones(2, 1, 1, dtype=torch.bool), (1, 1))
    with pytest.raises(InputValueError, match="expected 2 ids"):
        Regions(torch.ones(2, 1, 1, dtype=torch.bool), (1,))
    with pytest.raises(InputValueError, match="bool tensor of shape"):
        Regions(torch.ones(2, 1, 1), (1, 2))
    with pytest.raises(InputValueError, match="label_map: the regions must cover"):
        sliding_windows(4, 4, 2, 1).label_map()


def test_sliding_windows_overlap_like_captum_occlusion() -> None:
    regions = sliding_windows(8, 6, window=(4, 2), stride=2)
    assert len(regions) == 3 * 3
    assert regions.masks[0, :4, :2].all() and regions.masks[0].sum() == 8
    assert int(regions.coverage.max()) == 2
    assert not regions.is_partition
    uncovered = sliding_windows(5, 5, window=2, stride=2).coverage
    assert int(uncovered[4].sum()) == 0  # the last row lies past the last window
    with pytest.raises(InputValueError, match="window: expected at most the image size"):
        sliding_windows(4, 4, 5, 1)
    with pytest.raises(InputValueError, match="window: expected an int or a pair"):
        sliding_windows(4, 4, (1, 2, 3), 1)  # type: ignore[arg-type]


def test_repr_and_to() -> None:
    regions = grid(4, 4, 2, 2)
    assert "4 partition of 4x4" in repr(regions)
    assert regions.to("cpu").ids == regions.ids
    assert op.grid is grid


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        ((1.5, 2.7), r"Regions.ids: expected integer ids .* got \[1.5, 2.7\]"),
        ((True, False), r"Regions.ids: expected integer ids .* got \[True, False\]"),
        (("a", "b"), r"Regions.ids: expected integer ids .* got \['a', 'b'\]"),
        ("ab", "Regions.ids: expected a sequence of int ids, got str 'ab'"),
    ],
)
def test_region_ids_are_never_coerced(ids: object, message: str) -> None:
    with pytest.raises(InputTypeError, match=message):
        Regions(torch.ones(2, 1, 1, dtype=torch.bool), ids)  # type: ignore[arg-type]
    assert Regions(torch.ones(2, 1, 1, dtype=torch.bool), (np.int64(4), 7)).ids == (4, 7)


def test_from_label_map_ignore_must_be_an_integer() -> None:
    label_map = torch.tensor([[0, 1], [2, 2]])
    for ignore in (0.5, True, "0"):
        with pytest.raises(InputTypeError, match="ignore: expected None or an integer label"):
            Regions.from_label_map(label_map, ignore=ignore)  # type: ignore[arg-type]
    assert Regions.from_label_map(label_map, ignore=np.int64(2)).ids == (0, 1)


def test_window_grid_reads_sliding_windows_back() -> None:
    from occlusion_probe import WindowGrid

    found = sliding_windows(10, 12, window=(4, 3), stride=(3, 2)).window_grid()
    assert found == WindowGrid(window=(4, 3), stride=(3, 2), tops=(0, 3, 6), lefts=(0, 2, 4, 6, 8))
    assert found.shape == (3, 5)
    single = sliding_windows(4, 8, window=4, stride=2).window_grid()
    assert single is not None and single.tops == (0,) and single.stride == (4, 2)
    assert grid(12, 12, 3, 3).window_grid() == WindowGrid((4, 4), (4, 4), (0, 4, 8), (0, 4, 8))
    assert grid(10, 10, 3, 3).window_grid() is None  # cells of unequal sizes
    windows = sliding_windows(8, 8, window=4, stride=2)
    assert windows.select([2, 1, 3, 4, 5, 6, 7, 8, 9]).window_grid() is None  # not row-major
    assert windows.select([1, 2, 4]).window_grid() is None  # an incomplete grid
    assert windows.select([1, 3, 7, 9]).window_grid() == WindowGrid((4, 4), (4, 4), (0, 4), (0, 4))
    holey = windows.masks.clone()
    holey[0, 1, 1] = False
    assert Regions(holey, windows.ids).window_grid() is None  # not a filled rectangle


def test_pixel_mean_averages_covering_regions() -> None:
    windows = sliding_windows(5, 5, window=2, stride=2)  # the last row and column are bare
    values = torch.arange(1.0, 5.0, dtype=torch.float64)[None].repeat(3, 1)
    pixels = windows.pixel_mean(values)
    assert pixels.shape == (3, 5, 5) and pixels.dtype == torch.float64
    assert pixels[0, 0, 0] == 1 and pixels[0, 3, 3] == 4 and pixels[0, 4, 4] == 0
    overlapping = sliding_windows(3, 3, window=2, stride=1)
    assert float(overlapping.pixel_mean(torch.tensor([1.0, 2.0, 3.0, 4.0]))[1, 1]) == 2.5
    with pytest.raises(InputValueError, match=r"values: expected last dim R = 4"):
        windows.pixel_mean(torch.zeros(3))
    with pytest.raises(InputTypeError, match="values: expected a floating Tensor"):
        windows.pixel_mean(torch.zeros(4, dtype=torch.int64))
