"""Synthetic faces: shapes, reproducibility, speed, and that each class lives where it should."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch
from fer_paper.classes import CLASS_NAMES, FER2013_TRAIN_COUNTS
from fer_paper.synthetic import (
    EXPRESSIONS,
    GROUND_TRUTH,
    ExpressionSpec,
    class_counts,
    make_synthetic_faces,
    render_faces,
    sample_face_parameters,
)

ANGER, DISGUST, FEAR, HAPPINESS, SADNESS, SURPRISE, NEUTRAL = range(7)
EXPRESSION_FIELDS = tuple(f.name for f in dataclasses.fields(ExpressionSpec))


def area_of_pixels(weights: np.ndarray) -> np.ndarray:
    """Sum of `weights` (..., 48, 48) in each 12x12 area: (..., 16), area id - 1 = index."""
    return (
        weights.reshape(*weights.shape[:-2], 4, 12, 4, 12)
        .sum(axis=(-3, -1))
        .reshape(*weights.shape[:-2], 16)
    )


def test_shapes_range_and_class_frequencies() -> None:
    images, labels = make_synthetic_faces(700, seed=0)
    assert images.shape == (700, 1, 48, 48) and images.dtype == torch.float32
    assert labels.shape == (700,) and labels.dtype == torch.int64
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    counts = torch.bincount(labels, minlength=7)
    assert counts.tolist() == class_counts(700).tolist()
    # FER-2013's imbalance: Happiness most frequent, Disgust rare but present
    assert int(counts.argmax()) == HAPPINESS
    assert 1 <= int(counts[DISGUST]) < 0.03 * 700


def test_class_counts_follow_frequencies() -> None:
    counts = class_counts(28709)
    assert counts.sum() == 28709
    assert np.abs(counts - np.array(FER2013_TRAIN_COUNTS)).max() <= 1
    assert class_counts(7).tolist() == [1] * 7
    assert class_counts(20, [1, 0, 0, 0, 0, 0, 1]).tolist() == [8, 1, 1, 1, 1, 1, 7]
    with pytest.raises(ValueError, match="n: expected an int of at least 7"):
        class_counts(6)
    with pytest.raises(ValueError, match="frequencies"):
        class_counts(10, [1, 2, 3])


def test_reproducible_and_seed_dependent() -> None:
    first_images, first_labels = make_synthetic_faces(50, seed=11)
    again_images, again_labels = make_synthetic_faces(50, seed=11)
    other_images, _ = make_synthetic_faces(50, seed=12)
    assert torch.equal(first_images, again_images) and torch.equal(first_labels, again_labels)
    assert not torch.equal(first_images, other_images)


def test_rendering_is_fast() -> None:
    make_synthetic_faces(64, seed=0)  # warm-up
    started = time.process_time()
    make_synthetic_faces(3000, seed=1)
    cpu_seconds = time.process_time() - started
    # thousands of faces per second (CPU time, so a busy machine does not fail the test)
    assert 3000 / cpu_seconds > 1500, f"{3000 / cpu_seconds:.0f} faces per CPU second"


def test_expression_definitions_need_the_stated_parts() -> None:
    """Happiness differs from Neutral in the mouth only, Anger in the eyes and brows only."""
    anger, neutral, happiness = EXPRESSIONS[ANGER], EXPRESSIONS[NEUTRAL], EXPRESSIONS[HAPPINESS]
    mouth = ("mouth_curve", "mouth_open", "mouth_half_width")
    eyes = ("eye_half_height", "brow_raise", "brow_tilt")
    # Anger and Neutral share the mouth: only eyes and brows tell them apart
    assert all(getattr(anger, f) == getattr(neutral, f) for f in mouth)
    assert all(getattr(anger, f) != getattr(neutral, f) for f in eyes)
    # Happiness has Neutral's eyes and brows, and the only smile
    assert all(getattr(happiness, f) == getattr(neutral, f) for f in eyes)
    assert all(
        spec.mouth_curve[1] < happiness.mouth_curve[0]
        for index, spec in enumerate(EXPRESSIONS)
        if index != HAPPINESS
    )
    assert set(GROUND_TRUTH) == set(CLASS_NAMES)


def fields_unlike_neutral(label: int) -> list[str]:
    """The expression parameters whose range differs from Neutral's for class `label`."""
    return [
        f
        for f in EXPRESSION_FIELDS
        if getattr(EXPRESSIONS[label], f) != getattr(EXPRESSIONS[NEUTRAL], f)
    ]


@pytest.mark.parametrize(
    ("label", "areas"),
    [
        (HAPPINESS, (10, 11)),
        (ANGER, (6, 7)),
        (SURPRISE, (6, 7, 10, 11)),
        (SADNESS, (6, 7, 10, 11)),
        (FEAR, (6, 7, 10, 11)),
        (DISGUST, (6, 7, 10, 11)),
    ],
)
def test_expressions_change_only_their_areas(label: int, areas: tuple[int, ...]) -> None:
    """Turn Neutral faces into class `label` by changing only the parameters that differ from
    Neutral's: the changed pixels must lie in the stated areas of the 4x4 grid."""
    rng = np.random.default_rng(4)
    n = 300
    neutral = sample_face_parameters(np.full(n, NEUTRAL), rng, 0.0, 0.0)
    donor = sample_face_parameters(np.full(n, label), rng, 0.0, 0.0)
    neutral = dataclasses.replace(neutral, noise_std=np.zeros(n))
    swapped = dataclasses.replace(
        neutral, **{f: getattr(donor, f) for f in fields_unlike_neutral(label)}
    )
    base = render_faces(neutral, np.random.default_rng(0))
    changed = render_faces(swapped, np.random.default_rng(0))
    per_area = area_of_pixels(np.abs(changed - base).astype(np.float64)).sum(axis=0)
    inside = per_area[[a - 1 for a in areas]].sum() / per_area.sum()
    assert inside > 0.9, f"{CLASS_NAMES[label]}: {inside:.1%} of the change in areas {areas}"
    if label == HAPPINESS:
        # both halves of the smile matter: each mouth area holds a good share of the change
        assert min(per_area[9], per_area[10]) > 0.3 * per_area[[9, 10]].sum()
    if label == ANGER:
        assert fields_unlike_neutral(ANGER) == ["eye_half_height", "brow_raise", "brow_tilt"]
        assert min(per_area[5], per_area[6]) > 0.3 * per_area[[5, 6]].sum()


def test_occluders_and_frames_are_optional() -> None:
    clean, labels = make_synthetic_faces(
        40, seed=3, occluder_probability=0.0, frame_probability=0.0
    )
    busy, busy_labels = make_synthetic_faces(
        40, seed=3, occluder_probability=1.0, frame_probability=1.0
    )
    assert torch.equal(labels, busy_labels)

    # a frame leaves a uniform border: the top-left pixel equals the frame tone in every image,
    # so rows 0 of framed images are far more often constant than those of clean ones
    def constant_first_rows(images: torch.Tensor) -> int:
        first_row = images[:, 0, 0, :]
        return int((first_row.max(dim=1).values == first_row.min(dim=1).values).sum())

    assert constant_first_rows(busy) > constant_first_rows(clean)
