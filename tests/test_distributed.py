"""torchrun --nproc_per_node=2 with gloo on CPU gives the same results as one process."""

from __future__ import annotations

import re
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


AGREEMENT_WORKER = Path(__file__).parent / "distributed_agreement_worker.py"


def test_ranks_given_different_sweeps_all_refuse_before_any_work(tmp_path: Path) -> None:
    launched = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(AGREEMENT_WORKER),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    expected = {
        "count": r"images: rank 0 has 37 images of 1x12x12, sha256 \w+; rank 1 has 30 images",
        "pixels": r"images: rank 0 has 6 images of 1x12x12, sha256 \w+; rank 1 has 6 images",
        "labels": r"labels: rank 0 has labels, sha256 \w+; rank 1 has labels, sha256 \w+\. ",
        "model": r"model: rank 0 has torch.nn.modules.container.Sequential, parameters and "
        r"buffers sha256 \w+; rank 1 has torch.nn.modules.container.Sequential, parameters",
        "closure": r"model: rank 0 has function __main__\.cases\.[\w.<>]+, parameters and buffers "
        r"sha256 \w+; rank 1",
        "regions": r"regions: rank 0 has 4 regions, ids and masks sha256 \w+; rank 1 has 6 ",
        "fills": r"fills: rank 0 has \['0.0'\], values sha256 \w+; rank 1 has \['0.5'\]",
        "output": r"output: rank 0 has output='softmax', reduce=None; rank 1 has output='logits'",
    }
    for rank in (0, 1):
        for name, pattern in expected.items():
            text = (tmp_path / f"rank{rank}_{name}.txt").read_text()
            assert text.startswith("RankMismatchError: sweep: the 2 ranks"), (rank, name, text)
            assert re.search(pattern, text), (rank, name, text)
        # Only the differing item is named, and the model never ran before the refusals.
        assert "images:" not in (tmp_path / f"rank{rank}_model.txt").read_text()
        assert (tmp_path / f"rank{rank}_calls.txt").read_text() == "ok tensor([])"
        # The process group is still in step: an agreeing sweep runs on both ranks.
        assert (tmp_path / f"rank{rank}_agreeing.txt").read_text() == "ok 6"


def test_describe_inputs_reads_what_decides_a_shard() -> None:
    from occlusion_probe.data import ImageSource
    from occlusion_probe.distributed import describe_inputs
    from occlusion_probe.fills import resolve_fills

    images = torch.rand(5, 1, 12, 12, generator=torch.Generator().manual_seed(0))

    def facts(
        model: object, x: torch.Tensor = images, fills: list[float] | None = None
    ) -> dict[str, str]:
        source = ImageSource(x, None, (12, 12))
        fill_list = resolve_fills(fills or [0.0], (1, 12, 12))
        return describe_inputs(model, x, None, source, op.grid(12, 12), fill_list, "softmax", None)

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(144, 3))
    base = facts(model)
    assert base["images"].startswith("5 images of 1x12x12, sha256 ")
    assert base["labels"] == "no labels"
    assert facts(model) == base  # the same inputs: the same texts
    changed = images.clone()
    changed[4, 0, 0, 0] += 0.5
    assert facts(model, changed)["images"] != base["images"]
    assert facts(model, fills=[0.5])["fills"] != base["fills"]

    def wrapped(x: torch.Tensor) -> torch.Tensor:
        return model(x)

    held = facts(wrapped)["model"]
    assert "parameters and buffers sha256" in held
    with torch.no_grad():
        model[1].bias.add_(1.0)  # a module the closure holds changed: the fact changes
    assert facts(wrapped)["model"] != held
    assert facts(model)["model"] != base["model"]
    assert "compared by type only" in facts(torch.softmax)["model"]
