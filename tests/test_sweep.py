from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_models import reference_sweep, small_cnn
from torch import nn

import occlusion_probe as op
from occlusion_probe import InputTypeError, InputValueError

FILLS = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


@pytest.mark.parametrize("engine", ["dense", "incremental", "auto"])
def test_matches_plain_loop(engine: str, cnn: nn.Module, images: torch.Tensor) -> None:
    regions = op.grid(12, 12, 3, 3)
    result = op.sweep(cnn, images, regions, progress=False, engine=engine)  # type: ignore[arg-type]
    expected = reference_sweep(cnn, images, regions.masks, FILLS)
    torch.testing.assert_close(result.occluded, expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(result.baseline, torch.softmax(cnn(images), 1))
    assert result.fill_labels == ("0.0", "0.2", "0.4", "0.6", "0.8", "1.0")


@pytest.mark.parametrize("n", [1, 2])
def test_batch_sizes_one_and_two(n: int, cnn: nn.Module) -> None:
    images = torch.rand(n, 1, 12, 12)
    result = op.sweep(cnn, images, op.grid(12, 12), fills=[0.5], progress=False, batch_size=3)
    assert result.occluded.shape == (n, 16, 1, 5)
    torch.testing.assert_close(
        result.occluded, reference_sweep(cnn, images, op.grid(12, 12).masks, [0.5])
    )


def test_zero_images_is_an_error(cnn: nn.Module) -> None:
    with pytest.raises(
        InputValueError, match="images: expected at least one image, got an empty batch"
    ):
        op.sweep(cnn, torch.rand(0, 1, 12, 12), op.grid(12, 12), progress=False)


def test_auto_engine_explains_fallback(images: torch.Tensor) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(144, 3))
    result = op.sweep(lambda x: model(x), images, op.grid(12, 12), progress=False)
    assert result.engine == "dense"
    assert result.engine_note.startswith("incremental engine not applicable:")
    with pytest.raises(InputValueError, match='engine: "incremental" cannot run this model'):
        op.sweep(lambda x: model(x), images, op.grid(12, 12), progress=False, engine="incremental")
    with pytest.raises(
        InputValueError, match='engine: expected "auto", "dense" or "incremental", got \'fast\''
    ):
        op.sweep(model, images, op.grid(12, 12), progress=False, engine="fast")  # type: ignore[call-overload]


@settings(max_examples=15, deadline=None)
@given(batch_size=st.integers(1, 80), seed=st.integers(0, 10))
def test_independent_of_batch_size_and_order(batch_size: int, seed: int) -> None:
    model = small_cnn().eval()
    images = torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(seed))
    regions = op.grid(12, 12, 2, 3)
    full = op.sweep(model, images, regions, progress=False, engine="dense")
    chunked = op.sweep(
        model, images, regions, progress=False, engine="dense", batch_size=batch_size
    )
    torch.testing.assert_close(chunked.occluded, full.occluded, rtol=1e-5, atol=1e-6)
    order = torch.randperm(4, generator=torch.Generator().manual_seed(seed))
    permuted = op.sweep(model, images[order], regions, progress=False, batch_size=batch_size)
    torch.testing.assert_close(permuted.occluded, full.occluded[order], rtol=1e-5, atol=1e-6)


def test_tensor_and_callable_fills(cnn: nn.Module, images: torch.Tensor) -> None:
    regions = op.grid(12, 12, 2, 2)
    mean_image = images.mean(0)
    blur = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)

    def blurred(batch: torch.Tensor) -> torch.Tensor:
        return blur(batch)

    result = op.sweep(
        cnn, images, regions, fills=[mean_image, blurred, torch.tensor(0.3)], progress=False
    )
    assert result.fill_labels == ("tensor0", "blurred", "0.3")
    with torch.no_grad():
        for i in range(images.shape[0]):
            for j in range(4):
                m = regions.masks[j]
                expected = [
                    torch.where(m, mean_image, images[i]),
                    torch.where(m, blur(images[i : i + 1])[0], images[i]),
                    torch.where(m, torch.tensor(0.3), images[i]),
                ]
                for v, x in enumerate(expected):
                    torch.testing.assert_close(
                        result.occluded[i, j, v], torch.softmax(cnn(x[None]), 1)[0]
                    )


def test_three_dim_images_feed_the_model_three_dims() -> None:
    seen: list[tuple[int, ...]] = []
    weights = torch.randn(64, 3)

    def model(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape[1:]))
        return x.reshape(x.shape[0], -1) @ weights

    images = torch.rand(3, 8, 8)
    result = op.sweep(model, images, op.grid(8, 8, 2, 2), progress=False)
    assert set(seen) == {(8, 8)}
    assert result.image_shape == (8, 8)
    assert result.attribution(0).shape == (3, 8, 8)
    assert result.engine == "dense"


def test_linear_model_looking_at_area_11_ranks_it_first() -> None:
    weight = torch.zeros(2, 1, 48, 48)
    weight[1, 0, 24:36, 24:36] = 1.0 / 144  # class 1 reads only area 11

    def model(x: torch.Tensor) -> torch.Tensor:
        return 20 * x.flatten(1) @ weight.flatten(1).T

    images = torch.full((6, 1, 48, 48), 0.9) + 0.05 * torch.rand(6, 1, 48, 48)
    labels = torch.ones(6, dtype=torch.int64)
    result = op.sweep(
        model, images, op.grid(48, 48), labels=labels, output="logits", progress=False
    )
    assert bool(result.correct.all())
    ranking = result.ranking(1)
    assert ranking[0] == 11
    drops = result.mean_drop(1)
    assert float(drops[10]) > 1.0 and float(drops[torch.arange(16) != 10].abs().max()) < 1e-5
    curves = result.class_curves(1)
    assert bool((curves[10, :-1] < curves[10, 1:]).all())  # brighter fills hurt less


def test_train_mode_restored_and_inference_mode(images: torch.Tensor) -> None:
    model = small_cnn()
    model.train()
    model[1].eval()  # a deliberately mixed state must survive
    grad_modes: list[bool] = []

    class Spy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            grad_modes.append(torch.is_inference_mode_enabled() and not self.training)
            return x

    wrapped = nn.Sequential(Spy(), model)
    op.sweep(wrapped, images, op.grid(12, 12, 2, 2), progress=False)
    assert grad_modes and all(grad_modes)
    assert model.training and not model[1].training and model[0].training


def test_logits_and_callable_output(cnn: nn.Module, images: torch.Tensor) -> None:
    regions = op.grid(12, 12, 2, 2)
    logits = op.sweep(cnn, images, regions, output="logits", progress=False)
    probs = op.sweep(cnn, images, regions, progress=False)
    torch.testing.assert_close(torch.softmax(logits.occluded, -1), probs.occluded)

    def log_probs(x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(x, dim=1)

    logp = op.sweep(cnn, images, regions, output=log_probs, progress=False)
    assert logp.output == "log_probs"
    torch.testing.assert_close(logp.occluded.exp(), probs.occluded, rtol=1e-5, atol=1e-6)
    with pytest.raises(
        InputValueError,
        match='output: expected "softmax", "logits", "probabilities" or a callable, got \'probs\'',
    ):
        op.sweep(cnn, images, regions, output="probs", progress=False)


def test_progress_bar_writes_to_stderr(
    cnn: nn.Module, images: torch.Tensor, capsys: pytest.CaptureFixture[str]
) -> None:
    op.sweep(cnn, images, op.grid(12, 12, 2, 2), progress=True)
    assert "occlusion sweep" in capsys.readouterr().err


# -- bad input ------------------------------------------------------------------------------


def test_image_size_must_match_regions(cnn: nn.Module) -> None:
    with pytest.raises(
        InputValueError, match="images: image size 10x12 does not match the regions' 12x12"
    ):
        op.sweep(cnn, torch.rand(2, 1, 10, 12), op.grid(12, 12), progress=False)


@pytest.mark.parametrize(
    ("images", "error", "message"),
    [
        (
            torch.zeros(2, 1, 12, 12, dtype=torch.uint8),
            InputTypeError,
            "expected a floating-point tensor, got dtype torch.uint8",
        ),
        (
            torch.zeros(12, 12),
            InputValueError,
            r"expected shape \(N, C, H, W\) or \(N, H, W\), got shape \(12, 12\)",
        ),
        ("images", InputTypeError, "images: expected a Tensor"),
    ],
)
def test_bad_images(images: object, error: type[Exception], message: str, cnn: nn.Module) -> None:
    with pytest.raises(error, match=message):
        op.sweep(cnn, images, op.grid(12, 12), progress=False)  # type: ignore[arg-type]


def test_nan_images_named(cnn: nn.Module) -> None:
    images = torch.rand(4, 1, 12, 12)
    images[2, 0, 3, 3] = float("nan")
    with pytest.raises(
        InputValueError, match=r"images: images contain NaN or inf values \(first images \[2\]\)"
    ):
        op.sweep(cnn, images, op.grid(12, 12), progress=False)


def test_fills_validation(cnn: nn.Module, images: torch.Tensor) -> None:
    regions = op.grid(12, 12)
    with pytest.raises(
        InputValueError, match="fills: expected at least one fill value, got an empty sequence"
    ):
        op.sweep(cnn, images, regions, fills=[], progress=False)
    with pytest.raises(
        InputValueError,
        match=r"fills\[0\]: expected a tensor broadcastable to one image of shape \(1, 12, 12\), got shape \(3, 12, 12\)",
    ):
        op.sweep(cnn, images, regions, fills=[torch.zeros(3, 12, 12)], progress=False)
    with pytest.raises(InputValueError, match=r"fills\[1\]: expected a finite number, got nan"):
        op.sweep(cnn, images, regions, fills=[0.0, float("nan")], progress=False)
    with pytest.raises(
        InputTypeError, match=r"fills\[0\]: expected a number, tensor or callable, got bool"
    ):
        op.sweep(cnn, images, regions, fills=[True], progress=False)
    with pytest.raises(InputTypeError, match="fills: expected a sequence"):
        op.sweep(cnn, images, regions, fills="0.0", progress=False)  # type: ignore[arg-type]
    with pytest.raises(InputValueError, match="returned shape"):
        op.sweep(cnn, images, regions, fills=[lambda x: x[:, :, :2]], progress=False)


def test_labels_validation(cnn: nn.Module, images: torch.Tensor) -> None:
    regions = op.grid(12, 12)
    with pytest.raises(
        InputValueError,
        match=r"labels: expected one label per image, shape \(5,\), got shape \(4,\)",
    ):
        op.sweep(cnn, images, regions, labels=torch.zeros(4, dtype=torch.int64), progress=False)
    with pytest.raises(
        InputValueError,
        match=r"labels: expected class labels in \[0, 4\] \(the model has 5 outputs\), got values 0..7; first offending positions \[3\]",
    ):
        op.sweep(cnn, images, regions, labels=torch.tensor([0, 1, 2, 7, 0]), progress=False)
    with pytest.raises(
        InputTypeError, match=r"labels: expected an integer dtype, got torch\.float32"
    ):
        op.sweep(cnn, images, regions, labels=torch.zeros(5), progress=False)
    result = op.sweep(cnn, images, regions, labels=[0, 1, 2, 3, 4], progress=False)
    assert result.labels is not None and result.labels.dtype == torch.int64


@pytest.mark.parametrize(
    ("model", "error", "message"),
    [
        (
            lambda x: x.flatten(1).sum(1),
            InputValueError,
            r"model: expected outputs of shape \(B, K\) with B = \d+, got shape \(\d+,\)",
        ),
        (lambda x: x.flatten(1)[:1], InputValueError, r"model: expected outputs of shape \(B, K\)"),
        (
            lambda x: x.flatten(1).numpy(),
            InputTypeError,
            "model: expected it to return a Tensor of shape",
        ),
        (lambda x: x.flatten(1).long(), InputTypeError, "model: expected floating-point outputs"),
        (42, InputTypeError, "model: expected a callable"),
    ],
)
def test_bad_model_outputs(
    model: object, error: type[Exception], message: str, images: torch.Tensor
) -> None:
    with pytest.raises(error, match=message):
        op.sweep(model, images, op.grid(12, 12), progress=False)  # type: ignore[arg-type]


def test_non_finite_outputs_name_first_images(images: torch.Tensor) -> None:
    def model(x: torch.Tensor) -> torch.Tensor:
        out = x.flatten(1)[:, :3].clone()
        out[x[:, 0, 0, 0] == 0.0] = float("inf")  # only images whose area 1 is occluded with 0.0
        return out

    with pytest.raises(
        InputValueError, match=r"NaN or inf outputs for occluded copies of images \[0, 1, 2, 3, 4\]"
    ):
        op.sweep(model, images, op.grid(12, 12), progress=False)

    def broken_baseline(x: torch.Tensor) -> torch.Tensor:
        out = x.flatten(1)[:, :3].clone()
        out[1] = float("nan")
        return out

    with pytest.raises(InputValueError, match=r"unoccluded copies of images \[1\]"):
        op.sweep(broken_baseline, images, op.grid(12, 12), progress=False, batch_size=100)


def test_other_argument_errors(cnn: nn.Module, images: torch.Tensor) -> None:
    with pytest.raises(InputTypeError, match="regions: expected a Regions"):
        op.sweep(cnn, images, torch.ones(2, 12, 12, dtype=torch.bool), progress=False)  # type: ignore[arg-type]
    with pytest.raises(
        InputValueError, match='batch_size: expected a positive int or "auto", got 0'
    ):
        op.sweep(cnn, images, op.grid(12, 12), progress=False, batch_size=0)
    with pytest.raises(
        InputValueError, match="reduce: expected None or \"class_mean\", got 'mean'"
    ):
        op.sweep(cnn, images, op.grid(12, 12), progress=False, reduce="mean")  # type: ignore[call-overload]
    with pytest.raises(
        InputValueError,
        match="device: the model's parameters are on cpu, but device='meta' was given",
    ):
        op.sweep(cnn, images, op.grid(12, 12), progress=False, device="meta")
    with pytest.raises(InputValueError, match="device: expected a torch device"):
        op.sweep(cnn, images, op.grid(12, 12), progress=False, device="gpu0")


def test_auto_batch_size_is_a_power_of_two_within_budget() -> None:
    from occlusion_probe.sweep import auto_batch_size

    cpu = torch.device("cpu")
    # 1 MiB of float32 input: 113 images of 1x48x48, rounded down to a power of two.
    assert auto_batch_size((1, 48, 48), cpu, 10**6) == 64
    assert auto_batch_size((1, 48, 48), cpu, 7) == 7
    # Large images: at least 4 per call while 4 fit in 16 MiB, else one.
    assert auto_batch_size((3, 224, 224), cpu, 100) == 4
    assert auto_batch_size((3, 224, 224), cpu, 3) == 3
    assert auto_batch_size((3, 2000, 2000), cpu, 100) == 1


def test_fill_far_outside_image_range_warns(cnn: nn.Module, images: torch.Tensor) -> None:
    with pytest.warns(
        op.OcclusionProbeWarning, match=r"fills: \['128.0'\] lie outside the images' value range"
    ):
        op.sweep(cnn, images, op.grid(12, 12, 2, 2), fills=[0.0, 128.0], progress=False)
    # just outside the range on purpose (black or a negative marker on bright images): silent
    op.sweep(cnn, images * 0.1 + 0.9, op.grid(12, 12, 2, 2), fills=[0.0, -0.5], progress=False)
