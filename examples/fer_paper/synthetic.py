"""Procedural 48x48 grayscale faces with a known answer to "which part makes the expression".

The built-in default data set of the reproduction. Every face is drawn from a random identity
(face shape, skin, hair and background tone, a few pixels of position jitter, a lighting
gradient, sensor noise) and one of the seven FER-2013 expressions. An expression is nothing but
a distribution over six geometric parameters of the mouth, the eyes and the brows
(`EXPRESSIONS`), so the ground truth of the occlusion analysis is known by construction:

================  =================================  ==================================
class             mouth                              eyes / brows
================  =================================  ==================================
Anger             as Neutral (closed, flat)          narrowed eyes, lowered V-shaped brows
Disgust (rare)    narrow, closed, frowning           narrowed eyes, lowered brows
Fear              wide, slightly open, stretched     wide eyes, raised brows, inner ends up
Happiness         smile (corners up) -- unique       as Neutral
Sadness           wide frown (corners down)          inner brow ends raised, eyes a bit lower
Surprise          small round open mouth -- unique   wide eyes, high brows
Neutral           closed, flat                       relaxed
================  =================================  ==================================

* Happiness is told from every other class by the mouth alone (no other class smiles) and its
  eyes and brows are drawn from Neutral's distribution, so only areas 10 and 11 carry it.
* Anger and Neutral share the mouth distribution exactly: they differ *only* in the eyes and
  brows (areas 6 and 7), so occluding the eyes must hurt Anger.

Geometry on the paper's 4x4 grid over 48x48 (areas of 12x12 pixels, ids 1..16 row-major): the
face is centred at (24, 24) up to the jitter; the eye centres lie on row 19 at columns 17.5 and
30.5 (areas 6 and 7, rows 12-23, columns 12-23 / 24-35), the brows 3-8 rows above them, and the
mouth is centred on row 29.5, column 24, straddling areas 10 and 11 (rows 24-35).

Occluders. Half of the faces carry one or two uniform rectangles (4-20 pixels a side, any
tone: hands, hair, glasses, captions) and 15 % are framed (everything outside a random window
of 12-40 pixels set to one tone: padded or cropped photos). Real FER-2013 photos are full of
such occlusions; without them a CNN trained on clean synthetic faces has never seen a flat
patch, and *any* patch -- informative or not -- knocks its output down (measured: every area
lowered the class output by 0.6-0.9 and keep-only predicted one class for everything), which
would make the occlusion analysis measure surprise instead of reliance.

Rendering is vectorised over the batch with numpy in float32 (several thousand faces per CPU
second); all randomness comes from one ``numpy.random.Generator`` seeded by the caller, so a
seed reproduces the data bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from .classes import FER2013_TRAIN_COUNTS, NUM_CLASSES

__all__ = [
    "EXPRESSIONS",
    "GROUND_TRUTH",
    "IMAGE_SIZE",
    "ExpressionSpec",
    "FaceParameters",
    "class_counts",
    "make_synthetic_faces",
    "render_faces",
    "sample_face_parameters",
]

IMAGE_SIZE = 48

FloatArray = NDArray[np.floating[Any]]

# Face layout relative to the (jittered) face centre, in pixels.
_EYE_ROW_OFFSET = -5.0  # eye centres 5 rows above the face centre: row 19 of 48
_EYE_COLUMN_OFFSET = 6.5  # eye centres at columns 17.5 and 30.5
_EYE_HALF_WIDTH = 3.2
_BROW_BASE_GAP = 5.0  # rows between eye centre and brow at brow_raise = 0
_BROW_HALF_LENGTH = 3.6
_BROW_THICKNESS = 1.6
_MOUTH_ROW_OFFSET = 5.5  # mouth centre on row 29.5
_NOSTRIL_ROW_OFFSET = 1.0
_POSITION_JITTER = 2.0  # face centre uniform in +-2 pixels on each axis
_MAX_OCCLUDERS = 2
_OCCLUDER_SIDE = (4.0, 20.0)  # occluder height and width, pixels
_FRAME_WINDOW_SIDE = (12.0, 40.0)  # sides of the window a frame leaves visible, pixels

Range = tuple[float, float]


@dataclass(frozen=True)
class ExpressionSpec:
    """Uniform ranges of the six expression parameters of one class.

    Attributes
    ----------
    mouth_curve : (low, high)
        Height in pixels by which the mouth corners rise above the mouth centre: positive is a
        smile, negative a frown.
    mouth_open : (low, high)
        Half-height in pixels of the open mouth at its centre (0 = closed lips).
    mouth_half_width : (low, high)
        Half-width of the mouth in pixels.
    eye_half_height : (low, high)
        Half-height of the eye opening in pixels (about 1 narrowed, 2 relaxed, 3 wide).
    brow_raise : (low, high)
        Pixels by which the brows sit higher than relaxed (negative = lowered).
    brow_tilt : (low, high)
        Pixels by which the inner brow ends sit lower than the outer ends (positive = the
        V-shaped frown of anger, negative = the raised inner ends of sadness and fear).
    """

    mouth_curve: Range
    mouth_open: Range
    mouth_half_width: Range
    eye_half_height: Range
    brow_raise: Range
    brow_tilt: Range


_NEUTRAL_MOUTH = {
    "mouth_curve": (-0.4, 0.4),
    "mouth_open": (0.0, 0.0),
    "mouth_half_width": (6.0, 7.5),
}
_NEUTRAL_EYES = {"eye_half_height": (1.8, 2.3), "brow_raise": (-0.4, 0.4), "brow_tilt": (-0.4, 0.4)}

EXPRESSIONS: tuple[ExpressionSpec, ...] = (
    # 0 Anger: Neutral's mouth; only the eyes and brows tell it apart.
    ExpressionSpec(
        **_NEUTRAL_MOUTH,
        eye_half_height=(0.9, 1.3),
        brow_raise=(-2.0, -1.2),
        brow_tilt=(1.6, 2.6),
    ),
    # 1 Disgust: narrow frowning mouth with anger-like eyes; the brows are less V-shaped.
    ExpressionSpec(
        mouth_curve=(-1.6, -0.9),
        mouth_open=(0.0, 0.0),
        mouth_half_width=(4.2, 5.4),
        eye_half_height=(0.9, 1.3),
        brow_raise=(-2.0, -1.2),
        brow_tilt=(0.6, 1.4),
    ),
    # 2 Fear: stretched, slightly open mouth; wide eyes; raised brows with inner ends up.
    ExpressionSpec(
        mouth_curve=(-0.9, -0.2),
        mouth_open=(1.2, 2.0),
        mouth_half_width=(7.5, 9.0),
        eye_half_height=(2.8, 3.4),
        brow_raise=(1.2, 2.0),
        brow_tilt=(-2.0, -1.0),
    ),
    # 3 Happiness: the only smile; eyes and brows exactly as Neutral.
    ExpressionSpec(
        mouth_curve=(2.0, 3.0),
        mouth_open=(0.0, 1.2),
        mouth_half_width=(6.5, 8.5),
        **_NEUTRAL_EYES,
    ),
    # 4 Sadness: wide frown; inner brow ends raised; eyes slightly lowered lids.
    ExpressionSpec(
        mouth_curve=(-3.0, -1.8),
        mouth_open=(0.0, 0.0),
        mouth_half_width=(5.5, 7.0),
        eye_half_height=(1.4, 1.9),
        brow_raise=(-0.3, 0.5),
        brow_tilt=(-2.6, -1.6),
    ),
    # 5 Surprise: small round open mouth; wide eyes; high level brows.
    ExpressionSpec(
        mouth_curve=(-0.3, 0.3),
        mouth_open=(2.6, 3.6),
        mouth_half_width=(3.4, 4.4),
        eye_half_height=(2.8, 3.4),
        brow_raise=(2.2, 3.0),
        brow_tilt=(-0.4, 0.4),
    ),
    # 6 Neutral.
    ExpressionSpec(**_NEUTRAL_MOUTH, **_NEUTRAL_EYES),
)
"""Expression parameter ranges, indexed by FER-2013 label (0 Anger ... 6 Neutral)."""


@dataclass(frozen=True)
class FaceParameters:
    """Everything that defines a batch of N faces: float64 arrays of shape (N,) or (N, 2).

    Identity: ``center_row``, ``center_col`` (face centre after jitter), ``face_half_height``,
    ``face_half_width``, ``skin``, ``hair``, ``hairline`` (rows from the top of the face to the
    hairline), ``background``, ``eye_tone`` (sclera brightness), ``feature_tone`` (darkness of
    lips, pupils, brows; 0 = black), ``light_col``, ``light_row`` (lighting gradients),
    ``brightness``, ``noise_std``. Expression: the six fields of `ExpressionSpec`.
    Occluders, shape (N, 2), one column per slot (height 0 = unused): ``occluder_top``,
    ``occluder_left``, ``occluder_height``, ``occluder_width``, ``occluder_tone``. Frame, shape
    (N,), the window left visible (the whole image when unused): ``frame_top``, ``frame_left``,
    ``frame_height``, ``frame_width``, and the border's ``frame_tone``.
    """

    center_row: NDArray[np.float64]
    center_col: NDArray[np.float64]
    face_half_height: NDArray[np.float64]
    face_half_width: NDArray[np.float64]
    skin: NDArray[np.float64]
    hair: NDArray[np.float64]
    hairline: NDArray[np.float64]
    background: NDArray[np.float64]
    eye_tone: NDArray[np.float64]
    feature_tone: NDArray[np.float64]
    light_col: NDArray[np.float64]
    light_row: NDArray[np.float64]
    brightness: NDArray[np.float64]
    noise_std: NDArray[np.float64]
    mouth_curve: NDArray[np.float64]
    mouth_open: NDArray[np.float64]
    mouth_half_width: NDArray[np.float64]
    eye_half_height: NDArray[np.float64]
    brow_raise: NDArray[np.float64]
    brow_tilt: NDArray[np.float64]
    occluder_top: NDArray[np.float64]
    occluder_left: NDArray[np.float64]
    occluder_height: NDArray[np.float64]
    occluder_width: NDArray[np.float64]
    occluder_tone: NDArray[np.float64]
    frame_top: NDArray[np.float64]
    frame_left: NDArray[np.float64]
    frame_height: NDArray[np.float64]
    frame_width: NDArray[np.float64]
    frame_tone: NDArray[np.float64]

    def __len__(self) -> int:
        return int(self.center_row.shape[0])

    def subset(self, index: slice) -> FaceParameters:
        """The parameters of faces ``index`` (a slice), for rendering in chunks."""
        return FaceParameters(**{name: value[index] for name, value in vars(self).items()})


def class_counts(n: int, frequencies: Sequence[float] | None = None) -> NDArray[np.int64]:
    """Split `n` images over the classes in proportion to `frequencies`, every class at least 1.

    Parameters
    ----------
    n : int
        Total number of images, at least the number of classes (7).
    frequencies : sequence of 7 non-negative floats, optional
        Relative class frequencies; default FER-2013's training-split counts (Disgust about
        1.5 %, as in the data of the paper's Table 1).

    Returns
    -------
    ndarray of int64, shape (7,)
        Counts summing to `n` (largest-remainder rounding), each at least 1 so that every class
        appears in every split.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < NUM_CLASSES:
        raise ValueError(f"n: expected an int of at least {NUM_CLASSES}, got {n!r}")
    weights = np.asarray(FER2013_TRAIN_COUNTS if frequencies is None else frequencies, float)
    if weights.shape != (NUM_CLASSES,) or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(
            f"frequencies: expected {NUM_CLASSES} non-negative numbers with a positive sum, "
            f"got {list(np.atleast_1d(weights))}"
        )
    # Reserve one image per class, share the rest by largest remainder.
    spare = n - NUM_CLASSES
    exact = weights / weights.sum() * spare
    counts = np.floor(exact).astype(np.int64)
    remainder_order = np.argsort(-(exact - counts), kind="stable")
    counts[remainder_order[: spare - int(counts.sum())]] += 1
    result: NDArray[np.int64] = counts + 1
    return result


def _uniform(
    rng: np.random.Generator, low: NDArray[np.float64], high: NDArray[np.float64]
) -> NDArray[np.float64]:
    return low + (high - low) * rng.random(low.shape[0])


def sample_face_parameters(
    labels: NDArray[np.int64],
    rng: np.random.Generator,
    occluder_probability: float = 0.5,
    frame_probability: float = 0.15,
) -> FaceParameters:
    """Draw a random identity, occluders and the expression parameters of each label.

    Parameters
    ----------
    labels : ndarray of int64, shape (N,)
        FER-2013 labels 0..6.
    rng : numpy.random.Generator
        The only source of randomness.
    occluder_probability : float in [0, 1]
        Fraction of faces with at least one occluder rectangle (about).
    frame_probability : float in [0, 1]
        Fraction of framed faces.

    Returns
    -------
    FaceParameters
        Fields of shape (N,), occluder fields (N, 2).
    """
    for name, probability in (
        ("occluder_probability", occluder_probability),
        ("frame_probability", frame_probability),
    ):
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"{name}: expected a probability in [0, 1], got {probability!r}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or (labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES)):
        raise ValueError(
            f"labels: expected a 1-d array of labels in 0..{NUM_CLASSES - 1}, got {labels!r}"
        )
    n = labels.shape[0]

    def identity(low: float, high: float) -> NDArray[np.float64]:
        return rng.uniform(low, high, size=(n,))

    # Identity first, then expression: the order fixes what a seed produces.
    center = IMAGE_SIZE / 2
    params: dict[str, NDArray[np.float64]] = {
        "center_row": center + identity(-_POSITION_JITTER, _POSITION_JITTER),
        "center_col": center + identity(-_POSITION_JITTER, _POSITION_JITTER),
        "face_half_height": identity(19.5, 23.0),
        "face_half_width": identity(15.0, 18.5),
        "skin": identity(0.45, 0.8),
        "hair": identity(0.03, 0.35),
        "hairline": identity(4.0, 9.0),
        "background": identity(0.0, 1.0),
        "eye_tone": identity(0.8, 0.97),
        "feature_tone": identity(0.02, 0.25),
        "light_col": identity(-0.3, 0.3),
        "light_row": identity(-0.15, 0.15),
        "brightness": identity(0.85, 1.15),
        "noise_std": identity(0.005, 0.03),
    }
    for field in ExpressionSpec.__dataclass_fields__:
        ranges = np.array([getattr(spec, field) for spec in EXPRESSIONS], dtype=np.float64)
        params[field] = _uniform(rng, ranges[labels, 0], ranges[labels, 1])
    # Occluders: each slot is used with probability occluder_probability / slot number, so
    # about that fraction of faces has at least one occluder.
    slots = (n, _MAX_OCCLUDERS)
    used = rng.random(slots) < occluder_probability / np.arange(1, _MAX_OCCLUDERS + 1)
    params["occluder_height"] = np.where(used, rng.uniform(*_OCCLUDER_SIDE, slots), 0.0)
    params["occluder_width"] = rng.uniform(*_OCCLUDER_SIDE, slots)
    params["occluder_top"] = rng.uniform(0.0, 1.0, slots) * (IMAGE_SIZE - params["occluder_height"])
    params["occluder_left"] = rng.uniform(0.0, 1.0, slots) * (IMAGE_SIZE - params["occluder_width"])
    params["occluder_tone"] = rng.uniform(0.0, 1.0, slots)
    framed = rng.random(n) < frame_probability
    for side in ("height", "width"):
        params[f"frame_{side}"] = np.where(
            framed, rng.uniform(*_FRAME_WINDOW_SIDE, size=(n,)), IMAGE_SIZE
        )
    params["frame_top"] = rng.uniform(0.0, 1.0, size=(n,)) * (IMAGE_SIZE - params["frame_height"])
    params["frame_left"] = rng.uniform(0.0, 1.0, size=(n,)) * (IMAGE_SIZE - params["frame_width"])
    params["frame_tone"] = rng.uniform(0.0, 1.0, size=(n,))
    return FaceParameters(**params)


def _ramp(signed_distance: FloatArray) -> FloatArray:
    """Anti-aliased coverage of a shape from the signed distance to its edge (negative inside)."""
    coverage: FloatArray = np.clip(0.5 - signed_distance, 0.0, 1.0)
    return coverage


def _segment_distance(
    row: FloatArray,
    col: FloatArray,
    start: tuple[FloatArray, FloatArray],
    end: tuple[FloatArray, FloatArray],
) -> FloatArray:
    """Distance of every pixel to the segment start-end.

    row : shape (1, H, 1); col : shape (1, 1, W); endpoints (row, col) of shape (N, 1, 1);
    result : shape (N, H, W).
    """
    d_row, d_col = end[0] - start[0], end[1] - start[1]
    length_sq = d_row**2 + d_col**2
    t = np.clip(((row - start[0]) * d_row + (col - start[1]) * d_col) / length_sq, 0.0, 1.0)
    return np.hypot(row - (start[0] + t * d_row), col - (start[1] + t * d_col))


def render_faces(params: FaceParameters, rng: np.random.Generator) -> NDArray[np.float32]:
    """Draw the faces described by `params`.

    Parameters
    ----------
    params : FaceParameters
        N faces.
    rng : numpy.random.Generator
        Source of the pixel noise.

    Returns
    -------
    ndarray of float32, shape (N, 48, 48)
        Grayscale images with values in [0, 1].
    """
    # Drawing order: background, head, hair, nose, eyes and brows, mouth, lighting and noise,
    # then the occluders and frame in front of everything.
    # float32 and small chunks keep the intermediates in cache: rendering is memory-bound.
    p = {
        name: value.astype(np.float32)[:, None, None]
        for name, value in vars(params).items()
        if value.ndim == 1
    }
    row = np.arange(IMAGE_SIZE, dtype=np.float32)[None, :, None] + np.float32(0.5)
    col = np.arange(IMAGE_SIZE, dtype=np.float32)[None, None, :] + np.float32(0.5)
    cy, cx = p["center_row"], p["center_col"]
    feature = p["feature_tone"]

    def paint(image: FloatArray, coverage: FloatArray, tone: FloatArray) -> FloatArray:
        """Blend `tone` (N, 1, 1) over `image` (N, H, W) with per-pixel `coverage` in [0, 1]."""
        return image * (1.0 - coverage) + tone * coverage

    # Head: an ellipse of skin over the background, with hair above a curved hairline.
    radius = np.hypot((row - cy) / p["face_half_height"], (col - cx) / p["face_half_width"])
    face = _ramp((radius - 1.0) * np.minimum(p["face_half_height"], p["face_half_width"]))
    image: FloatArray = np.broadcast_to(
        p["background"], (len(params), IMAGE_SIZE, IMAGE_SIZE)
    ).copy()
    image = paint(image, face, p["skin"])
    hairline_row = cy - p["face_half_height"] + p["hairline"] + 0.04 * (col - cx) ** 2
    image = paint(image, face * _ramp(row - hairline_row), p["hair"])

    # Nose: two nostrils just above the mouth, identical for every expression.
    for side in (-1.0, 1.0):
        nostril = np.hypot(row - (cy + _NOSTRIL_ROW_OFFSET), col - (cx + side * 1.6))
        image = paint(image, 0.6 * _ramp(nostril - 0.8), feature)

    # Eyes: a bright opening of the expression's height with a dark pupil and lid outline;
    # brows: thick segments whose height and inner-end tilt come from the expression.
    eye_row = cy + _EYE_ROW_OFFSET
    half_height = p["eye_half_height"]
    for side in (-1.0, 1.0):
        eye_col = cx + side * _EYE_COLUMN_OFFSET
        eye_radius = np.hypot((row - eye_row) / half_height, (col - eye_col) / _EYE_HALF_WIDTH)
        eye_edge = (eye_radius - 1.0) * half_height
        opening = _ramp(eye_edge)
        image = paint(image, opening, p["eye_tone"])
        pupil = np.hypot(row - eye_row, col - eye_col) - np.minimum(1.6, half_height)
        image = paint(image, opening * _ramp(pupil), feature)
        image = paint(image, 0.8 * np.clip(1.0 - np.abs(eye_edge) / 0.8, 0.0, 1.0), feature)

        brow_row = eye_row - _BROW_BASE_GAP - p["brow_raise"]
        inner = (brow_row + p["brow_tilt"] / 2, eye_col - side * _BROW_HALF_LENGTH)
        outer = (brow_row - p["brow_tilt"] / 2, eye_col + side * _BROW_HALF_LENGTH)
        brow = _ramp(_segment_distance(row, col, inner, outer) - _BROW_THICKNESS / 2)
        image = paint(image, brow, 0.5 * (feature + p["hair"]))

    # Mouth: a centre line y(u) = mouth_row - curve * (u^2 - 1/2), u in [-1, 1] across the
    # mouth, opened by an elliptic profile of half-height mouth_open * sqrt(1 - u^2); the lips
    # are the outline of the opening (a single line when closed), the opening is dark.
    mouth_row = cy + _MOUTH_ROW_OFFSET
    u = (col - cx) / p["mouth_half_width"]
    centre_line = mouth_row - p["mouth_curve"] * (u**2 - 0.5)
    across = np.clip((1.0 - np.abs(u)) * p["mouth_half_width"] + 0.5, 0.0, 1.0)
    opening_half = p["mouth_open"] * np.sqrt(np.clip(1.0 - u**2, 0.0, None))
    offset = np.abs(row - centre_line)
    inside = across * _ramp(offset - opening_half)
    lips = across * np.clip(1.0 - np.abs(offset - opening_half) / 0.9, 0.0, 1.0)
    image = paint(image, inside, 0.5 * feature)
    image = paint(image, lips, feature)

    # Lighting: a linear gradient in both directions and a global brightness, then noise.
    light = p["brightness"] * (
        1.0 + p["light_col"] * (col - cx) / 24.0 + p["light_row"] * (row - cy) / 24.0
    )
    image = image * light + p["noise_std"] * rng.standard_normal(image.shape, dtype=np.float32)

    # Occluders: uniform rectangles in front of the face (hands, hair, glasses, captions);
    # unused slots have zero height.
    for slot in range(params.occluder_top.shape[1]):
        top, left, height, width, tone = (
            getattr(params, f"occluder_{name}")[:, slot, None, None].astype(np.float32)
            for name in ("top", "left", "height", "width", "tone")
        )
        cover = (row >= top) & (row < top + height) & (col >= left) & (col < left + width)
        image = paint(image, cover.astype(np.float32), tone)

    # Frame: a uniform border outside a window (padded or cropped photos); an unused frame's
    # window is the whole image.
    top, left = p["frame_top"], p["frame_left"]
    window = (
        (row >= top)
        & (row < top + p["frame_height"])
        & (col >= left)
        & (col < left + p["frame_width"])
    )
    image = paint(image, (~window).astype(np.float32), p["frame_tone"])
    rendered: NDArray[np.float32] = np.clip(image, 0.0, 1.0).astype(np.float32)
    return rendered


def make_synthetic_faces(
    n: int,
    seed: int,
    frequencies: Sequence[float] | None = None,
    occluder_probability: float = 0.5,
    frame_probability: float = 0.15,
    chunk_size: int = 32,
) -> tuple[Tensor, Tensor]:
    """Generate `n` labelled synthetic faces, reproducibly.

    Parameters
    ----------
    n : int
        Number of faces, at least 7 (every class appears at least once).
    seed : int
        Seed of the ``numpy.random.Generator`` that draws labels, identities, expressions,
        occluders and noise; the same arguments give the same tensors.
    frequencies : sequence of 7 floats, optional
        Relative class frequencies; default FER-2013's training-split imbalance.
    occluder_probability, frame_probability : float in [0, 1]
        Fractions of faces with occluder rectangles / a frame (see the module docstring).
    chunk_size : int
        Faces rendered at a time; small chunks keep the intermediates in the CPU cache.

    Returns
    -------
    images : Tensor, shape (n, 1, 48, 48), float32 in [0, 1]
    labels : Tensor, shape (n,), int64 in 0..6, in random order
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int, got {chunk_size!r}")
    counts = class_counts(n, frequencies)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(NUM_CLASSES, dtype=np.int64), counts))
    params = sample_face_parameters(labels, rng, occluder_probability, frame_probability)
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    for start in range(0, n, chunk_size):
        chunk = slice(start, min(start + chunk_size, n))
        images[chunk] = render_faces(params.subset(chunk), rng)
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels)


GROUND_TRUTH: dict[str, str] = {
    "Anger": "eyes and brows only (mouth as Neutral)",
    "Disgust": "narrow frowning mouth, narrowed eyes, lowered brows",
    "Fear": "stretched open mouth, wide eyes, raised brows",
    "Happiness": "mouth only (the smile)",
    "Sadness": "frowning mouth and raised inner brow ends",
    "Surprise": "round open mouth, wide eyes, high brows",
    "Neutral": "relaxed everything",
}
"""Which face parts define each class of the synthetic data, by class name (for the report)."""
