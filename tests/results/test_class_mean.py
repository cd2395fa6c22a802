"""ClassMeanResult: what it prints (its readings are tested beside the collectors)."""

from __future__ import annotations

import torch

import occlusion_probe as op


def test_repr_names_sizes_not_values() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    means = op.sweep(
        model,
        torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0)),
        op.grid(8, 8, 2, 2),
        labels=[0, 1, 2, 0, 1, 2],
        reduce="class_mean",
        class_names=["cat", "dog", "eel"],
        progress=False,
    )
    text = repr(means)
    assert text.startswith("ClassMeanResult(N=6 images summed, R=4 Regions(4 partition of 8x8")
    assert "K=3 classes (cat, dog, eel)" in text and f"accuracy {means.accuracy:.3f}" in text
    assert "tensor(" not in text and "\n" not in text
