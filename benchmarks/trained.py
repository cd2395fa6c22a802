"""A trained classifier for the heat-map benchmark, whose evidence is local as a real one's is.

The random-weight nets of models.py respond to edges all over a photograph, so their heat
maps are spread out and no coarse pass can stand in for the fine windows (docs/performance.md,
2026-12-03). A classifier trained to recognise an object puts its evidence on the object. No
weights can be downloaded here, so this module trains one, from scratch, in about five
minutes on 2 CPU cores:

- **model**: `reference_models.vgg_max_pooled` at 1/2 width: VGG-16's thirteen 3x3 convs
  (32-64-128-256-256 channels, pool5 removed), a 3x3 conv of 512, a 1x1 conv to 4 class score
  maps and a global max pool (Oquab et al., CVPR 2015). It takes any input size: trained on
  64x64 crops, it classifies 224x224 scenes.
- **task**: 64x64 crops of the photograph (`models.photograph`, at a random position,
  mirrored or not, brightness x0.6-1.4) with 0-2 squares of a random grey (8-20 px, so that
  an occluding patch is not evidence) and one shape of a random colour (radius 9-15 px, at a
  random position); the label is the shape: disc, ring, plus or triangle (`SHAPES`).
- **training**: Adam, one-cycle learning rate (peak 2e-3), 800 steps of 32 crops, seeded; a
  quarter of the crops have no shape and are trained towards equal class scores, so that no
  score map learns to fire on the background.

The weights are cached in ``benchmarks/.cache`` under a name that digests the recipe, this
module's code, the model's code and the torch version (a change to any retrains);
`trained_vgg16` returns the model in eval mode with the accuracies it measured on fresh crops
and on fresh 224x224 scenes.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from models import architecture_case, photograph
from reference_models import vgg_max_pooled
from torch import Tensor, nn

__all__ = [
    "SCENES",
    "SHAPES",
    "TRAINED_VGG16",
    "TrainedModel",
    "scenes",
    "shape_batch",
    "trained_vgg16",
]

SHAPES = ("disc", "ring", "plus", "triangle")
CACHE = Path(__file__).resolve().parent / ".cache"
#: The training recipe (the cache file's name digests it).
RECIPE = {
    "crop": 64,
    "steps": 800,
    "batch": 32,
    "peak_lr": 2e-3,
    "seed": 0,
    "divisor": 2,
    "background_share": 0.25,
}


def shape_mask(
    shape: int, height: int, width: int, centre: tuple[float, float], radius: float
) -> Tensor:
    """(height, width) bool: the pixels (sampled at their centres) of shape `SHAPES[shape]`."""
    rows = torch.arange(height, dtype=torch.float32)[:, None] + 0.5 - centre[0]
    cols = torch.arange(width, dtype=torch.float32)[None, :] + 0.5 - centre[1]
    distance = (rows * rows + cols * cols).sqrt()
    if SHAPES[shape] == "disc":
        return distance < radius
    if SHAPES[shape] == "ring":
        return (distance < radius) & (distance > 0.55 * radius)
    if SHAPES[shape] == "plus":
        bar = 0.3 * radius
        return ((cols.abs() < bar) & (rows.abs() < radius)) | (
            (rows.abs() < bar) & (cols.abs() < radius)
        )
    # triangle, apex up
    return (rows < 0.8 * radius) & (rows > -radius) & (cols.abs() < 0.55 * (rows + radius))


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _integer(generator: torch.Generator, low: int, high: int) -> int:
    """An integer in [low, high]."""
    return int(torch.randint(low, high + 1, (), generator=generator))


def shape_batch(
    n: int, size: int, generator: torch.Generator, background_share: float = 0.0
) -> tuple[Tensor, Tensor]:
    """(images (n, 3, size, size) in [0, 1], labels (n,)) of the task (module docstring); a
    share of the crops, drawn at random, has no shape and the label -1."""
    photo = photograph(224, 224)
    backgrounds = torch.cat([photo, photo.flip(-1)])
    images = torch.empty(n, 3, size, size)
    labels = torch.randint(0, len(SHAPES), (n,), generator=generator)
    for i in range(n):
        source = backgrounds[_integer(generator, 0, 1)]
        top, left = _integer(generator, 0, 224 - size), _integer(generator, 0, 224 - size)
        image = source[:, top : top + size, left : left + size] * _uniform(generator, 0.6, 1.4)
        for _ in range(_integer(generator, 0, 2)):
            side = _integer(generator, 8, 20)
            row, col = _integer(generator, 0, size - side), _integer(generator, 0, size - side)
            image[:, row : row + side, col : col + side] = _uniform(generator, 0.0, 1.0)
        if _uniform(generator, 0.0, 1.0) < background_share:
            labels[i] = -1
            images[i] = image.clamp(0, 1)
            continue
        radius = _uniform(generator, 9.0, 15.0)
        centre = (
            _uniform(generator, radius, size - radius),
            _uniform(generator, radius, size - radius),
        )
        mask = shape_mask(int(labels[i]), size, size, centre, radius)
        image[:, mask] = torch.rand(3, 1, generator=generator)
        images[i] = image.clamp(0, 1)
    return images, labels


@dataclass(frozen=True)
class Scene:
    """A shape pasted on the 224x224 photograph."""

    shape: int
    centre: tuple[float, float]
    radius: float
    colour: tuple[float, float, float]

    def image(self) -> Tensor:
        """(3, 224, 224) in [0, 1]."""
        image = photograph(224, 224)[0].clone()
        mask = shape_mask(self.shape, 224, 224, self.centre, self.radius)
        image[:, mask] = torch.tensor(self.colour)[:, None]
        return image


#: The heat-map benchmark's images: the first calibrates a drill-down or threshold, the second
#: is held out (a different shape, place and colour).
SCENES = (
    Scene(SHAPES.index("plus"), (70.0, 150.0), 13.0, (0.95, 0.85, 0.1)),
    Scene(SHAPES.index("triangle"), (150.0, 75.0), 13.0, (0.1, 0.8, 0.9)),
)


def scenes() -> tuple[Tensor, Tensor]:
    """(images (2, 3, 224, 224), labels (2,)) of `SCENES`."""
    images = torch.stack([scene.image() for scene in SCENES])
    return images, torch.tensor([scene.shape for scene in SCENES])


@dataclass(frozen=True)
class TrainedModel:
    """The trained net (eval mode) and the accuracies it measured after training."""

    model: nn.Module
    crop_accuracy: float
    scene_accuracy: float


def _accuracy(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    with torch.inference_mode():
        return float((model(images).argmax(dim=1) == labels).double().mean())


def _held_out_scenes(count: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """`count` random 224x224 scenes (shape, place and colour drawn as in training)."""
    chosen = []
    for _ in range(count):
        radius = _uniform(generator, 9.0, 15.0)
        centre = (
            _uniform(generator, radius, 224 - radius),
            _uniform(generator, radius, 224 - radius),
        )
        colour = tuple(float(c) for c in torch.rand(3, generator=generator))
        chosen.append(Scene(_integer(generator, 0, len(SHAPES) - 1), centre, radius, colour))  # type: ignore[arg-type]
    return torch.stack([s.image() for s in chosen]), torch.tensor([s.shape for s in chosen])


def _train() -> dict[str, object]:
    generator = torch.Generator().manual_seed(int(RECIPE["seed"]))
    model = vgg_max_pooled(
        divisor=int(RECIPE["divisor"]), classes=len(SHAPES), seed=int(RECIPE["seed"])
    )
    steps = int(RECIPE["steps"])
    optimiser = torch.optim.Adam(model.parameters(), lr=float(RECIPE["peak_lr"]))
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=float(RECIPE["peak_lr"]), total_steps=steps
    )
    model.train()
    for _ in range(steps):
        images, labels = shape_batch(
            int(RECIPE["batch"]), int(RECIPE["crop"]), generator, float(RECIPE["background_share"])
        )
        log_p = F.log_softmax(model(images), dim=1)
        shown = labels >= 0
        # A crop with a shape: cross-entropy with its label; without one: with the uniform
        # distribution, so that no class's score map learns to fire on the background.
        losses = torch.where(
            shown, -log_p.gather(1, labels.clamp(min=0)[:, None])[:, 0], -log_p.mean(dim=1)
        )
        loss = losses.mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    model.eval()
    check = torch.Generator().manual_seed(12345)
    crop = _accuracy(model, *shape_batch(256, int(RECIPE["crop"]), check))
    scene = _accuracy(model, *_held_out_scenes(32, check))
    return {"state": model.state_dict(), "crop_accuracy": crop, "scene_accuracy": scene}


@functools.cache
def trained_vgg16() -> TrainedModel:
    """The trained net (module docstring), from the cache or trained now (about five minutes)."""
    code = Path(__file__).read_text() + inspect.getsource(vgg_max_pooled)
    key = repr((sorted(RECIPE.items()), torch.__version__, code))
    digest = hashlib.sha256(key.encode()).hexdigest()
    path = CACHE / f"vgg16-max-pooled-shapes-{digest[:16]}.pt"
    if path.exists():
        saved = torch.load(path, weights_only=True)
    else:
        saved = _train()
        CACHE.mkdir(exist_ok=True)
        torch.save(saved, path)
    model = vgg_max_pooled(divisor=int(RECIPE["divisor"]), classes=len(SHAPES))
    model.load_state_dict(saved["state"])  # type: ignore[arg-type]
    accuracy = (float(saved["crop_accuracy"]), float(saved["scene_accuracy"]))  # type: ignore[arg-type]
    if not all(math.isfinite(a) for a in accuracy):
        raise AssertionError(f"training diverged: accuracies {accuracy}")
    return TrainedModel(model.eval(), *accuracy)


#: The heat-map benchmark's trained case (test_heatmaps.py sweeps `scenes` with it).
TRAINED_VGG16 = architecture_case(
    "vgg16-trained",
    "VGG-16 1/2 width, max-pooled, trained on shapes",
    lambda: trained_vgg16().model,
    None,
    trained=True,
)
