"""PerturbationCurve: what it prints (its values are tested with perturbation_curve)."""

from __future__ import annotations

import torch

import occlusion_probe as op


def test_repr_names_sizes_not_values() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    regions = op.grid(8, 8, 4, 4)
    curve = op.perturbation_curve(
        model,
        torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0)),
        regions,
        list(range(16, 0, -1)),
        labels=torch.arange(6) % 3,
        progress=False,
    )
    text = repr(curve)
    assert text.startswith("PerturbationCurve(mode='keep', order='given: [16, 15,")
    assert "...'" in text and "N=6 images, D=1 draws, R=16 regions (ids 16..1)" not in text
    assert "R=16 regions (ids 1..16)" in text and f"accuracy {curve.auc():.3f} AUC" in text
    assert "tensor(" not in text and "\n" not in text and len(text) < 300
