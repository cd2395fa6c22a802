"""The paper CNN, the full GCN + ZCA + CNN model, seeded training and weight round trips."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from fer_paper.model import build_model, build_preprocess, fit_preprocess, paper_cnn
from fer_paper.preprocess import ZCA, GlobalContrastNormalization, ZCANotFittedError
from fer_paper.synthetic import make_synthetic_faces
from fer_paper.train import evaluate_accuracy, predict, train_model
from torch import nn


@pytest.fixture(scope="module")
def faces() -> tuple[torch.Tensor, torch.Tensor]:
    """96 labelled synthetic faces, (96, 1, 48, 48) and (96,)."""
    return make_synthetic_faces(96, seed=2)


@pytest.fixture(scope="module")
def fitted_preprocess(faces: tuple[torch.Tensor, torch.Tensor]) -> nn.Sequential:
    """GCN + ZCA fitted once on `faces` (the 2304x2304 eigh is the slow part)."""
    return fit_preprocess(faces[0])


def test_paper_cnn_layers_and_shapes() -> None:
    cnn = paper_cnn()
    kinds = [type(layer).__name__ for layer in cnn]
    assert kinds == [
        "Conv2d", "ReLU", "MaxPool2d",
        "Conv2d", "ReLU", "MaxPool2d",
        "Conv2d", "ReLU", "MaxPool2d",
        "Flatten", "Linear", "ReLU", "Dropout", "Linear",
    ]  # fmt: skip
    convs = [layer for layer in cnn if isinstance(layer, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (1, 32, (5, 5), (2, 2)),
        (32, 64, (5, 5), (2, 2)),
        (64, 128, (3, 3), (1, 1)),
    ]
    linears = [layer for layer in cnn if isinstance(layer, nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(4608, 1024), (1024, 7)]
    assert cnn(torch.rand(3, 1, 48, 48)).shape == (3, 7)


def test_build_model_composes_preprocessing_in_front(
    faces: tuple[torch.Tensor, torch.Tensor], fitted_preprocess: nn.Sequential
) -> None:
    images = faces[0][:40]
    preprocess = copy.deepcopy(fitted_preprocess)
    model = build_model(preprocess)
    assert isinstance(model, nn.Sequential) and model[0] is preprocess
    assert isinstance(model[0][0], GlobalContrastNormalization) and isinstance(model[0][1], ZCA)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(images), model[1](preprocess(images)))
    with pytest.raises(TypeError, match="gcn_zca_preprocess"):
        build_model("gcn")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="train_images"):
        fit_preprocess(torch.rand(5, 48, 48))


def test_weights_round_trip_restores_the_whole_pipeline(
    tmp_path: Path, faces: tuple[torch.Tensor, torch.Tensor], fitted_preprocess: nn.Sequential
) -> None:
    images = faces[0][:40]
    torch.manual_seed(0)
    model = build_model(copy.deepcopy(fitted_preprocess)).eval()
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    state = torch.load(path, weights_only=True)
    assert {"0.1.mean", "0.1.whitening", "0.1.fitted"} <= set(state)
    restored = build_model(build_preprocess()).eval()
    with pytest.raises(ZCANotFittedError):
        restored(images)
    restored.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(restored(images), model(images))


def test_training_is_seeded_and_learns(
    faces: tuple[torch.Tensor, torch.Tensor], fitted_preprocess: nn.Sequential
) -> None:
    images, labels = faces

    def trained(seed: int) -> nn.Sequential:
        torch.manual_seed(seed)
        model = build_model(copy.deepcopy(fitted_preprocess))
        history = train_model(
            model, images, labels, epochs=2, seed=seed, batch_size=32, progress=False
        )
        assert len(history.loss) == 2 and history.loss[1] < history.loss[0]
        return model

    first, second, other = trained(0), trained(0), trained(1)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert not torch.equal(first[1][0].weight, other[1][0].weight)
    assert not first.training  # left in eval mode
    assert predict(first, images).shape == (96,)
    assert 0.0 <= evaluate_accuracy(first, images, labels) <= 1.0


def test_training_rejects_bad_arguments() -> None:
    model = build_model(build_preprocess())
    with pytest.raises(ValueError, match="labels"):
        train_model(
            model, torch.rand(4, 1, 48, 48), torch.zeros(3, dtype=torch.int64), epochs=1, seed=0
        )
    with pytest.raises(ValueError, match="epochs"):
        train_model(
            model, torch.rand(4, 1, 48, 48), torch.zeros(4, dtype=torch.int64), epochs=0, seed=0
        )
