"""Run by tests/test_distributed.py under torchrun: each rank sweeps its shard with gloo."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from reference_models import small_cnn

import occlusion_probe as op


def data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(11)
    return torch.rand(23, 1, 12, 12, generator=generator), torch.randint(
        0, 3, (23,), generator=generator
    )


def run(out: Path) -> None:
    model = small_cnn(classes=3).eval()
    images, labels = data()
    regions = op.grid(12, 12, 3, 3)
    rank = dist.get_rank() if dist.is_initialized() else 0
    tag = "dist" if dist.is_initialized() else "single"
    seen = [0]

    def counting(x: torch.Tensor) -> torch.Tensor:
        seen[0] += x.shape[0]
        return model(x)

    whole = op.sweep(counting, images, regions, labels=labels, progress=False)
    batches = [(images[i : i + 5], labels[i : i + 5]) for i in range(0, 23, 5)]
    streamed = op.sweep(model, batches, regions, progress=False)
    reduced = op.sweep(model, batches, regions, progress=False, reduce="class_mean")
    if rank == 0:
        whole.save(out / f"{tag}_whole.npz")
        streamed.save(out / f"{tag}_stream.npz")
        np.save(
            out / f"{tag}_curves.npy",
            torch.stack([reduced.class_curves(c, correct_only=False) for c in range(3)]).numpy(),
        )
    if dist.is_initialized():
        # every rank gets the full result
        np.save(
            out / f"rank{rank}_n.npy",
            np.array([whole.num_images, streamed.num_images, reduced.num_images]),
        )
    np.save(out / f"{tag}_rank{rank}_evaluated.npy", np.array(seen[0]))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[2] == "--distributed":
        dist.init_process_group("gloo")
        try:
            run(Path(sys.argv[1]))
        finally:
            dist.destroy_process_group()
    else:
        run(Path(sys.argv[1]))
