"""torchrun --nproc_per_node=2 with gloo on CPU gives the same results as one process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

import occlusion_probe as op

WORKER = Path(__file__).parent / "distributed_worker.py"


def test_torchrun_two_ranks_equal_single_process(tmp_path: Path) -> None:
    launched = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(WORKER),
            str(tmp_path),
            "--distributed",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    single = subprocess.run(
        [sys.executable, str(WORKER), str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert single.returncode == 0, single.stderr[-3000:]
    for name in ("whole", "stream"):
        a = op.SweepResult.load(tmp_path / f"dist_{name}.npz")
        b = op.SweepResult.load(tmp_path / f"single_{name}.npz")
        assert a.num_images == b.num_images == 23
        torch.testing.assert_close(a.occluded, b.occluded)
        torch.testing.assert_close(a.baseline, b.baseline)
        assert a.labels is not None and b.labels is not None and torch.equal(a.labels, b.labels)
    np.testing.assert_allclose(
        np.load(tmp_path / "dist_curves.npy"), np.load(tmp_path / "single_curves.npy"), rtol=1e-6
    )
    for rank in (0, 1):
        assert np.load(tmp_path / f"rank{rank}_n.npy").tolist() == [23, 23, 23]
    # each rank ran the model on its shard only: 12 + 11 of the 23 images (each with 9 x 6
    # copies and itself), plus the 2 first images twice in the calls that check the model's
    # output up front (a model that changes or is random is refused); rank 0's shard starts
    # with those, so their unoccluded outputs are not computed again
    evaluated = [int(np.load(tmp_path / f"dist_rank{rank}_evaluated.npy")) for rank in (0, 1)]
    assert evaluated == [12 * 55 + 2, 11 * 55 + 4]
    assert int(np.load(tmp_path / "single_rank0_evaluated.npy")) == 23 * 55 + 2


def test_no_shard_without_process_group() -> None:
    from occlusion_probe.distributed import current_shard

    assert current_shard() is None
