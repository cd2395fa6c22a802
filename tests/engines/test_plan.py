"""The planner's cost estimates (FLOPs and memory traffic against hand counts), and box
planning with Krypton's projective-field threshold (approximate mode)."""

from __future__ import annotations

import re
import weakref

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_models import DenseNet, MobileNetV2, ResNet18
from torch import nn

import occlusion_probe as op
from occlusion_probe.engines.graph import read_graph
from occlusion_probe.engines.incremental import MIN_BOUND, IncrementalEngine
from occlusion_probe.engines.plan import (
    FULL,
    GroupPlan,
    cap_box,
    dense_traffic,
    greedy_merge,
    op_name,
    peak_elements,
    plan_groups,
    plan_region,
)
from occlusion_probe.sweep import choose_engine


def _chain_engine() -> IncrementalEngine:
    """conv 3->4 (3x3, padding 1), ReLU, flatten, linear 256->2 on 3x8x8, one 2x2 region
    in the top-left corner."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 2)
    ).eval()
    masks = torch.zeros(1, 8, 8, dtype=torch.bool)
    masks[0, :2, :2] = True
    engine = IncrementalEngine.prepare(model, (3, 8, 8), masks, torch.float32, torch.device("cpu"))
    assert isinstance(engine, IncrementalEngine)
    return engine


def test_dense_traffic_counts_every_read_and_write_once() -> None:
    engine = _chain_engine()
    conv = 3 * 64 + 4 * 64  # reads the image, writes its map
    relu = 4 * 64 + 4 * 64
    linear = 256 + 2  # the flatten is a view: nothing moves
    assert dense_traffic(engine.graph) == conv + relu + linear


def test_group_traffic_counts_the_engines_copies() -> None:
    engine = _chain_engine()
    (group,) = engine.groups
    # The 2x2 input box grows to 3x3 at the conv's output, which reads the 5x5 window
    # (-1..4) of the image: gathered from the cache (read + write 3 x 25), the 2x2 patch
    # written in (read + write 3 x 4), read by the conv (3 x 25), its 4 x 9 box written.
    conv = 2 * 3 * 25 + 2 * 3 * 4 + 3 * 25 + 4 * 9
    relu = 4 * 9 + 4 * 9  # on the conv's own box: no gather
    # The flatten needs the whole map: a copy of the cached ReLU map (read + write 256)
    # with the patch written in (read + write 4 x 9); then the linear reads 256, writes 2.
    flatten = 2 * 256 + 2 * 4 * 9
    linear = 256 + 2
    assert group.traffic == conv + relu + flatten + linear
    assert engine.traffic_bound == pytest.approx(dense_traffic(engine.graph) / group.traffic)
    assert engine.bound == min(engine.flop_bound, engine.traffic_bound)


def test_traffic_bound_sees_what_flops_miss_on_concatenations() -> None:
    # A DenseNet block stack concatenates every earlier map at every layer: the plan saves
    # conv FLOPs but runs batch norms and ReLUs over ever wider maps, so its traffic saves
    # far less. With 32x32 patches on 64x64 the boxes soon cover most of the map.
    regions = op.grid(64, 64, rows=2, cols=2)
    engine = IncrementalEngine.prepare(
        DenseNet().eval(), (3, 64, 64), regions.masks, torch.float32, torch.device("cpu")
    )
    assert isinstance(engine, IncrementalEngine)
    assert engine.flop_bound > MIN_BOUND > engine.traffic_bound


def test_a_window_that_is_the_patch_is_read_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two 1x1 convs on 3x8x8, one 2x2 region: each reads its input's changed box as it is.
    # Cutting that window from the cache and writing the patch in would move, per conv,
    # 2 x channels x 4 elements for the cut and as many for the write: 2*3*4*2 + 2*8*4*2.
    from occlusion_probe.engines import plan

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    graph = read_graph(model, torch.zeros(2, 3, 8, 8))
    assert not isinstance(graph, str)
    box = (2, 4, 2, 4)
    region = plan_region(graph, box)
    [group] = plan_groups(graph, [region], [box], 0.0)
    convs = [node for node in graph.nodes if op_name(node) == "conv2d"]
    assert all(
        plan.reads_patch_as_is(n, group.windows[n][0], group.states[n.args[0]]) for n in convs
    )
    monkeypatch.setattr(plan, "READS_PATCH_AS_IS", frozenset())
    [copied] = plan_groups(graph, [region], [box], 0.0)
    assert copied.traffic - group.traffic == 2 * 3 * 4 * 2 + 2 * 8 * 4 * 2
    assert not plan.reads_patch_as_is(convs[0], group.windows[convs[0]][0], None)


def test_auto_runs_dense_below_either_bound() -> None:
    masks = op.grid(64, 64, rows=2, cols=2).masks
    engine, note = choose_engine(
        "auto", DenseNet(), (3, 64, 64), False, masks, 10**6, torch.float32
    )
    assert engine is None
    assert "memory-traffic bound" in note and f"below {MIN_BOUND}x" in note
    forced, forced_note = choose_engine(
        "incremental", DenseNet(), (3, 64, 64), False, masks, 10**6, torch.float32
    )
    assert forced is not None and "memory-traffic bound" in forced_note


def test_auto_keeps_the_engine_where_both_bounds_are_high() -> None:
    masks = op.grid(64, 64, rows=8, cols=8).masks
    engine, note = choose_engine(
        "auto", MobileNetV2(), (3, 64, 64), False, masks, 10**6, torch.float32
    )
    assert engine is not None and engine.bound >= MIN_BOUND, note


# -- projective-field threshold ------------------------------------------------------------


def test_cap_box_centres_and_clips() -> None:
    assert cap_box((2, 10, 0, 3), (20, 20), 0.25) == (3, 8, 0, 3)  # 8 rows -> 5, centred
    assert cap_box((0, 12, 0, 12), (20, 20), 0.25) == (3, 8, 3, 8)
    assert cap_box((14, 20, 0, 20), (20, 20), 0.2) == (15, 19, 8, 12)
    assert cap_box((18, 20, 18, 20), (20, 20), 0.05) == (18, 19, 18, 19)  # at least 1
    assert cap_box((4, 6, 4, 6), (20, 20), 0.5) == (4, 6, 4, 6)  # small boxes are kept


def test_plan_region_caps_every_node_but_the_input() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 5, padding=2), nn.ReLU(), nn.Conv2d(2, 2, 5, padding=2), nn.Flatten()
    ).eval()
    graph = read_graph(model, torch.zeros(2, 1, 20, 20))
    assert not isinstance(graph, str)
    box = (8, 12, 8, 12)
    exact = plan_region(graph, box)
    capped = plan_region(graph, box, threshold=0.3)
    convs = [n for n in graph.nodes if n.op == "call_function" and op_name(n) == "conv2d"]
    assert exact.state(graph.image) == capped.state(graph.image) == box
    assert exact.state(convs[0]) == (6, 14, 6, 14) and exact.state(convs[1]) == (4, 16, 4, 16)
    assert capped.state(convs[0]) == (7, 13, 7, 13)  # 8 -> ceil(0.3 * 20) = 6, centred
    assert capped.state(convs[1]) == (7, 13, 7, 13)  # grown to (5, 15) then capped again
    assert capped.flops < exact.flops
    assert any(state == FULL for state in capped.states.values())  # the flatten
    assert plan_region(graph, box, threshold=0.9).states == exact.states


def test_peak_elements_is_the_largest_patch_or_window() -> None:
    engine = _chain_engine()
    (group,) = engine.groups
    # The conv reads a 5x5 window of 3 channels (75) and writes a 3x3 box of 4 (36).
    assert peak_elements(engine.graph, group) == 3 * 25


def test_calls_of_many_regions_stay_under_the_byte_cap() -> None:
    # A 64x64 window grows to 66x66 at the 64-channel conv: 64 * 66 * 66 * 4 bytes per
    # occluded image; 32 MiB hold 30 of them, fewer than the 4 x 64 a call would get.
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    ).eval()
    regions = op.sliding_windows(128, 128, window=64, stride=16)
    engine = IncrementalEngine.prepare(
        model, (3, 128, 128), regions.masks, torch.float32, torch.device("cpu")
    )
    assert isinstance(engine, IncrementalEngine)
    assert max(peak_elements(engine.graph, group) for group in engine.groups) == 64 * 66 * 66
    most = (32 * 2**20) // (4 * 64 * 66 * 66)
    result = op.sweep(
        model,
        torch.rand(1, 3, 128, 128),
        regions,
        [0.0],
        engine="incremental",
        batch_size=64,
        progress=False,
    )
    chosen = re.search(r"batches of (\d+) regions", result.engine_note)
    assert chosen is not None and int(chosen.group(1)) == most == 30


# -- grouping ------------------------------------------------------------------------------


def _grouped(call_flops: float) -> tuple[IncrementalEngine, list[GroupPlan]]:
    """ResNet-18 (width 4) on 64x64 with 8x8 windows at stride 4: edge and corner windows
    have clipped boxes, and windows at odd and even positions meet the stride-2 and
    stride-32 maps differently, so the regions fall in many shape classes."""
    regions = op.sliding_windows(64, 64, window=8, stride=4)
    engine = IncrementalEngine.prepare(
        ResNet18(width=4).eval(), (3, 64, 64), regions.masks, torch.float32, torch.device("cpu")
    )
    assert isinstance(engine, IncrementalEngine)
    return engine, plan_groups(engine.graph, engine.plans, engine.boxes, call_flops)


def _cost(groups: list[GroupPlan], call_flops: float) -> float:
    return sum(len(g.members) * g.flops + len(g.states) * call_flops for g in groups)


def test_free_calls_group_only_equal_shapes_so_no_box_grows() -> None:
    engine, groups = _grouped(0.0)
    assert len(groups) > 1
    assert sorted(m for g in groups for m in g.members) == [
        r for r, box in enumerate(engine.boxes) if box is not None
    ]
    for group in groups:
        for member in group.members:
            assert engine.plans[member].flops == group.flops


def test_merging_lowers_the_cost_and_calls_that_dominate_merge_every_class() -> None:
    _, exact = _grouped(0.0)
    for call_flops in (1e4, 1e6):
        _, merged = _grouped(call_flops)
        assert len(merged) <= len(exact)
        assert _cost(merged, call_flops) <= _cost(exact, call_flops)
    _, one = _grouped(1e30)
    assert len(one) == 1
    # Growing boxes recomputes unchanged values: more FLOPs, never fewer.
    assert one[0].flops * len(one[0].members) >= sum(g.flops * len(g.members) for g in exact)


@pytest.mark.parametrize("call_seconds", [0.0, 1e3], ids=["shape-classes", "one-group"])
def test_every_grouping_equals_dense(monkeypatch: pytest.MonkeyPatch, call_seconds: float) -> None:
    from occlusion_probe.engines import incremental

    monkeypatch.setattr(incremental, "CALL_SECONDS", call_seconds)
    monkeypatch.setattr(incremental, "_PREPARED", weakref.WeakKeyDictionary())
    model = ResNet18(width=4).eval()
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    regions = op.sliding_windows(64, 64, window=8, stride=4)
    dense = op.sweep(model, images, regions, engine="dense", progress=False)
    fast = op.sweep(model, images, regions, engine="incremental", progress=False)
    groups = re.search(r"in (\d+) group\(s\)", fast.engine_note)
    assert groups is not None
    assert (int(groups.group(1)) == 1) == (call_seconds > 0)
    torch.testing.assert_close(fast.occluded, dense.occluded, rtol=0, atol=1e-5)


def _naive_greedy_merge(
    sides: np.ndarray, sizes: list[int], weight: np.ndarray, calls: float
) -> list[list[int]]:
    """The agglomeration by its definition: recompute every pair's saving at each step and
    merge the first best pair while it saves something (a merged box has the larger side
    along every axis)."""
    groups = [[i] for i in range(len(sizes))]
    sides_ = [s.astype(float) for s in sides]  # (M, d) per class
    size = [float(s) for s in sizes]

    def cost(box_sides: np.ndarray, s: float) -> float:
        volume = np.ones(box_sides.shape[0])
        for axis in range(box_sides.shape[1]):
            volume = volume * box_sides[:, axis]
        return float(s * (volume @ weight))

    alive = list(range(len(sizes)))
    while len(alive) > 1:
        best, pair = -np.inf, None
        for i in alive:
            for j in alive:
                if i == j:
                    continue
                merged = cost(np.maximum(sides_[i], sides_[j]), size[i] + size[j])
                saved = calls - (merged - cost(sides_[i], size[i]) - cost(sides_[j], size[j]))
                if saved > best:
                    best, pair = saved, (i, j)
        if pair is None or best <= 0:
            break
        i, j = pair
        groups[i].extend(groups[j])
        groups[j] = []
        sides_[i] = np.maximum(sides_[i], sides_[j])
        size[i] += size[j]
        alive.remove(j)
    return [g for g in groups if g]


@settings(max_examples=60, deadline=None)
@given(
    st.tuples(st.integers(1, 9), st.integers(1, 3)).flatmap(
        lambda nd: st.tuples(
            st.lists(
                st.lists(
                    st.lists(st.integers(1, 4), min_size=nd[1], max_size=nd[1]),
                    min_size=2,
                    max_size=2,
                ),
                min_size=nd[0],
                max_size=nd[0],
            ),
            st.lists(st.integers(1, 5), min_size=nd[0], max_size=nd[0]),
        )
    ),
    st.sampled_from([0.0, 3.0, 40.0, 1e6]),
)
def test_greedy_merge_equals_the_naive_agglomeration(
    classes: tuple[list[list[list[int]]], list[int]], calls: float
) -> None:
    # Classes of boxes at two nodes, with 1, 2 or 3 spatial axes.
    sides, sizes = np.array(classes[0]), classes[1]
    weight = np.array([1.0, 2.0])
    assert greedy_merge(sides, sizes, weight, calls) == _naive_greedy_merge(
        sides, sizes, weight, calls
    )
