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
        (torch.zeros(2, 2, 3, 3, dtype=torch.int64), InputValueError, r"got shape \(2, 2, 3, 3\)"),
        (torch.tensor(3), InputValueError, r"got shape \(\)"),
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
    with pytest.raises(InputValueError, match="window: expected at most the size of the input"):
        sliding_windows(4, 4, 5, 1)
    with pytest.raises(InputValueError, match="window: expected an int or 2 ints"):
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
    assert found == WindowGrid(window=(4, 3), stride=(3, 2), starts=((0, 3, 6), (0, 2, 4, 6, 8)))
    assert found.shape == (3, 5)
    single = sliding_windows(4, 8, window=4, stride=2).window_grid()
    assert single is not None and single.tops == (0,) and single.stride == (4, 2)
    assert grid(12, 12, 3, 3).window_grid() == WindowGrid((4, 4), (4, 4), ((0, 4, 8), (0, 4, 8)))
    assert grid(10, 10, 3, 3).window_grid() is None  # cells of unequal sizes
    windows = sliding_windows(8, 8, window=4, stride=2)
    assert windows.select([2, 1, 3, 4, 5, 6, 7, 8, 9]).window_grid() is None  # not row-major
    assert windows.select([1, 2, 4]).window_grid() is None  # an incomplete grid
    assert windows.select([1, 3, 7, 9]).window_grid() == WindowGrid(
        (4, 4), (4, 4), ((0, 4), (0, 4))
    )
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


# -- any rank -------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=3), data=st.data())
def test_grid_of_any_rank_is_a_partition_of_boxes(shape: list[int], data: st.DataObject) -> None:
    cells = tuple(data.draw(st.integers(1, size)) for size in shape)
    regions = grid(tuple(shape), cells)
    assert regions.ndim == len(shape) and regions.spatial_shape == tuple(shape)
    assert len(regions) == int(np.prod(cells)) and regions.ids == tuple(range(1, len(regions) + 1))
    assert bool((regions.coverage == 1).all())
    for mask in regions.masks:
        # a box is the outer product of its extents along each axis
        box = torch.ones((), dtype=torch.bool)
        for axis in range(len(shape)):
            others = tuple(d for d in range(len(shape)) if d != axis)
            extent = mask.any(dim=others) if others else mask
            box = box.unsqueeze(-1) & extent
        assert torch.equal(mask, box)


def test_grid_numbers_cells_row_major_with_the_last_axis_fastest() -> None:
    volume = grid((4, 6, 8), (2, 3, 4))
    label_map = volume.label_map()
    # a plain loop over (d, h, w) cells, last axis fastest
    expected = torch.zeros(4, 6, 8, dtype=torch.int64)
    for d in range(4):
        for h in range(6):
            for w in range(8):
                expected[d, h, w] = (d // 2) * 12 + (h // 2) * 4 + (w // 2) + 1
    assert torch.equal(label_map, expected)
    assert torch.equal(grid((48, 48), 4).masks, grid(48, 48).masks)
    assert torch.equal(grid(shape=(10,), cells=5).label_map(), torch.arange(10) // 2 + 1)


def test_sliding_windows_of_any_rank_equal_a_loop_over_positions() -> None:
    shape, window, stride = (9, 7, 8), (4, 3, 5), (2, 2, 3)
    regions = sliding_windows(shape, window, stride)
    expected = []
    for d in range(0, 9 - 4 + 1, 2):
        for h in range(0, 7 - 3 + 1, 2):
            for w in range(0, 8 - 5 + 1, 3):
                mask = torch.zeros(shape, dtype=torch.bool)
                mask[d : d + 4, h : h + 3, w : w + 5] = True
                expected.append(mask)
    assert torch.equal(regions.masks, torch.stack(expected))
    found = regions.window_grid()
    assert found == op.WindowGrid(window, stride, ((0, 2, 4), (0, 2, 4), (0, 3)))
    assert found is not None and found.shape == (3, 3, 2) and found.ndim == 3
    signal = sliding_windows((20,), window=5, stride=5)
    assert torch.equal(signal.label_map(), torch.arange(20) // 5 + 1)
    assert torch.equal(sliding_windows((8, 8), 4, 2).masks, sliding_windows(8, 8, 4, 2).masks)


def test_windows_limited_to_a_box() -> None:
    shape = (16, 12)
    regions = sliding_windows(shape, window=4, stride=2, box=((4, 12), (0, 12)))
    # starts 4, 6, 8 along the first axis (a window ends at 12 at most), 0..8 along the second
    assert len(regions) == 3 * 5
    assert not regions.union()[:4].any() and not regions.union()[12:].any()
    assert regions.union()[4:12].all()
    same = sliding_windows(16, 12, 4, 2, box=((4, 12), (0, 12)))
    assert torch.equal(same.masks, regions.masks)
    assert len(sliding_windows((32, 32, 32), 8, 8, box=((8, 24), (0, 32), (0, 32)))) == 32


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: grid((8, 8), (2, 2, 2)), InputValueError, r"cells: expected an int or 2 ints"),
        (lambda: grid((8, 8, 8, 8), 2), InputValueError, r"shape: expected 1 to 3 spatial sizes"),
        (lambda: grid((), 2), InputValueError, r"shape: expected 1 to 3 spatial sizes"),
        (lambda: grid((8, 0), 2), InputValueError, r"shape\[1\]: expected a positive int, got 0"),
        (
            lambda: grid((8, 3), (2, 4)),
            InputValueError,
            r"cells\[1\]: expected at most shape\[1\]=3",
        ),
        (lambda: grid((8,), 2.0), InputTypeError, r"cells: expected a positive int"),
        (
            lambda: grid((8,), 2, rows=3),
            InputTypeError,
            r"grid\(shape, cells=4\): got an unexpected",
        ),
        (lambda: grid(8, 8, cells=2), InputTypeError, r"grid\(height, width, rows=4, cols=4\)"),
        (
            lambda: grid((8,), torch.tensor([2])),
            InputTypeError,
            r"cells: expected an int or a tuple",
        ),
        (
            lambda: sliding_windows((8, 8), (4, 4, 4), 2),
            InputValueError,
            r"window: expected an int or 2",
        ),
        (
            lambda: sliding_windows((8,), 9, 1),
            InputValueError,
            r"window: expected at most the size of the input \(8,\)",
        ),
        (
            lambda: sliding_windows((8,), 4, 5),
            InputValueError,
            r"stride: \(5,\) is larger than the window \(4,\)",
        ),
        (
            lambda: sliding_windows((8, 8), 2, 2, box=((0, 8),)),
            InputValueError,
            r"box: expected 2 \(start, stop\) pairs",
        ),
        (
            lambda: sliding_windows((8, 8), 2, 2, box=((0, 8), (4, 4))),
            InputValueError,
            r"box\[1\]: expected 0 <= start < stop <= 8",
        ),
        (
            lambda: sliding_windows((8, 8), 2, 2, box=((0, 8), (0, 9))),
            InputValueError,
            r"box\[1\]: expected 0 <= start < stop <= 8",
        ),
        (
            lambda: sliding_windows((8, 8), 2, 2, box=((0, 8), (0.0, 8))),
            InputTypeError,
            r"box\[1\]: expected int bounds",
        ),
        (
            lambda: sliding_windows((8, 8), 2, 2, box=((0, 8), 8)),
            InputValueError,
            r"box\[1\]: expected a \(start, stop\) pair",
        ),
        (
            lambda: sliding_windows((8, 8), 4, 2, box=((0, 3), (0, 8))),
            InputValueError,
            r"window: expected at most the size of the box \(3, 8\)",
        ),
        (
            lambda: grid((10**5, 10**5, 10**5), 2),
            InputValueError,
            r"shape: 8 regions of 100000x100000x100000 pixels need",
        ),
    ],
)
def test_any_rank_constructors_refuse_bad_arguments(
    call: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        call()  # type: ignore[operator]


def test_label_maps_of_any_rank() -> None:
    signal = Regions.from_label_map(np.array([3, 3, 1, 1, 1, 2]))
    assert signal.ndim == 1 and signal.ids == (1, 2, 3)
    assert torch.equal(signal.label_map(), torch.tensor([3, 3, 1, 1, 1, 2]))
    labels = torch.randint(0, 5, (4, 5, 6))
    volume = Regions.from_label_map(labels, ignore=0)
    assert volume.ndim == 3 and volume.spatial_shape == (4, 5, 6)
    for region_id, mask in zip(volume.ids, volume.masks, strict=True):
        assert torch.equal(mask, labels == region_id)
    # leading singletons are dropped down to 2 axes unless ndim says otherwise
    assert Regions.from_label_map(torch.zeros(1, 1, 4, 4, dtype=torch.long)).ndim == 2
    assert Regions.from_label_map(torch.zeros(1, 4, 4, dtype=torch.long)).ndim == 2
    assert Regions.from_label_map(torch.zeros(1, 4, 4, dtype=torch.long), ndim=3).ndim == 3
    assert Regions.from_label_map(torch.zeros(1, 7, dtype=torch.long), ndim=1).spatial_shape == (7,)
    with pytest.raises(
        InputValueError, match=r"label_map: expected 1 spatial axes .* got shape \(2, 7\)"
    ):
        Regions.from_label_map(torch.zeros(2, 7, dtype=torch.long), ndim=1)
    with pytest.raises(InputValueError, match=r"ndim: expected 1, 2 or 3 spatial axes, got 4"):
        Regions.from_label_map(torch.zeros(4, dtype=torch.long), ndim=4)
    with pytest.raises(InputTypeError, match=r"ndim: expected None or an int 1..3"):
        Regions.from_label_map(torch.zeros(4, dtype=torch.long), ndim=1.0)  # type: ignore[arg-type]


def test_readings_of_any_rank() -> None:
    windows = sliding_windows((6, 6, 6), window=4, stride=2)
    values = torch.rand(2, len(windows))
    expected = torch.zeros(2, 6, 6, 6)
    count = torch.zeros(6, 6, 6)
    for r, mask in enumerate(windows.masks):
        expected += values[:, r, None, None, None] * mask
        count += mask
    torch.testing.assert_close(windows.pixel_mean(values), expected / count.clamp(min=1))
    assert repr(windows) == "Regions(8 regions of 6x6x6, ids 1..8)"
    assert windows.union([1]).shape == (6, 6, 6) and not windows.union([]).any()
    with pytest.raises(
        InputValueError, match=r"Regions.height: defined for 2D regions, these have 3"
    ):
        _ = windows.height
    with pytest.raises(InputValueError, match=r"WindowGrid.tops: defined for 2D windows"):
        _ = windows.window_grid().tops  # type: ignore[union-attr]
    with pytest.raises(
        InputValueError, match=r"Regions.masks: expected a bool tensor of shape \(R, L\)"
    ):
        Regions(torch.ones(1, 2, 2, 2, 2, dtype=torch.bool), (1,))


def test_soften_at_any_rank_is_the_separable_bump_of_each_box() -> None:
    signal = sliding_windows((12,), window=5, stride=5).soften("gaussian", sigma=0.25)
    plane = sliding_windows((5, 5), window=5, stride=5).soften("gaussian", sigma=0.25)
    assert signal.weights is not None and plane.weights is not None
    bump = signal.weights[0, :5]
    assert float(bump[2]) == 1.0 and float(bump.min()) == 0.0
    volume = sliding_windows((5, 5, 5), window=5, stride=5).soften("gaussian", sigma=0.25)
    assert volume.weights is not None
    # the 3D bump before rescaling is the product of three 1D kernels: its centre slices
    # rescale to the 2D bump's shape, with the same zero at the corners
    assert torch.equal(volume.weights[0] > 0, volume.masks[0])
    assert float(volume.weights[0, 2, 2, 2]) == 1.0
    assert torch.argmax(volume.weights[0, 2]).item() == torch.argmax(plane.weights[0]).item()


def test_mask_sizes_are_checked_before_allocating_and_without_int64_wrap() -> None:
    # 2**17 windows of a 2**17-sample signal: 16 GiB, refused before the per-axis masks exist
    with pytest.raises(
        InputValueError, match=r"^shape: 131072 regions of 131072 pixels need 16 GiB"
    ):
        sliding_windows((2**17,), 1, 1)
    # counts whose product passes 2**63 (np.prod wraps them to 0 or negative)
    with pytest.raises(InputValueError, match=r"^shape: 9223372036854775808 regions"):
        grid((2**21,) * 3, 2**21)
    with pytest.raises(InputValueError, match=r"^shape: \d+ regions of 1099511627776x"):
        grid((2**40,) * 3, 2**40)
    with pytest.raises(InputValueError, match=r"^shape: 73786976294838206464 regions"):
        sliding_windows((2**22,) * 3, 1, 1)
    # just under the cap still builds, and equals a loop
    windows = sliding_windows((12,), 3, 3, box=((3, 12),))
    expected = torch.zeros(3, 12, dtype=torch.bool)
    for row, start in enumerate((3, 6, 9)):
        expected[row, start : start + 3] = True
    assert torch.equal(windows.masks, expected)


def test_label_maps_torch_or_numpy_cannot_take_as_they_are() -> None:
    # numpy arrays torch.from_numpy refuses are read with the same values
    reversed_map = np.array([2, 1, 0, 0])[::-1]
    assert Regions.from_label_map(reversed_map).ids == (0, 1, 2)
    assert torch.equal(Regions.from_label_map(reversed_map).label_map(), torch.tensor([0, 0, 1, 2]))
    big_endian = np.array([[0, 3], [3, 0]], dtype=">i4")
    assert torch.equal(
        Regions.from_label_map(big_endian).masks,
        Regions.from_label_map(torch.tensor([[0, 3], [3, 0]])).masks,
    )
    with pytest.raises(InputTypeError, match=r"^label_map: got a numpy masked array"):
        Regions.from_label_map(np.ma.masked_array([0, 1, 2], mask=[0, 0, 1]))
    with pytest.raises(InputTypeError, match=r"^label_map: expected a numpy array of a dtype"):
        Regions.from_label_map(np.array([0, 1], dtype=object))
    with pytest.raises(InputValueError, match=r"^label_map: got a tensor on the meta device"):
        Regions.from_label_map(torch.zeros(4, 4, dtype=torch.long, device="meta"))
    with pytest.raises(InputTypeError, match=r"^label_map: expected a dense \(strided\) tensor"):
        Regions.from_label_map(torch.zeros(4, 4, dtype=torch.long).to_sparse())
    with pytest.raises(InputValueError, match=r"^label_map: expected at least one pixel"):
        Regions.from_label_map(torch.zeros(0, 4, dtype=torch.long))
    # uint64 labels above int64 would wrap to negative ids
    for huge in (
        np.array([0, 2**63 + 5], dtype=np.uint64),
        torch.tensor([0, 2**63 + 5], dtype=torch.uint64),
    ):
        with pytest.raises(
            InputValueError,
            match=r"^label_map: expected labels in int64 range.*9223372036854775813",
        ):
            Regions.from_label_map(huge)
    fits = Regions.from_label_map(np.array([7, 2**63 - 1, 7], dtype=np.uint64))
    assert fits.ids == (7, 2**63 - 1)
    assert torch.equal(fits.masks[1], torch.tensor([False, True, False]))
    with pytest.raises(InputValueError, match=r"^ignore: expected a label in int64 range"):
        Regions.from_label_map(torch.tensor([0, 1]), ignore=2**70)


def test_regions_refuse_masks_without_values_and_ids_outside_int64() -> None:
    with pytest.raises(InputValueError, match=r"^Regions.masks: got a tensor on the meta device"):
        Regions(torch.ones(2, 4, dtype=torch.bool, device="meta"), (1, 2))
    with pytest.raises(
        InputTypeError, match=r"^Regions.masks: expected a dense \(strided\) tensor"
    ):
        Regions(torch.ones(2, 4, dtype=torch.bool).to_sparse(), (1, 2))
    with pytest.raises(
        InputValueError, match=r"^Regions.ids: expected ids in int64 range.*18446744073709551616"
    ):
        Regions(torch.ones(1, 4, dtype=torch.bool), (2**64,))
    edge = Regions(torch.ones(2, 4, dtype=torch.bool), (-(2**63), 2**63 - 1))
    assert edge.ids == (-(2**63), 2**63 - 1)
    cells = grid((4, 6, 6), (2, 2, 3))
    with pytest.raises(InputValueError, match=r"^device: got the meta device"):
        cells.to("meta")
    with pytest.raises(InputTypeError, match=r"^device: expected a torch.device or a str"):
        cells.to(123)  # type: ignore[arg-type]
    with pytest.raises(InputValueError, match=r"^device: expected a device this machine has"):
        cells.to("banana")
    moved = cells.to(torch.device("cpu"))
    assert torch.equal(moved.masks, cells.masks) and moved.ids == cells.ids


def test_positions_name_the_argument() -> None:
    cells = grid((16,), 4)
    with pytest.raises(InputTypeError, match=r"^keep: expected integer region ids, got \[1.0\]"):
        cells.positions([1.0], "keep")
    with pytest.raises(
        InputValueError, match=r"^keep: unknown region ids \[5\]; valid ids are 1..4"
    ):
        cells.positions([5], "keep")
    with pytest.raises(InputTypeError, match=r"^ids: expected integer region ids, got \[True\]"):
        cells.positions([True])


def test_a_shape_held_in_an_array_is_refused_as_the_shape() -> None:
    for make, shape in ((grid, np.array([4, 6, 6])), (sliding_windows, torch.tensor([16]))):
        with pytest.raises(
            InputTypeError,
            match=rf"^shape: {make.__name__} expected a tuple of 1 to 3 ints, got .*pass tuple\(shape.tolist\(\)\)",
        ):
            make(shape, 4, 2) if make is sliding_windows else make(shape, 2)
    # the same sizes as a tuple are the any-rank form
    assert grid(tuple(np.array([4, 6, 6]).tolist()), 2).spatial_shape == (4, 6, 6)
