"""Inputs that were silently coerced or gave raw errors end in the library's own error, or
are read by a documented rule (issue 28; docs/bad-input.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from reference_models import small_cnn
from torch import Tensor, nn

import occlusion_probe as op
from occlusion_probe import InputTypeError, InputValueError
from occlusion_probe.checkpoint import CheckpointError
from occlusion_probe.model import input_dtype

IMAGES = torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(6))
LABELS = torch.tensor([0, 1, 2, 0])
REGIONS = op.grid(12, 12, 2, 2)


@pytest.fixture
def model() -> nn.Module:
    return small_cnn().eval()


def test_bare_three_d_tensors_from_a_stream_are_ambiguous() -> None:
    rgb = (torch.rand(3, 8, 8) for _ in range(2))
    flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64, 2))
    with pytest.raises(
        InputValueError, match=r"images\[batch 0\]: a 3-d tensor of shape \(3, 8, 8\)"
    ):
        op.sweep(flat, rgb, op.grid(8, 8, 2, 2), progress=False)
    # with labels the count of images is known: (n, H, W) one-channel batches
    one_channel = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    pairs = [(torch.rand(3, 8, 8), torch.tensor([0, 1, 0]))]
    result = op.sweep(one_channel, pairs, op.grid(8, 8, 2, 2), progress=False)
    assert result.num_images == 3


def test_numpy_arrays_torch_cannot_take_as_they_are(model: nn.Module) -> None:
    array = IMAGES.numpy()
    masked = np.ma.masked_array(array, mask=array > 0.5)
    with pytest.raises(InputTypeError, match="images: got a numpy masked array; its mask would"):
        op.sweep(model, masked, REGIONS, progress=False)
    for bad in (array.astype(object), array.astype(np.longdouble)):
        with pytest.raises(InputTypeError, match="images: expected a numpy array of a dtype torch"):
            op.sweep(model, bad, REGIONS, progress=False)
    expected = op.sweep(model, IMAGES, REGIONS, [0.0], progress=False)
    # negative strides and big-endian data hold the same values: read as they are
    reversed_array = np.ascontiguousarray(array[::-1])[::-1]
    big_endian = array.astype(">f4")
    for same in (reversed_array, big_endian):
        result = op.sweep(model, same, REGIONS, [0.0], progress=False)
        torch.testing.assert_close(result.occluded, expected.occluded)
    with pytest.raises(InputTypeError, match="labels: got a numpy masked array"):
        op.sweep(model, IMAGES, REGIONS, labels=np.ma.masked_array(LABELS.numpy()), progress=False)


def test_meta_and_sparse_tensors_are_refused(model: nn.Module) -> None:
    with pytest.raises(InputValueError, match="images: got a tensor on the meta device"):
        op.sweep(model, IMAGES.to("meta"), REGIONS, progress=False)
    with pytest.raises(InputTypeError, match=r"images: expected a dense \(strided\) tensor"):
        op.sweep(model, IMAGES.to_sparse(), REGIONS, progress=False)
    with pytest.raises(InputValueError, match=r"fills\[0\]: got a tensor on the meta device"):
        op.sweep(model, IMAGES, REGIONS, [torch.zeros(1, 12, 12, device="meta")], progress=False)
    with pytest.raises(InputTypeError, match=r"fills\[0\]: expected a dense \(strided\) tensor"):
        op.sweep(model, IMAGES, REGIONS, [torch.zeros(1, 12, 12).to_sparse()], progress=False)
    with pytest.raises(InputTypeError, match=r"labels: expected a dense \(strided\) tensor"):
        op.sweep(model, IMAGES, REGIONS, labels=LABELS.to_sparse(), progress=False)


def test_numbers_too_large(model: nn.Module) -> None:
    with pytest.raises(
        InputValueError, match=r"fills\[0\]: expected a finite number, got an integer"
    ):
        op.sweep(model, IMAGES, REGIONS, [10**400], progress=False)
    with pytest.raises(InputValueError, match="labels: expected class labels in int64 range"):
        op.sweep(model, IMAGES, REGIONS, labels=[0, 1, 2, 2**64], progress=False)
    with pytest.raises(InputValueError, match="labels: expected class labels in int64 range"):
        op.sweep(
            model,
            IMAGES,
            REGIONS,
            labels=np.array([0, 1, 2, 2**64 - 1], dtype=np.uint64),
            progress=False,
        )


def test_zero_channels_and_dict_images(model: nn.Module) -> None:
    with pytest.raises(
        InputValueError, match=r"images: expected at least one channel, got shape \(4, 0, 12, 12\)"
    ):
        op.sweep(model, torch.rand(4, 0, 12, 12), REGIONS, progress=False)
    with pytest.raises(
        InputTypeError, match=r"images: got a dict with keys \['images'\], which would"
    ):
        op.sweep(model, {"images": IMAGES}, REGIONS, progress=False)  # type: ignore[arg-type]


def test_one_channel_images_given_as_n_h_w_to_a_conv_model(model: nn.Module) -> None:
    with pytest.raises(
        InputValueError,
        match=r"images: given without a channel axis \(N, 12x12\), .*images.unsqueeze\(1\)",
    ):
        op.sweep(model, IMAGES[:, 0], REGIONS, progress=False)


def test_callables_of_the_wrong_kind(model: nn.Module) -> None:
    with pytest.raises(
        InputTypeError, match=r"model: expected a callable taking .*got the class Linear"
    ):
        op.sweep(nn.Linear, IMAGES, REGIONS, progress=False)  # type: ignore[arg-type]
    with pytest.raises(InputTypeError, match="model: the Module given defines no forward"):
        op.sweep(nn.Module(), IMAGES, REGIONS, progress=False)
    with pytest.raises(
        InputTypeError, match=r"fills\[0\]: expected a callable taking one argument"
    ):
        op.sweep(model, IMAGES, REGIONS, [lambda a, b: a], progress=False)  # type: ignore[list-item]
    with pytest.raises(InputTypeError, match=r"output: calling the callable 'softmax' .* failed"):
        op.sweep(model, IMAGES, REGIONS, output=torch.softmax, progress=False)  # type: ignore[arg-type]
    with pytest.raises(InputTypeError, match="output: expected a callable taking one argument"):
        op.sweep(model, IMAGES, REGIONS, output=lambda raw, dim: raw, progress=False)  # type: ignore[arg-type,misc]


def test_outputs_that_softmax_or_probabilities_cannot_mean() -> None:
    one_logit = nn.Sequential(nn.Flatten(), nn.Linear(144, 1))
    with pytest.raises(InputValueError, match=r"output: softmax over the model's single output"):
        op.sweep(one_logit, IMAGES, REGIONS, progress=False)
    result = op.sweep(one_logit, IMAGES, REGIONS, output="logits", progress=False)
    assert result.num_classes == 1
    logits = small_cnn().eval()
    with pytest.raises(
        InputValueError, match=r'output: "probabilities" records outputs that are probabilities'
    ):
        op.sweep(logits, IMAGES, REGIONS, output="probabilities", progress=False)
    probabilities = nn.Sequential(small_cnn().eval(), nn.Softmax(dim=1))
    op.sweep(probabilities, IMAGES, REGIONS, output="probabilities", progress=False)


def test_the_input_dtype_is_the_dtype_of_most_parameters() -> None:
    net = small_cnn().eval()
    net.register_parameter("temperature", nn.Parameter(torch.ones((), dtype=torch.float16)))
    # registered on the root, so it comes first in parameters()
    assert next(iter(net.parameters())).dtype == torch.float16
    assert input_dtype(net) == torch.float32
    result = op.sweep(net, IMAGES, REGIONS, [0.0], progress=False)
    plain = op.sweep(small_cnn().eval(), IMAGES, REGIONS, [0.0], progress=False)
    torch.testing.assert_close(result.occluded, plain.occluded)
    assert input_dtype(nn.Linear(2, 2).half()) == torch.float16


def test_regions_keep_their_own_masks() -> None:
    masks = op.grid(12, 12, 2, 2).masks.clone()
    regions = op.Regions(masks, (1, 2, 3, 4))
    masks[0] = False  # the caller's tensor changes: the regions do not
    assert bool(regions.masks[0].any())
    regions.masks[1] = False  # the regions' own tensor changed in place: refused at use
    with pytest.raises(InputValueError, match="regions: its masks were changed in place"):
        op.sweep(small_cnn().eval(), IMAGES, regions, progress=False)


def test_region_geometry_that_cannot_be_swept_as_asked() -> None:
    with pytest.raises(
        InputValueError, match=r"stride: \(3, 3\) is larger than the window \(2, 2\)"
    ):
        op.sliding_windows(8, 8, window=2, stride=3)
    with pytest.raises(
        InputValueError, match=r"height, width: 1 regions of 1000000x1000000 pixels"
    ):
        op.grid(10**6, 10**6, 1, 1)
    with pytest.raises(InputValueError, match=r"height, width: .* GiB of masks"):
        op.sliding_windows(60000, 60000, window=2, stride=2)


def test_random_order_seed_and_unlabelled_order(model: nn.Module) -> None:
    with pytest.raises(InputValueError, match="seed: expected an int >= 0"):
        op.perturbation_curve(
            model, IMAGES, REGIONS, "random", labels=LABELS, seed=-1, progress=False
        )
    unlabelled = op.sweep(model, IMAGES, REGIONS, progress=False)
    with pytest.raises(InputValueError, match="order: a SweepResult without labels cannot rank"):
        op.perturbation_curve(model, IMAGES, REGIONS, unlabelled, labels=LABELS, progress=False)
    # per_image=True ranks each image by its own outputs: no labels needed
    op.perturbation_curve(
        model, IMAGES, REGIONS, unlabelled, labels=LABELS, per_image=True, progress=False
    )


@pytest.mark.parametrize(
    ("path", "error", "message"),
    [
        (123, InputTypeError, "checkpoint: expected None or a file path"),
        (True, InputTypeError, "checkpoint: expected None or a file path"),
        (b"x", InputTypeError, "checkpoint: expected None or a file path"),
        ("", CheckpointError, "checkpoint: expected a file path, got an empty string"),
        ("/", CheckpointError, "checkpoint: expected the path of a file, got '/'"),
        ("run\x00.ckpt", CheckpointError, "checkpoint: the path holds a NUL character"),
        ("x" * 300, CheckpointError, "checkpoint: the file name is 300 bytes long"),
    ],
)
def test_checkpoint_paths_refused_before_any_work(
    path: object, error: type[Exception], message: str, tmp_path: Path
) -> None:
    calls: list[int] = []

    def counted(x: Tensor) -> Tensor:
        calls.append(int(x.shape[0]))
        return x.flatten(1)[:, :3]

    with pytest.raises(error, match=message):
        op.sweep(counted, IMAGES, REGIONS, checkpoint=path, progress=False)  # type: ignore[arg-type]
    assert calls == []


def test_exported_programs_run_as_exported(model: nn.Module) -> None:
    exported = torch.export.export(
        model, (IMAGES,), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    plain = op.sweep(model, IMAGES, REGIONS, progress=False)
    for given in (exported, exported.module()):
        result = op.sweep(given, IMAGES, REGIONS, progress=False)  # type: ignore[arg-type]
        torch.testing.assert_close(result.occluded, plain.occluded)
        report = op.keep_only(given, IMAGES, LABELS, REGIONS, keep=[1], progress=False)  # type: ignore[arg-type]
        assert report.num_images == 4
    message = "model: the exported program fails on batches of other sizes than it was exported"
    static = torch.export.export(model, (IMAGES,))
    with pytest.raises(InputValueError, match=message):
        op.sweep(static, IMAGES, REGIONS, progress=False)  # type: ignore[arg-type]
    # exported with the batch the first check uses (2): found by the probe of one image
    two = torch.export.export(model, (IMAGES[:2],))
    for engine in ("auto", "dense"):
        with pytest.raises(InputValueError, match=message):
            op.sweep(two, IMAGES, REGIONS, engine=engine, progress=False)  # type: ignore[arg-type]
    with pytest.raises(InputValueError, match=message):
        op.keep_only(two.module(), IMAGES, LABELS, REGIONS, keep=[1], progress=False)


def test_keep_only_predicts_the_same_class_under_every_output(model: nn.Module) -> None:
    default = op.keep_only(model, IMAGES, LABELS, REGIONS, keep=[1, 2], progress=False)
    for output in ("logits", "softmax"):
        report = op.keep_only(
            model, IMAGES, LABELS, REGIONS, keep=[1, 2], output=output, progress=False
        )
        assert torch.equal(report.confusion, default.confusion)
    # logits whose softmax rounds to a tie in float32 still predict the larger one
    tiny = lambda x: torch.tensor([[0.0, 1e-9, 0.0]]).expand(x.shape[0], 3).clone()  # noqa: E731
    assert torch.equal(torch.softmax(tiny(IMAGES), 1)[0, 0], torch.softmax(tiny(IMAGES), 1)[0, 1])
    report = op.keep_only(
        tiny, IMAGES, torch.ones(4, dtype=torch.int64), REGIONS, keep=[1], progress=False
    )
    assert report.accuracy == 1.0


def test_the_note_says_given_only_for_a_given_batch_size(model: nn.Module) -> None:
    result = op.sweep(model, IMAGES[:1], REGIONS, [0.0], engine="incremental", progress=False)
    assert "regions (given)" not in result.engine_note
    assert "regions (planned from the engine's images per call" in result.engine_note


def test_help_of_sweep_documents_every_argument() -> None:
    doc = op.sweep.__doc__ or ""
    for name in ("refine", "approximate", "checkpoint", "reduce", "engine"):
        assert f"\n    {name} : " in doc, name


def test_compiled_modules_run_as_compiled(model: nn.Module) -> None:
    # The "eager" backend gives torch.compile's wrapper (an OptimizedModule, whose forward
    # is set on the instance) without the seconds inductor spends compiling.
    compiled = torch.compile(model, backend="eager")
    plain = op.sweep(model, IMAGES, REGIONS, engine="dense", progress=False)
    result = op.sweep(compiled, IMAGES, REGIONS, engine="dense", progress=False)
    torch.testing.assert_close(result.occluded, plain.occluded)
    report = op.keep_only(compiled, IMAGES, LABELS, REGIONS, keep=[1], progress=False)
    assert report.num_images == 4
