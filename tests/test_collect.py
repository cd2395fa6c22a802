"""reduce="class_mean": the same curves as the full result, in memory that does not grow with N."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from reference_models import small_cnn
from torch.utils.data import DataLoader, TensorDataset

import occlusion_probe as op
from occlusion_probe import ClassMeanResult, EmptySelectionError, InputValueError
from occlusion_probe.collect import ClassMeanCollector, FullCollector


def test_class_mean_equals_full_result() -> None:
    generator = torch.Generator().manual_seed(8)
    images = torch.rand(40, 1, 12, 12, generator=generator)
    model = small_cnn(classes=3).eval()
    with torch.no_grad():
        labels = model(images).argmax(1)
    labels[::3] = (labels[::3] + 1) % 3
    regions = op.grid(12, 12, 3, 3)
    # Both sweeps run the model in calls of 7 images: on some CPUs (oneDNN on an AVX-512
    # Xeon) float32 outputs change in the last bit with the batch size, and the drops are
    # differences of outputs, so the two results are compared on the same calls.
    full = op.sweep(model, images, regions, labels=labels, progress=False, batch_size=7)
    loader = DataLoader(TensorDataset(images, labels), batch_size=7)
    reduced = op.sweep(model, loader, regions, progress=False, reduce="class_mean", batch_size=7)
    assert isinstance(reduced, ClassMeanResult)
    assert reduced.num_images == 40
    for cls in range(3):
        for correct_only in (True, False):
            if full.selected_count(cls, correct_only=correct_only) == 0:
                continue
            torch.testing.assert_close(
                reduced.class_curves(cls, correct_only=correct_only),
                full.class_curves(cls, correct_only=correct_only),
                rtol=1e-9,
                atol=1e-12,
            )
            torch.testing.assert_close(
                reduced.mean_drop(cls, correct_only=correct_only).tensor,
                full.mean_drop(cls, correct_only=correct_only).tensor,
                rtol=1e-9,
                atol=1e-12,
            )
            assert reduced.ranking(cls, correct_only=correct_only) == full.ranking(
                cls, correct_only=correct_only
            )
    confusion = op.confusion_report(labels, full.predicted, 3).confusion
    assert torch.equal(reduced.confusion, confusion)
    assert reduced.accuracy == pytest.approx(float(full.correct.float().mean()))


def test_class_mean_needs_labels_and_raises_on_empty_class() -> None:
    model = small_cnn(classes=3).eval()
    images = torch.rand(4, 1, 12, 12)
    with pytest.raises(InputValueError, match='reduce: "class_mean" needs labels'):
        op.sweep(model, images, op.grid(12, 12), progress=False, reduce="class_mean")
    reduced = op.sweep(
        model,
        images,
        op.grid(12, 12),
        labels=torch.zeros(4, dtype=torch.int64),
        progress=False,
        reduce="class_mean",
    )
    with pytest.raises(EmptySelectionError, match="no image selected for class 2"):
        reduced.class_curves(2, correct_only=False)


_PEAK_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch
    import occlusion_probe as op

    n, reduce = int(sys.argv[1]), (sys.argv[2] if sys.argv[2] != "none" else None)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 100))

    def batches(count):
        generator = torch.Generator().manual_seed(1)
        for _ in range(count // 500):
            yield torch.rand(500, 1, 4, 4, generator=generator), torch.randint(0, 100, (500,), generator=generator)

    def status(field):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise RuntimeError(field)

    # Warm up (imports, allocator, kernels), then reset the peak (VmHWM) to the current RSS:
    # the growth measured after that is what this sweep holds, not what startup touched.
    op.sweep(model, batches(500), op.grid(4, 4, 2, 2), progress=False, reduce=reduce, batch_size=3000)
    Path("/proc/self/clear_refs").write_text("5")
    before = status("VmRSS")
    result = op.sweep(model, batches(n), op.grid(4, 4, 2, 2), progress=False, reduce=reduce, batch_size=3000)
    print(json.dumps({"growth_kib": status("VmHWM") - before}))
    """
)


def _peak_growth_kib(n: int, reduce: str) -> int:
    # glibc raises its mmap threshold as large blocks are freed, so later temporaries come
    # from a fragmented heap and the peak creeps up with the number of batches even though
    # nothing is kept. A fixed threshold makes the peak reflect what is actually held.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(n), reduce],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return int(json.loads(done.stdout.strip().splitlines()[-1])["growth_kib"])


@pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset"
)
def test_peak_memory_does_not_grow_with_n() -> None:
    # Full results keep 4 regions x 6 fills x 100 classes x 4 bytes = 9.6 KB per image:
    # 5,000 more images are ~48 MB more. The class-mean sums stay ~3.8 MB whatever N is.
    small = _peak_growth_kib(1000, "class_mean")
    large = _peak_growth_kib(6000, "class_mean")
    full_large = _peak_growth_kib(6000, "none")
    assert large - small < 8 * 1024, (small, large)
    assert full_large - large > 30 * 1024, (large, full_large)  # the measurement can see growth


@pytest.mark.parametrize("kind", [FullCollector, ClassMeanCollector])
def test_chunk_states_round_trip_and_misfits_add_nothing(
    kind: type[FullCollector] | type[ClassMeanCollector],
) -> None:
    generator = torch.Generator().manual_seed(0)
    baseline, occluded = torch.rand(4, 3, generator=generator), torch.rand(4, 5, 2, 3)
    labels = torch.tensor([0, 1, 2, 0])
    source = kind()
    source.add(baseline, occluded, labels, 0)
    state = source.last_chunk_state()
    restored = kind()
    restored.add_chunk_state(state, 0, 4, labels)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(restored.last_chunk_state().values(), state.values(), strict=True)
    )
    first = next(iter(state))
    misfits: list[tuple[dict[str, np.ndarray], int, torch.Tensor, str]] = [
        ({k: v for k, v in state.items() if k != first}, 4, labels, "chunk state: expected arrays"),
        ({**state, "extra": np.zeros(1)}, 4, labels, "chunk state: expected arrays"),
        ({**state, first: state[first][None]}, 4, labels, f"chunk state: {first} has"),
        (state, 3, labels[:3], "chunk state: "),
        (state, 4, torch.tensor([1, 1, 2, 0]), "chunk state: its label"),
    ]
    for arrays, images, chunk_labels, match in misfits:
        target = kind()
        with pytest.raises(InputValueError, match=match):
            target.add_chunk_state(arrays, 0, images, chunk_labels)
        if isinstance(target, ClassMeanCollector):
            assert target.sums == {}  # nothing was added
        else:
            assert target.baselines == []
