"""The model boundary (model.py): the output rule, CheckedForward, devices and dtypes."""

from __future__ import annotations

import warnings
from collections import OrderedDict, namedtuple

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_models import ZooOutput
from torch import nn

import occlusion_probe as op
from occlusion_probe import InputTypeError, InputValueError
from occlusion_probe.model import (
    CheckedForward,
    cast_images,
    check_outputs,
    input_dtype,
    model_dtype,
    resolve_device,
    unwrap_outputs,
)

Pair = namedtuple("Pair", ["scores", "aux"])

LOGITS = torch.arange(6.0).reshape(2, 3)


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        (LOGITS, "the tensor it returned"),
        (ZooOutput(LOGITS, torch.zeros(2, 4)), "the .logits of the ZooOutput it returned"),
        ({"logits": LOGITS, "aux": torch.zeros(1)}, 'the "logits" of the dict it returned'),
        (OrderedDict(logits=LOGITS), 'the "logits" of the OrderedDict it returned'),
        ((LOGITS, torch.zeros(2, 7)), "element 0 of the tuple it returned"),
        ([LOGITS], "element 0 of the list it returned"),
        (Pair(LOGITS, None), "element 0 of the Pair it returned"),
    ],
)
def test_unwrap_outputs_one_rule(raw: object, where: str) -> None:
    found = unwrap_outputs(raw)
    assert found is not None and found[0] is LOGITS and found[1] == where


@pytest.mark.parametrize(
    "raw", [LOGITS.numpy(), {"scores": LOGITS}, {"logits": "x"}, (), ("x", LOGITS), None, 3.0]
)
def test_unwrap_outputs_finds_nothing_outside_the_rule(raw: object) -> None:
    assert unwrap_outputs(raw) is None


def test_check_outputs_errors() -> None:
    assert check_outputs(LOGITS, 2) is LOGITS
    with pytest.raises(InputValueError, match=r"with B = 3, got shape \(2, 3\) \(somewhere\)"):
        check_outputs(LOGITS, 3, "somewhere")
    with pytest.raises(
        InputValueError, match=r"expected at least one class output \(K >= 1\), got shape \(2, 0\)"
    ):
        check_outputs(torch.zeros(2, 0), 2)
    with pytest.raises(
        InputTypeError, match=r"expected floating-point outputs, got dtype torch\.int64"
    ):
        check_outputs(LOGITS.long(), 2)
    with pytest.raises(InputTypeError, match="expected it to return a Tensor"):
        check_outputs([1, 2], 2)


def _forward(
    model: object, output: object = "logits", dtype: torch.dtype | None = None
) -> CheckedForward:
    return CheckedForward(model, output, single_channel=False, dtype=dtype)  # type: ignore[arg-type]


def test_checked_forward_unwraps_and_records() -> None:
    x = torch.rand(2, 1, 2, 2)
    probabilities = x / x.sum(dim=(1, 2, 3), keepdim=True)  # "probabilities" checks its rows
    for output in ("logits", "probabilities"):
        forward = _forward(lambda b: ZooOutput(b.flatten(1)), output)
        torch.testing.assert_close(forward(probabilities), probabilities.flatten(1))
    softmax = _forward(lambda b: {"logits": b.flatten(1)}, "softmax")
    torch.testing.assert_close(softmax(x), torch.softmax(x.flatten(1), 1))
    assert softmax.num_classes == 4
    with pytest.raises(
        InputTypeError,
        match=r"got dict with keys \['scores'\]; for other outputs pass output= a callable",
    ):
        _forward(lambda b: {"scores": b.flatten(1)})(x)


def test_output_callable_receives_what_the_model_returned() -> None:
    seen: list[object] = []

    def second(raw: object) -> torch.Tensor:
        seen.append(raw)
        assert isinstance(raw, tuple)
        return raw[1]

    forward = _forward(lambda b: (b, b.flatten(1)[:, :3]), second)
    out = forward(torch.rand(2, 1, 2, 2))
    assert out.shape == (2, 3) and isinstance(seen[0], tuple)
    bad_outputs = [
        (lambda raw: raw[1].long(), InputTypeError, "must return a floating-point Tensor"),
        (lambda raw: raw[1].numpy(), InputTypeError, "must return a floating-point Tensor"),
        (lambda raw: raw[1][:1], InputValueError, r"shape \(B, K\) with B = 2 and K >= 1"),
        (lambda raw: raw[1][:, :0], InputValueError, r"got shape \(2, 0\)"),
    ]
    for output, error, message in bad_outputs:
        with pytest.raises(error, match=message):
            _forward(lambda b: (b, b.flatten(1)[:, :3]), output)(torch.rand(2, 1, 2, 2))


def test_number_of_classes_fixed_by_the_first_call() -> None:
    forward = _forward(lambda b: b.flatten(1)[:, : b.shape[0] + 1])
    forward(torch.rand(2, 1, 3, 3))
    forward.where = "chunk 3 (images 768..1023)"
    with pytest.raises(
        InputValueError,
        match=r"expected 3 class outputs per image \(as on the first call\), got 4 for chunk 3 "
        r"\(images 768..1023\); the number of classes must not change",
    ):
        forward(torch.rand(3, 1, 3, 3))


def test_model_never_gets_the_callers_tensor() -> None:
    def in_place(b: torch.Tensor) -> torch.Tensor:
        b.sub_(0.5)
        return b.flatten(1)

    x = torch.rand(2, 1, 2, 2)
    before = x.clone()
    out = _forward(in_place)(x)
    assert torch.equal(x, before)
    torch.testing.assert_close(out, before.flatten(1) - 0.5)


def test_inputs_cast_to_the_model_dtype_outputs_stored_wide() -> None:
    seen: list[torch.dtype] = []

    def model(b: torch.Tensor) -> torch.Tensor:
        seen.append(b.dtype)
        return b.flatten(1)

    x = torch.rand(2, 1, 2, 2)
    assert _forward(model, dtype=torch.bfloat16)(x).dtype == torch.float32
    assert _forward(model, dtype=torch.float64)(x).dtype == torch.float64
    assert _forward(model, dtype=None)(x.half()).dtype == torch.float32
    assert seen == [torch.bfloat16, torch.float64, torch.float16]


def test_probabilities_warn_once_under_softmax() -> None:
    def probabilities(b: torch.Tensor) -> torch.Tensor:
        return torch.softmax(b.flatten(1), 1)

    forward = _forward(probabilities, "softmax")
    with pytest.warns(op.OcclusionProbeWarning, match='pass output="probabilities"'):
        forward(torch.rand(2, 1, 2, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        forward(torch.rand(2, 1, 2, 2))  # once only
        _forward(probabilities, "probabilities")(torch.rand(2, 1, 2, 2))
        _forward(lambda b: b.flatten(1), "softmax")(torch.rand(2, 1, 2, 2) + 1)  # logits: silent


@settings(max_examples=25, deadline=None)
@given(
    values=st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=6, max_size=6),
    k=st.sampled_from([2, 3]),
)
def test_probability_detection_matches_definition(values: list[float], k: int) -> None:
    from occlusion_probe.model import _looks_like_probabilities

    t = torch.tensor(values[: 2 * k]).reshape(2, k)
    rows_sum_to_one = bool(((t.sum(1) - 1).abs() <= 1e-3).all())
    assert _looks_like_probabilities(t) == (bool((t >= 0).all()) and rows_sum_to_one)
    assert _looks_like_probabilities(torch.softmax(t, 1))


def test_dtypes_of_models() -> None:
    conv = nn.Conv2d(1, 2, 3)
    assert input_dtype(conv) == torch.float32 and input_dtype(conv.double()) == torch.float64
    assert input_dtype(nn.Flatten()) is None and input_dtype(lambda x: x) is None
    assert model_dtype(nn.Flatten()) == torch.float32


def test_cast_images_refuses_overflow() -> None:
    x = torch.ones(1, 1, 2, 2)
    assert cast_images(x, None) is x and cast_images(x, torch.float32) is x
    assert cast_images(x * 6e4, torch.float16).dtype == torch.float16
    with pytest.raises(
        InputValueError,
        match=r"images: expected values the model's dtype torch.float16 can hold "
        r"\(\|x\| <= 6.55e\+04\), got values up to 1e\+05",
    ):
        cast_images(x * 1e5, torch.float16)


def test_resolve_device() -> None:
    cpu = torch.device("cpu")
    meta = torch.device("meta")
    # a callable (or a module without parameters) runs where the images are
    assert resolve_device(None, lambda x: x, meta) == meta
    assert resolve_device(None, nn.Flatten(), meta) == meta
    assert resolve_device(None, nn.Linear(2, 2), meta) == cpu
    assert resolve_device("meta", lambda x: x, cpu) == meta
    with pytest.raises(InputValueError, match="device: expected a torch device"):
        resolve_device("gpu0", lambda x: x, cpu)
    if not torch.cuda.is_available():
        for model in (lambda x: x, nn.Linear(2, 2)):
            with pytest.raises(
                InputValueError, match="device: expected a device this machine has, got 'cuda'"
            ):
                resolve_device("cuda", model, cpu)


def test_device_index_compared() -> None:
    from occlusion_probe.model import _same_device

    assert _same_device(torch.device("cuda", 0), torch.device("cuda", 0))
    assert not _same_device(torch.device("cuda", 0), torch.device("cuda", 1))
    assert _same_device(torch.device("cuda", 1), torch.device("cuda"))
    assert not _same_device(torch.device("cpu"), torch.device("cuda", 0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_devices_checked_on_a_gpu_machine() -> None:
    count = torch.cuda.device_count()
    cuda0 = torch.device("cuda", 0)
    with pytest.raises(InputValueError, match=rf"device: expected one of cuda:0..cuda:{count - 1}"):
        resolve_device(f"cuda:{count}", lambda x: x, torch.device("cpu"))
    assert resolve_device(None, lambda x: x, cuda0) == cuda0  # the images' device
    assert resolve_device("cuda", nn.Linear(2, 2).to(cuda0), cuda0) == cuda0
    with pytest.raises(InputValueError, match="device: the model's parameters are on cpu"):
        resolve_device("cuda:0", nn.Linear(2, 2), cuda0)


def test_known_outputs_reuse_the_first_call_only_for_the_same_leading_images() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    images = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    forward = _forward(model, "softmax")
    assert forward.known_outputs(images) is None  # no first call yet
    forward.check_first(images[:2], torch.device("cpu"))
    known = forward.known_outputs(images)
    assert known is not None
    with torch.inference_mode():
        torch.testing.assert_close(known, torch.softmax(model(images[:2]), dim=1))
    assert forward.known_outputs(images[1:]) is None  # another first image
    assert forward.known_outputs(images[:1]) is None  # fewer images than were checked
    assert forward.known_outputs(images.double()) is None  # another dtype
    changed = images.clone()
    changed[1, 0, 3, 3] += 1e-6
    assert forward.known_outputs(changed) is None  # equal to the bit, or not reused
