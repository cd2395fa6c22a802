"""The planner's cost estimates: FLOPs and memory traffic against hand counts."""

from __future__ import annotations

import pytest
import torch
from reference_models import DenseNet, MobileNetV2
from torch import nn

import occlusion_probe as op
from occlusion_probe.engines.incremental import MIN_BOUND, IncrementalEngine
from occlusion_probe.engines.plan import dense_traffic
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
    # conv FLOPs but copies windows of ever wider maps, so its traffic saves far less.
    regions = op.grid(64, 64, rows=4, cols=4)
    engine = IncrementalEngine.prepare(
        DenseNet().eval(), (3, 64, 64), regions.masks, torch.float32, torch.device("cpu")
    )
    assert isinstance(engine, IncrementalEngine)
    assert engine.flop_bound > MIN_BOUND > engine.traffic_bound


def test_auto_runs_dense_below_either_bound() -> None:
    masks = op.grid(64, 64, rows=4, cols=4).masks
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
