"""The trained case's data and model (trained.py), checked without training (CI's smoke run).

The training itself takes about five minutes, so only the heat-map benchmark's full run
does it; here the task's images are checked against their labels and the model's input
sizes, so that a change that broke them shows before a benchmark run.
"""

from __future__ import annotations

import pytest
import torch
from reference_models import vgg_max_pooled
from trained import SCENES, SHAPES, scenes, shape_batch, shape_mask


@pytest.mark.parametrize("n", [0, 1, 2, 16])
def test_shape_batch_smoke(n: int) -> None:
    images, labels = shape_batch(n, 64, torch.Generator().manual_seed(0), background_share=0.25)
    assert images.shape == (n, 3, 64, 64) and labels.shape == (n,)
    assert bool(((images >= 0) & (images <= 1)).all())
    assert bool(((labels >= -1) & (labels < len(SHAPES))).all())


def test_shape_batch_is_seeded_smoke() -> None:
    first = shape_batch(4, 64, torch.Generator().manual_seed(3))
    second = shape_batch(4, 64, torch.Generator().manual_seed(3))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert bool((first[1] >= 0).all())  # no background crops unless asked for


def test_shape_masks_differ_smoke() -> None:
    masks = [shape_mask(k, 32, 32, (16.0, 16.0), 12.0) for k in range(len(SHAPES))]
    for k, mask in enumerate(masks):
        assert 30 < int(mask.sum()) < 32 * 32, SHAPES[k]
        for other in masks[k + 1 :]:
            assert not torch.equal(mask, other)
    disc, ring = masks[SHAPES.index("disc")], masks[SHAPES.index("ring")]
    assert bool(disc[16, 16]) and not bool(ring[16, 16])  # a ring's centre is empty


def test_scenes_paste_their_shape_smoke() -> None:
    images, labels = scenes()
    assert images.shape == (len(SCENES), 3, 224, 224)
    for image, scene, label in zip(images, SCENES, labels.tolist(), strict=True):
        assert label == scene.shape
        mask = shape_mask(scene.shape, 224, 224, scene.centre, scene.radius)
        colour = torch.tensor(scene.colour)[:, None]
        assert torch.equal(image[:, mask], colour.expand(3, int(mask.sum())))


@pytest.mark.parametrize("size", [64, 224])
def test_max_pooled_vgg_takes_any_size_smoke(size: int) -> None:
    model = vgg_max_pooled(divisor=16, classes=len(SHAPES))
    with torch.inference_mode():
        out = model(torch.rand(2, 3, size, size))
    assert out.shape == (2, len(SHAPES))
