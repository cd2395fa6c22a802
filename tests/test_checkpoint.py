"""checkpoint=: one file per chunk, resume after SIGKILL or damage, locks, fingerprints."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from reference_models import small_cnn

import occlusion_probe as op
from occlusion_probe import OcclusionProbeWarning
from occlusion_probe.batching import BatchConfig, BatchPlan
from occlusion_probe.checkpoint import Checkpoint, CheckpointError, Fingerprint
from occlusion_probe.data import ImageSource
from occlusion_probe.fills import resolve_fills
from occlusion_probe.runplan import StoredPlan, warn_if_plan_differs

_INTERRUPT: dict[str, Any] = {}

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
    # Two calls check the model's output first (the same images twice: a model that changes
    # or is random is refused); then each batch of 4 images costs one model call (its
    # 4 x 24 occluded images and the 4 images themselves).
    clean = _run(tmp_path, tmp_path / "clean.ckpt", tmp_path / "clean.npz", 0)
    assert clean.returncode == 0, clean.stderr
    assert clean.stdout.split()[-1] == "8"

    killed = _run(tmp_path, tmp_path / "run.ckpt", tmp_path / "never.npz", 6)  # dies in batch 4
    assert killed.returncode == -signal.SIGKILL
    assert (tmp_path / "run.ckpt").exists() and not (tmp_path / "never.npz").exists()
    leftovers = [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert leftovers == []  # an atomic save never leaves a half-written file behind

    resumed = _run(tmp_path, tmp_path / "run.ckpt", tmp_path / "resumed.npz", 0)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.split()[-1] == "5"  # the check, then batches 4, 5, 6: three were done
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
    # A well-formed manifest whose fingerprint was edited: the checksum catches it.
    manifest = json.loads(data)
    manifest["fingerprint"]["model"] = "0" * 64
    path.write_text(json.dumps(manifest))
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
    with open(tmp_path / "old.ckpt", "wb") as handle:
        np.savez(handle, format=np.array("occlusion_probe.checkpoint.v1"))
    with pytest.raises(CheckpointError, match=r"has format 'occlusion_probe\.checkpoint\.v1'"):
        op.sweep(model, images, op.grid(12, 12), progress=False, checkpoint=tmp_path / "old.ckpt")
    assert issubclass(CheckpointError, ValueError)


_CALLS: list[int] = []


def _counting(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model, counting its calls in a global (closure contents are fingerprinted)."""

    def counted(x: torch.Tensor) -> torch.Tensor:
        _CALLS.append(int(x.shape[0]))
        return model(x)

    return counted


def test_damaged_chunk_files_are_recomputed_exactly(
    tmp_path: Path, setup: tuple[torch.nn.Module, torch.Tensor, torch.Tensor]
) -> None:
    model, images, labels = setup
    path, regions = tmp_path / "run.ckpt", op.grid(12, 12, 2, 2)
    batches = [(images[i : i + 1], labels[i : i + 1]) for i in range(6)]
    clean = op.sweep(model, batches, regions, progress=False, engine="dense", batch_size=1000)
    counted = _counting(model)
    op.sweep(
        counted, batches, regions, progress=False, engine="dense", batch_size=1000, checkpoint=path
    )
    chunks = sorted((tmp_path / "run.ckpt.chunks").iterdir())
    assert [c.name for c in chunks] == [f"chunk-{i:08d}.npz" for i in range(6)]
    chunks[1].write_bytes(chunks[1].read_bytes()[:-40])  # an interrupted write
    chunks[4].unlink()  # a lost file
    with np.load(chunks[2], allow_pickle=False) as stored:
        arrays = {key: stored[key] for key in stored.files}
    arrays["index"] = np.array(0)  # what decides the resume is under the checksum
    with open(chunks[2], "wb") as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]
    chunks[5].write_bytes(chunks[3].read_bytes())  # chunk 3's file under chunk 5's name
    _CALLS.clear()
    with pytest.warns(OcclusionProbeWarning, match="is damaged") as caught:
        resumed = op.sweep(
            _counting(model),
            batches,
            regions,
            progress=False,
            batch_size=1000,
            engine="dense",
            checkpoint=path,
        )
    reasons = " ".join(str(w.message) for w in caught)
    assert "unreadable" in reasons and "checksum does not match" in reasons
    assert "holds chunk 3, not 5" in reasons
    # The first call checks the model's output on the first image (before any heavy work),
    # then chunks 1, 2, 4 and 5 are recomputed: one call each, of the 24 occluded images and
    # the unoccluded one.
    assert _CALLS == [1, 1] + [25] * 4  # the first-call check runs twice
    assert resumed.num_images == 6
    assert torch.equal(resumed.occluded, clean.occluded)
    assert torch.equal(resumed.baseline, clean.baseline)
    _CALLS.clear()
    op.sweep(_counting(model), batches, regions, progress=False, engine="dense", checkpoint=path)
    assert _CALLS == [1, 1]  # only the first-call output check (twice): every chunk is stored


def test_class_mean_resume_is_bit_identical(
    tmp_path: Path, setup: tuple[torch.nn.Module, torch.Tensor, torch.Tensor]
) -> None:
    model, images, labels = setup
    batches = _batches(images, labels)
    clean = op.sweep(
        model, batches, op.grid(12, 12), progress=False, reduce="class_mean", engine="dense"
    )
    path = tmp_path / "means.ckpt"
    op.sweep(
        _counting(model),
        batches[:2],
        op.grid(12, 12),
        progress=False,
        reduce="class_mean",
        engine="dense",
        checkpoint=path,
    )
    _CALLS.clear()
    resumed = op.sweep(
        _counting(model),
        batches,
        op.grid(12, 12),
        progress=False,
        reduce="class_mean",
        checkpoint=path,
        batch_size=1000,
        engine="dense",
    )
    assert len(_CALLS) == 3  # the first-call output check (twice), then only the third batch
    for name in ("occluded_sum", "baseline_sum", "counts", "confusion"):
        assert torch.equal(getattr(resumed, name), getattr(clean, name)), name


def _bytes_written() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar in /proc/self/io")


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io")
def test_bytes_written_grow_linearly(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 5))
    images = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    written = {}
    for n in (10, 40):
        batches = [images[i : i + 1] for i in range(n)]
        before = _bytes_written()
        op.sweep(
            model,
            batches,
            op.grid(8, 8, 4, 4),
            progress=False,
            engine="dense",
            checkpoint=tmp_path / f"{n}",
        )
        written[n] = _bytes_written() - before
    chunk = (tmp_path / "40.chunks" / "chunk-00000000.npz").stat().st_size
    # Rewriting the whole state each chunk would write 40 * 41 / 2 = 820 chunks' worth (16x
    # the 10-chunk run); appending writes 40 (4x), plus the manifest and zipfile's header
    # rewrites (about a tenth).
    assert written[40] < 1.25 * 40 * chunk + 5000
    assert 3.5 < written[40] / written[10] < 4.5


def test_lock_refuses_a_second_user_and_is_released(
    tmp_path: Path, setup: tuple[torch.nn.Module, torch.Tensor, torch.Tensor]
) -> None:
    model, images, _ = setup
    path = tmp_path / "run.ckpt"
    holder = Checkpoint(path)  # another sweep on the same path, holding the flock
    with pytest.raises(
        CheckpointError,
        match=r"'.*run\.ckpt' is in use by another sweep, in this process or another",
    ):
        op.sweep(model, images, op.grid(12, 12), progress=False, checkpoint=path)
    holder.close()

    def failing(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("model failed")

    failed = tmp_path / "failed.ckpt"
    with pytest.raises(RuntimeError, match="model failed"):
        op.sweep(failing, images, op.grid(12, 12), progress=False, checkpoint=failed)
    Checkpoint(failed).close()  # the failed sweep released its lock
    op.sweep(model, images, op.grid(12, 12), progress=False, checkpoint=path)
    Checkpoint(path).close()  # and so did the finished one


def test_lock_is_exclusive_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt"
    probe = (
        "import fcntl, sys\n"
        "with open(sys.argv[1], 'a+b') as handle:\n"
        "    try:\n"
        "        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "        print('free')\n"
        "    except BlockingIOError:\n"
        "        print('held')\n"
    )
    lock = str(tmp_path / "run.ckpt.lock")
    holder = Checkpoint(path)
    try:
        held = subprocess.run([sys.executable, "-c", probe, lock], capture_output=True, text=True)
    finally:
        holder.close()
    free = subprocess.run([sys.executable, "-c", probe, lock], capture_output=True, text=True)
    assert (held.stdout.strip(), free.stdout.strip()) == ("held", "free"), held.stderr


def test_bad_places_fail_before_any_work(
    tmp_path: Path, setup: tuple[torch.nn.Module, torch.Tensor, torch.Tensor]
) -> None:
    model, images, _ = setup
    _CALLS.clear()
    with pytest.raises(CheckpointError, match=r"the folder '.*missing' of .* does not exist"):
        op.sweep(
            _counting(model),
            images,
            op.grid(12, 12),
            progress=False,
            checkpoint=tmp_path / "missing" / "run.ckpt",
        )
    with pytest.raises(CheckpointError, match="is a directory; expected the path of a checkpoint"):
        op.sweep(_counting(model), images, op.grid(12, 12), progress=False, checkpoint=tmp_path)
    assert _CALLS == []
    path = tmp_path / "run.ckpt"
    op.sweep(model, images, op.grid(12, 12), progress=False, checkpoint=path)
    path.unlink()
    with pytest.raises(CheckpointError, match=r"holds chunk files but the manifest .* is missing"):
        op.sweep(model, images, op.grid(12, 12), progress=False, checkpoint=path)


class _Tempered(torch.nn.Module):
    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(144, 3)
        self.temperature = temperature
        self.register_buffer("shift", torch.zeros(3), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1)) / self.temperature + self.shift


def _scaled(factor: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def fill(x: torch.Tensor) -> torch.Tensor:
        return x * factor

    return fill


def _fingerprint(model: object, fills: list[object], output: object = "softmax") -> Fingerprint:
    source = ImageSource(torch.zeros(2, 1, 12, 12), None, (12, 12))
    image_shape = (1, 12, 12)
    return Fingerprint.of(
        model,
        op.grid(12, 12),
        resolve_fills(fills, image_shape),  # type: ignore[arg-type]
        output,  # type: ignore[arg-type]
        None,
        source,
    )


def test_fingerprint_reads_what_decides_the_outputs() -> None:
    torch.manual_seed(0)
    model = _Tempered(1.0)
    base = _fingerprint(model, [0.0]).parts
    torch.manual_seed(0)
    assert _fingerprint(_Tempered(1.0), [0.0]).parts == base  # an equal model: same fingerprint
    model.temperature = 2.0
    assert _fingerprint(model, [0.0]).parts["model"] != base["model"]
    model.temperature = 1.0
    model.shift.add_(0.1)  # a non-persistent buffer
    assert _fingerprint(model, [0.0]).parts["model"] != base["model"]
    model.shift.zero_()
    assert _fingerprint(model, [0.0]).parts == base
    fills = {
        "lambda": _fingerprint(model, [lambda x: x * 0.5]).parts["fills"],
        "other lambda": _fingerprint(model, [lambda x: x * 0.7]).parts["fills"],
        "closure": _fingerprint(model, [_scaled(0.3)]).parts["fills"],
        "other closure": _fingerprint(model, [_scaled(0.5)]).parts["fills"],
        "default": _fingerprint(model, [lambda x, f=0.3: x * f]).parts["fills"],
        "other default": _fingerprint(model, [lambda x, f=0.4: x * f]).parts["fills"],
    }
    assert len(set(fills.values())) == len(fills)
    assert _fingerprint(model, [_scaled(0.3)]).parts["fills"] == fills["closure"]
    soft = _fingerprint(model, [0.0], lambda z: z.softmax(-1)).parts["settings"]
    hard = _fingerprint(model, [0.0], lambda z: z.softmax(-1) * 2).parts["settings"]
    assert soft != hard


def test_changed_attribute_or_fill_code_is_refused_on_resume(
    tmp_path: Path, setup: tuple[torch.nn.Module, torch.Tensor, torch.Tensor]
) -> None:
    _, images, _ = setup
    model, path = _Tempered(1.0).eval(), tmp_path / "run.ckpt"
    op.sweep(
        model, images, op.grid(12, 12), fills=[lambda x: x * 0.5], progress=False, checkpoint=path
    )
    with pytest.raises(CheckpointError, match="its fills differ"):
        op.sweep(
            model,
            images,
            op.grid(12, 12),
            fills=[lambda x: x * 0.6],
            progress=False,
            checkpoint=path,
        )
    model.temperature = 3.0
    with pytest.raises(CheckpointError, match="its model differ"):
        op.sweep(
            model,
            images,
            op.grid(12, 12),
            fills=[lambda x: x * 0.5],
            progress=False,
            checkpoint=path,
        )


def test_ctrl_c_keeps_checkpoint_and_says_how_to_resume(
    tmp_path: Path,
    setup: tuple[torch.nn.Module, torch.Tensor, torch.Tensor],
    capsys: pytest.CaptureFixture[str],
) -> None:
    model, images, labels = setup
    path = tmp_path / "run.ckpt"
    _INTERRUPT["calls"] = 0
    _INTERRUPT["model"] = model

    def interrupted(x: torch.Tensor) -> torch.Tensor:
        # A global counter: a closure's contents are fingerprinted, and a changed counter
        # would make the resumed call another run.
        _INTERRUPT["calls"] += 1
        if _INTERRUPT["calls"] == 5:  # the check (twice), batches 0 and 1, then in batch 2
            raise KeyboardInterrupt
        return _INTERRUPT["model"](x)

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


def test_a_linked_chunk_folder_or_lock_is_refused_before_any_work(
    tmp_path: Path, setup: tuple[torch.nn.Module, torch.Tensor, torch.Tensor]
) -> None:
    model, images, _ = setup
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = tmp_path / "run.ckpt"
    os.symlink(elsewhere, tmp_path / "run.ckpt.chunks")
    _CALLS.clear()
    with pytest.raises(CheckpointError, match=r"chunk folder .*run.ckpt.chunks.* symbolic link"):
        op.sweep(_counting(model), images, op.grid(12, 12), progress=False, checkpoint=path)
    (tmp_path / "run.ckpt.chunks").unlink()
    victim = tmp_path / "victim"
    victim.write_text("root-only")
    for target in (victim, tmp_path / "dangling"):
        os.symlink(target, tmp_path / "run.ckpt.lock")
        with pytest.raises(CheckpointError, match=r"lock file .*run.ckpt.lock.* symbolic link"):
            op.sweep(_counting(model), images, op.grid(12, 12), progress=False, checkpoint=path)
        (tmp_path / "run.ckpt.lock").unlink()
    (tmp_path / "run.ckpt.lock").mkdir()
    with pytest.raises(CheckpointError, match=r"lock file .*run.ckpt.lock.* is a folder"):
        op.sweep(_counting(model), images, op.grid(12, 12), progress=False, checkpoint=path)
    (tmp_path / "run.ckpt.lock").rmdir()
    (tmp_path / "run.ckpt.chunks").write_text("a file")
    with pytest.raises(CheckpointError, match=r"chunk folder .* is not a folder"):
        op.sweep(_counting(model), images, op.grid(12, 12), progress=False, checkpoint=path)
    assert _CALLS == [] and victim.read_text() == "root-only"
    assert not (tmp_path / "dangling").exists() and list(elsewhere.iterdir()) == []


def test_resume_deletes_only_the_librarys_own_temporary_files(
    tmp_path: Path, setup: tuple[torch.nn.Module, torch.Tensor, torch.Tensor]
) -> None:
    model, images, labels = setup
    path = tmp_path / "run.ckpt"
    first = op.sweep(
        model, _batches(images, labels), op.grid(12, 12), progress=False, checkpoint=path
    )
    chunks = tmp_path / "run.ckpt.chunks"
    users = [chunks / ".notes.tmp-1", chunks / ".chunk-00000001.npz.tmp-mine"]
    for file in users:
        file.write_text("a user's file")
    ours = chunks / f".chunk-00000002.npz.tmp-{os.getpid()}-{'ab' * 8}"
    ours.write_bytes(b"half a chunk")  # a write a crash interrupted
    again = op.sweep(
        model, _batches(images, labels), op.grid(12, 12), progress=False, checkpoint=path
    )
    assert torch.equal(first.occluded, again.occluded)
    assert all(file.read_text() == "a user's file" for file in users) and not ours.exists()


def test_a_deeply_nested_manifest_is_the_library_error(
    tmp_path: Path, setup: tuple[torch.nn.Module, torch.Tensor, torch.Tensor]
) -> None:
    model, images, _ = setup
    path = tmp_path / "run.ckpt"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match="is truncated or corrupted"):
        op.sweep(model, images, op.grid(12, 12), progress=False, checkpoint=path)


def test_a_compressed_chunk_file_is_recomputed_without_unpacking_it(
    tmp_path: Path, setup: tuple[torch.nn.Module, torch.Tensor, torch.Tensor]
) -> None:
    model, images, labels = setup
    path = tmp_path / "run.ckpt"
    first = op.sweep(
        model, _batches(images, labels), op.grid(12, 12), progress=False, checkpoint=path
    )
    chunk = tmp_path / "run.ckpt.chunks" / "chunk-00000001.npz"
    with np.load(chunk, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    np.savez_compressed(chunk, **arrays)  # type: ignore[arg-type]
    with pytest.warns(OcclusionProbeWarning, match="is damaged .*is compressed"):
        again = op.sweep(
            model, _batches(images, labels), op.grid(12, 12), progress=False, checkpoint=path
        )
    assert torch.equal(first.occluded, again.occluded)


class _SparseHead(torch.nn.Module):
    """A linear head whose weights are a sparse buffer (COO or CSR)."""

    def __init__(self, layout: torch.layout) -> None:
        super().__init__()
        dense = torch.zeros(3, 144)
        dense[0, :10], dense[1, 50:60], dense[2, 100:] = 0.5, -0.3, 0.2
        weight = dense.to_sparse() if layout == torch.sparse_coo else dense.to_sparse_csr()
        self.register_buffer("weight", weight)
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.weight @ x.flatten(1).T).T * self.scale


class _Lookup(torch.nn.Module):
    """Class offsets read from a numpy object array (and a slotted settings object)."""

    class Settings:
        __slots__ = ("__gain", "bias")

        def __init__(self, gain: float, bias: float) -> None:
            self.__gain, self.bias = gain, bias

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(144, 3)
        self.offsets = np.array([0.0, "x", (1, 2)], dtype=object)
        self.settings = _Lookup.Settings(1.0, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1)) + float(self.offsets[0]) + self.settings.bias


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta:UserWarning")
@pytest.mark.parametrize("layout", [torch.sparse_coo, torch.sparse_csr])
def test_changed_sparse_buffer_values_are_refused_on_resume(
    tmp_path: Path,
    setup: tuple[torch.nn.Module, torch.Tensor, torch.Tensor],
    layout: torch.layout,
) -> None:
    _, images, _ = setup
    model, path = _SparseHead(layout).eval(), tmp_path / "run.ckpt"
    base = _fingerprint(model, [0.0]).parts["model"]
    first = op.sweep(
        model, images, op.grid(12, 12), engine="dense", progress=False, checkpoint=path
    )
    with torch.no_grad():
        model.weight.values().mul_(2.0)  # same indices, other values
    assert _fingerprint(model, [0.0]).parts["model"] != base
    with pytest.raises(CheckpointError, match="its model differ"):
        op.sweep(model, images, op.grid(12, 12), engine="dense", progress=False, checkpoint=path)
    with torch.no_grad():
        model.weight.values().mul_(0.5)
    again = op.sweep(
        model, images, op.grid(12, 12), engine="dense", progress=False, checkpoint=path
    )
    assert torch.equal(first.occluded, again.occluded)


def test_sparse_fingerprint_reads_values_not_storage_order() -> None:
    def coo(indices: list[list[int]], values: list[float]) -> torch.Tensor:
        return torch.sparse_coo_tensor(
            torch.tensor(indices), torch.tensor(values), (2, 3), check_invariants=True
        )

    def digest(weight: torch.Tensor) -> str:
        return _fingerprint(lambda x, w=weight: x, [0.0]).parts["model"]

    duplicated = coo([[0, 1, 0], [2, 0, 2]], [1.0, 2.0, 3.0])  # (0, 2) twice: 1 + 3
    assert digest(duplicated) == digest(coo([[0, 1], [2, 0]], [4.0, 2.0]))
    assert digest(duplicated) != digest(coo([[0, 1], [2, 0]], [4.0, 2.5]))  # a value
    assert digest(duplicated) != digest(coo([[0, 1], [1, 0]], [4.0, 2.0]))  # an index

    def nested(last: float) -> torch.Tensor:
        parts = [torch.ones(2), torch.tensor([1.0, 2.0, last])]
        return torch.nested.nested_tensor(parts, layout=torch.jagged)

    assert digest(nested(3.0)) == digest(nested(3.0))
    assert digest(nested(3.0)) != digest(nested(4.0))


def test_changed_object_array_or_slot_attribute_is_refused_on_resume(
    tmp_path: Path, setup: tuple[torch.nn.Module, torch.Tensor, torch.Tensor]
) -> None:
    _, images, _ = setup
    torch.manual_seed(0)
    model, path = _Lookup().eval(), tmp_path / "run.ckpt"
    base = _fingerprint(model, [0.0]).parts["model"]
    torch.manual_seed(0)
    assert _fingerprint(_Lookup(), [0.0]).parts["model"] == base  # equal objects: equal digests
    op.sweep(model, images, op.grid(12, 12), progress=False, checkpoint=path)
    model.offsets[0] = 0.25
    assert _fingerprint(model, [0.0]).parts["model"] != base
    with pytest.raises(CheckpointError, match="its model differ"):
        op.sweep(model, images, op.grid(12, 12), progress=False, checkpoint=path)
    model.offsets[0] = 0.0
    model.offsets[2] = (1, 3)  # an element that forward does not read still counts
    assert _fingerprint(model, [0.0]).parts["model"] != base
    model.offsets[2] = (1, 2)
    model.settings._Settings__gain = 2.0  # type: ignore[attr-defined]
    assert _fingerprint(model, [0.0]).parts["model"] != base
    model.settings._Settings__gain = 1.0  # type: ignore[attr-defined]
    model.settings.bias = 0.5
    with pytest.raises(CheckpointError, match="its model differ"):
        op.sweep(model, images, op.grid(12, 12), progress=False, checkpoint=path)
    model.settings.bias = 0.0
    assert _fingerprint(model, [0.0]).parts["model"] == base


class _Stop(Exception):
    """Stands for a crash after the first chunk was saved."""


def _injected_auto(plan: Callable[[], BatchPlan]) -> Callable[..., BatchPlan]:
    def auto(*_args: object, **_kwargs: object) -> BatchPlan:
        return plan()

    return auto


def test_resume_reuses_the_stored_batch_plan_bit_for_bit(
    tmp_path: Path,
    setup: tuple[torch.nn.Module, torch.Tensor, torch.Tensor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, images, labels = setup
    batches, regions, path = _batches(images, labels), op.grid(12, 12, 1, 2), tmp_path / "r.ckpt"

    def run(size: int, source: object, **kwargs: Any) -> op.SweepResult:
        # What the timed trial of batch_size="auto" chooses, injected (no test reads a clock).
        monkeypatch.setattr(
            BatchPlan, "auto", _injected_auto(lambda: BatchPlan(BatchConfig(size), how="timed"))
        )
        return op.sweep(
            model, source, regions, [0.0, 0.5], engine="dense", progress=False, **kwargs
        )

    uninterrupted = run(1, batches)
    # One image per call rounds differently from 16 (6e-8 on this model): the control that
    # makes the equality below mean something.
    assert not torch.equal(run(16, batches).occluded, uninterrupted.occluded)

    def crashing() -> Any:
        yield batches[0]
        raise _Stop

    with pytest.raises(_Stop):
        run(1, crashing(), checkpoint=path)
    plan = json.loads(path.read_text())["plan"]
    assert (plan["engine"], plan["batch_size"], plan["channels_last"]) == ("dense", 1, False)
    resumed = run(16, batches, checkpoint=path)  # this run's own trial would choose 16
    assert torch.equal(resumed.occluded, uninterrupted.occluded)
    assert torch.equal(resumed.baseline, uninterrupted.baseline)
    assert "batches of 1 images (stored in the checkpoint)" in resumed.engine_note

    with pytest.warns(OcclusionProbeWarning, match=r"batch_size=16 \(the stored run used 1 "):
        again = run(16, batches, checkpoint=path, batch_size=16)  # given: used as given
    assert torch.equal(again.occluded, uninterrupted.occluded)  # every chunk was stored


def test_plan_is_recorded_only_once_the_trial_ended(
    tmp_path: Path,
    setup: tuple[torch.nn.Module, torch.Tensor, torch.Tensor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, images, labels = setup
    path = tmp_path / "r.ckpt"
    # A trial longer than the whole sweep never decides: nothing is recorded, and a resumed
    # run times its own.
    endless = [BatchConfig(2)] * 10_000
    monkeypatch.setattr(
        BatchPlan, "auto", _injected_auto(lambda: BatchPlan(BatchConfig(4), list(endless)))
    )
    op.sweep(model, _batches(images, labels), op.grid(12, 12, 1, 2), engine="dense",
             progress=False, checkpoint=path)  # fmt: skip
    assert "plan" not in json.loads(path.read_text())
    # A run whose batches are given records them after its first chunk.
    other = tmp_path / "given.ckpt"
    op.sweep(model, images, op.grid(12, 12, 1, 2), progress=False, checkpoint=other, batch_size=5)
    assert json.loads(other.read_text())["plan"]["batch_size"] == 5


def test_resume_reuses_the_stored_engine(
    tmp_path: Path, setup: tuple[torch.nn.Module, torch.Tensor, torch.Tensor]
) -> None:
    model, images, labels = setup
    path, regions = tmp_path / "r.ckpt", op.grid(12, 12, 1, 2)
    batches = _batches(images, labels)
    first = op.sweep(
        model, batches[:1], regions, engine="dense", batch_size=4, progress=False, checkpoint=path
    )
    assert first.engine == "dense"
    # engine="auto" alone would choose by measured costs; the resumed run keeps the stored one.
    resumed = op.sweep(model, batches, regions, progress=False, checkpoint=path)
    assert resumed.engine == "dense"
    assert "batches of 4 images (stored in the checkpoint)" in resumed.engine_note
    assert "dense engine requested (the engine the checkpointed run chose)" in resumed.engine_note
    with pytest.warns(OcclusionProbeWarning, match=r"engine='incremental' \(the stored run used"):
        warn_if_plan_differs(StoredPlan("dense", "", BatchConfig(4)), "incremental", "auto")


def test_unreadable_stored_plan_is_refused(
    tmp_path: Path, setup: tuple[torch.nn.Module, torch.Tensor, torch.Tensor]
) -> None:
    model, images, _ = setup
    path = tmp_path / "r.ckpt"
    op.sweep(model, images, op.grid(12, 12, 1, 2), progress=False, checkpoint=path, batch_size=4)
    manifest = json.loads(path.read_text())
    manifest["plan"]["batch_size"] = 0
    body = {key: value for key, value in manifest.items() if key != "checksum"}
    manifest["checksum"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"holds an unreadable plan \(batch_size 0 is not"):
        op.sweep(model, images, op.grid(12, 12, 1, 2), progress=False, checkpoint=path)
