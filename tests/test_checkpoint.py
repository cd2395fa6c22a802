"""checkpoint=: atomic saves, resume after SIGKILL, refusing other runs' or damaged files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from reference_models import small_cnn

import occlusion_probe as op
from occlusion_probe.checkpoint import CheckpointError

_RUN = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    import occlusion_probe as op
    sys.path.insert(0, {tests!r})
    from reference_models import small_cnn

    checkpoint, out, kill_after = sys.argv[1], sys.argv[2], int(sys.argv[3])
    model = small_cnn(classes=3).eval()
    calls = 0

    def counting_model(x):
        global calls
        calls += 1
        if kill_after and calls == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: like a crash or OOM kill
        return model(x)

    generator = torch.Generator().manual_seed(0)
    images = torch.rand(24, 1, 12, 12, generator=generator)
    labels = torch.randint(0, 3, (24,), generator=generator)
    batches = [(images[i : i + 4], labels[i : i + 4]) for i in range(0, 24, 4)]
    result = op.sweep(counting_model, batches, op.grid(12, 12, 2, 2), progress=False,
                      batch_size=1000, checkpoint=checkpoint)
    result.save(out)
    print("calls", calls)
    """
)


def _run(
    tmp_path: Path, checkpoint: Path, out: Path, kill_after: int
) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "run.py"
    script.write_text(_RUN.format(tests=str(Path(__file__).parent)))
    return subprocess.run(
        [sys.executable, str(script), str(checkpoint), str(out), str(kill_after)],
        capture_output=True,
        text=True,
    )


def test_sigkill_then_resume_gives_identical_results(tmp_path: Path) -> None:
    # One call checks the model's output first; then each batch of 4 images costs 2 model
    # calls (baseline + 24 occluded copies in one call).
    clean = _run(tmp_path, tmp_path / "clean.ckpt", tmp_path / "clean.npz", 0)
    assert clean.returncode == 0, clean.stderr
    assert clean.stdout.split()[-1] == "13"

    killed = _run(tmp_path, tmp_path / "run.ckpt", tmp_path / "never.npz", 8)  # dies in batch 4
    assert killed.returncode == -signal.SIGKILL
    assert (tmp_path / "run.ckpt").exists() and not (tmp_path / "never.npz").exists()
    leftovers = [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert leftovers == []  # an atomic save never leaves a half-written file behind

    resumed = _run(tmp_path, tmp_path / "run.ckpt", tmp_path / "resumed.npz", 0)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.split()[-1] == "7"  # the check, then batches 4, 5, 6: three were done
    a, b = (
        op.SweepResult.load(tmp_path / "clean.npz"),
        op.SweepResult.load(tmp_path / "resumed.npz"),
    )
    assert torch.equal(a.occluded, b.occluded) and torch.equal(a.baseline, b.baseline)
    assert a.labels is not None and b.labels is not None and torch.equal(a.labels, b.labels)


@pytest.fixture
def setup() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return (
        small_cnn(classes=3).eval(),
        torch.rand(6, 1, 12, 12, generator=generator),
        torch.randint(0, 3, (6,), generator=generator),
    )


def _batches(images: torch.Tensor, labels: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(images[i : i + 2], labels[i : i + 2]) for i in range(0, images.shape[0], 2)]


def test_completed_checkpoint_is_reused(
    tmp_path: Path, setup: tuple[torch.nn.Module, torch.Tensor, torch.Tensor]
) -> None:
    model, images, labels = setup
    path = tmp_path / "run.ckpt"
    first = op.sweep(model, images, op.grid(12, 12), labels=labels, progress=False, checkpoint=path)
    calls = []

    def spy(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return model(x)

    # Same weights, regions and images, but a different callable wrapping the model counts as another model.
    with pytest.raises(CheckpointError, match="its model differ"):
        op.sweep(spy, images, op.grid(12, 12), labels=labels, progress=False, checkpoint=path)
    again = op.sweep(model, images, op.grid(12, 12), labels=labels, progress=False, checkpoint=path)
    assert torch.equal(first.occluded, again.occluded)


@pytest.mark.parametrize(
    ("change", "what"),
    [
        ("weights", "model"),
        ("regions", "regions"),
        ("fills", "fills"),
        ("output", "settings"),
    ],
)
def test_other_runs_checkpoint_is_refused(
    tmp_path: Path,
    setup: tuple[torch.nn.Module, torch.Tensor, torch.Tensor],
    change: str,
    what: str,
) -> None:
    model, images, labels = setup
    path = tmp_path / "run.ckpt"
    op.sweep(model, images, op.grid(12, 12), labels=labels, progress=False, checkpoint=path)
    kwargs: dict[str, object] = {"progress": False, "checkpoint": path, "labels": labels}
    regions = op.grid(12, 12)
    if change == "weights":
        with torch.no_grad():
            model[0].weight.add_(0.01)
    elif change == "regions":
        regions = op.grid(12, 12, 3, 3)
    elif change == "fills":
        kwargs["fills"] = [0.0, 0.5]
    else:
        kwargs["output"] = "logits"
    with pytest.raises(
        CheckpointError, match=f"was written by a different run \\(its {what} differ"
    ):
        op.sweep(model, images, regions, **kwargs)  # type: ignore[call-overload]


def test_checkpoint_for_other_images_is_refused(
    tmp_path: Path, setup: tuple[torch.nn.Module, torch.Tensor, torch.Tensor]
) -> None:
    model, images, labels = setup
    path = tmp_path / "run.ckpt"
    op.sweep(model, _batches(images, labels), op.grid(12, 12), progress=False, checkpoint=path)
    other = images.clone()
    other[0, 0, 0, 0] += 0.5
    with pytest.raises(CheckpointError, match="was written for different images"):
        op.sweep(model, _batches(other, labels), op.grid(12, 12), progress=False, checkpoint=path)


def test_truncated_and_corrupted_files_are_reported(
    tmp_path: Path, setup: tuple[torch.nn.Module, torch.Tensor, torch.Tensor]
) -> None:
    model, images, labels = setup
    path = tmp_path / "run.ckpt"
    op.sweep(model, images, op.grid(12, 12), labels=labels, progress=False, checkpoint=path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="is truncated or corrupted and was not loaded"):
        op.sweep(model, images, op.grid(12, 12), labels=labels, progress=False, checkpoint=path)
    # A well-formed file whose arrays were altered: the checksum catches it.
    path.write_bytes(data)
    with np.load(path, allow_pickle=False) as stored:
        arrays = {key: stored[key] for key in stored.files}
    arrays["occluded"] = arrays["occluded"] + 1.0
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    with pytest.raises(CheckpointError, match="is corrupted \\(its checksum does not match"):
        op.sweep(model, images, op.grid(12, 12), labels=labels, progress=False, checkpoint=path)
    np.savez(tmp_path / "foreign.npz", x=np.zeros(2))
    with pytest.raises(CheckpointError, match="is not an occlusion_probe checkpoint"):
        op.sweep(
            model,
            images,
            op.grid(12, 12),
            labels=labels,
            progress=False,
            checkpoint=tmp_path / "foreign.npz",
        )
    assert issubclass(CheckpointError, ValueError)


def test_ctrl_c_keeps_checkpoint_and_says_how_to_resume(
    tmp_path: Path,
    setup: tuple[torch.nn.Module, torch.Tensor, torch.Tensor],
    capsys: pytest.CaptureFixture[str],
) -> None:
    model, images, labels = setup
    path = tmp_path / "run.ckpt"
    calls = 0

    def interrupted(x: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 5:
            raise KeyboardInterrupt
        return model(x)

    with pytest.raises(KeyboardInterrupt):
        op.sweep(
            interrupted,
            _batches(images, labels),
            op.grid(12, 12),
            progress=False,
            batch_size=1000,
            checkpoint=path,
        )
    err = capsys.readouterr().err
    assert (
        "interrupted; completed chunks are saved in" in err and "same checkpoint= to resume" in err
    )
    resumed = op.sweep(
        interrupted,
        _batches(images, labels),
        op.grid(12, 12),
        progress=False,
        batch_size=1000,
        checkpoint=path,
    )
    clean = op.sweep(model, images, op.grid(12, 12), labels=labels, progress=False)
    torch.testing.assert_close(resumed.occluded, clean.occluded)
    assert not any(".tmp-" in p.name for p in tmp_path.iterdir())
    assert os.path.getsize(path) > 0
