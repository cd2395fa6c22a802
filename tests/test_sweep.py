from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_models import ZooNet, reference_sweep, small_cnn
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
    assert drops[11] > 1.0 and max(abs(drops[i]) for i in drops if i != 11) < 1e-5
    curves = result.class_curves(1)
    assert bool((curves[10, :-1] < curves[10, 1:]).all())  # brighter fills hurt less


@pytest.mark.parametrize("engine", ["dense", "incremental", "auto"])
def test_train_mode_restored_and_inference_mode(images: torch.Tensor, engine: str) -> None:
    """Every call of the model runs in eval mode under inference mode; torch.export's
    tracing (reading the graph, on fake tensors) runs in eval mode too."""
    model = small_cnn()
    model.train()
    model[1].eval()  # a deliberately mixed state must survive
    runs: list[bool] = []
    traces: list[bool] = []

    class Spy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if torch.compiler.is_exporting():
                traces.append(not self.training)
            else:
                runs.append(torch.is_inference_mode_enabled() and not self.training)
            return x

    wrapped = nn.Sequential(Spy(), model)
    result = op.sweep(wrapped, images, op.grid(12, 12, 2, 2), engine=engine, progress=False)  # type: ignore[arg-type]
    assert runs and all(runs) and all(traces)
    assert bool(traces) or result.engine == "dense"  # the incremental engine read the graph
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
            r"expected shape \(N, C, H, W\) or \(N, H, W\) for regions with 2 spatial axes, got shape \(12, 12\)",
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
        # NaN only for image 1 itself: every occluded copy differs from it somewhere.
        out = x.flatten(1)[:, :3].clone()
        out[(x == images[1]).flatten(1).all(dim=1)] = float("nan")
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


def test_fill_far_outside_image_range_warns(cnn: nn.Module, images: torch.Tensor) -> None:
    with pytest.warns(
        op.OcclusionProbeWarning, match=r"fills: \['128.0'\] lie outside the images' value range"
    ):
        op.sweep(cnn, images, op.grid(12, 12, 2, 2), fills=[0.0, 128.0], progress=False)
    # just outside the range on purpose (black or a negative marker on bright images): silent
    op.sweep(cnn, images * 0.1 + 0.9, op.grid(12, 12, 2, 2), fills=[0.0, -0.5], progress=False)


# --------------------------------------------------------------------------- model boundary

TWO_FILLS = [0.0, 0.5]


@pytest.mark.parametrize("kind", ["dataclass", "mapping", "tuple"])
@pytest.mark.parametrize("engine", ["dense", "incremental"])
def test_zoo_outputs_read_by_the_rule(kind: str, engine: str, images: torch.Tensor) -> None:
    model = ZooNet(kind)
    regions = op.grid(12, 12, 2, 2)
    result = op.sweep(model, images, regions, TWO_FILLS, progress=False, engine=engine)  # type: ignore[arg-type]
    assert result.engine == engine
    expected = reference_sweep(model.net, images, regions.masks, TWO_FILLS)
    torch.testing.assert_close(result.occluded, expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(result.baseline, torch.softmax(model.net(images), 1))


def test_unreadable_output_refused_on_the_first_call(images: torch.Tensor) -> None:
    calls: list[int] = []

    class Scores(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = small_cnn().eval()

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            calls.append(x.shape[0])
            return {"scores": self.net(x)}

    model = Scores()
    with pytest.raises(InputTypeError, match=r"got dict with keys \['scores'\]; .*pass output="):
        op.sweep(model, images, op.grid(12, 12), progress=False, engine="incremental")
    assert calls == [2]  # one small call, before torch.export reads the model
    result = op.sweep(
        model, images, op.grid(12, 12), progress=False, output=lambda raw: raw["scores"]
    )
    with torch.no_grad():
        torch.testing.assert_close(result.baseline, model.net(images))

    class NoClasses(Scores):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            return self.net(x)[:, :0]

    with pytest.raises(InputValueError, match=r"at least one class output \(K >= 1\)"):
        op.sweep(NoClasses(), images, op.grid(12, 12), progress=False, engine="incremental")
    with pytest.raises(InputTypeError, match="must return a floating-point Tensor"):
        op.sweep(
            model, images, op.grid(12, 12), progress=False, output=lambda raw: raw["scores"].long()
        )


@pytest.mark.parametrize(
    ("dtype", "engine", "tolerance"),
    [
        (torch.float64, "dense", 1e-6),
        (torch.float64, "incremental", 1e-6),
        # measured: 6e-4 (bfloat16) and 8e-5 (float16) off the float32 model, both engines
        (torch.bfloat16, "dense", 5e-3),
        (torch.bfloat16, "incremental", 5e-3),
        (torch.float16, "dense", 1e-3),
        (torch.float16, "incremental", 1e-3),
    ],
)
def test_low_and_high_precision_models(
    dtype: torch.dtype, engine: str, tolerance: float, images: torch.Tensor
) -> None:
    import copy

    model32 = small_cnn().eval()
    model = copy.deepcopy(model32).to(dtype)
    regions = op.grid(12, 12, 2, 2)
    want = op.sweep(model32, images, regions, progress=False, engine="dense")
    got = op.sweep(model, images, regions, progress=False, engine=engine)  # type: ignore[arg-type]
    stored = torch.float64 if dtype == torch.float64 else torch.float32
    assert got.occluded.dtype == got.baseline.dtype == stored
    # the float32 model's probabilities, rounded to the model's dtype, within `tolerance`
    torch.testing.assert_close(
        got.occluded, want.occluded.to(dtype).to(stored), rtol=0, atol=tolerance
    )
    torch.testing.assert_close(
        got.baseline, want.baseline.to(dtype).to(stored), rtol=0, atol=tolerance
    )


def test_double_softmax_warns_and_probabilities_are_recorded_as_they_are(
    images: torch.Tensor,
) -> None:
    model = nn.Sequential(small_cnn(), nn.Softmax(dim=1)).eval()
    regions = op.grid(12, 12, 2, 2)
    with pytest.warns(op.OcclusionProbeWarning, match='output="probabilities"') as caught:
        op.sweep(model, images, regions, progress=False)
    assert len([w for w in caught if "probabilities" in str(w.message)]) == 1
    result = op.sweep(model, images, regions, progress=False, output="probabilities")
    assert result.output == "probabilities"
    with torch.no_grad():
        torch.testing.assert_close(result.baseline, model(images))


@pytest.mark.parametrize("engine", ["dense", "incremental"])
def test_in_place_model_sees_copies(engine: str, images: torch.Tensor) -> None:
    class Normalise(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = small_cnn().eval()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x.sub_(0.5))

    model = Normalise()
    given = images.clone()
    regions = op.grid(12, 12, 2, 2)
    result = op.sweep(model, given, regions, TWO_FILLS, progress=False, engine=engine)  # type: ignore[arg-type]
    assert torch.equal(given, images)
    expected = reference_sweep(lambda x: model.net(x - 0.5), images, regions.masks, TWO_FILLS)  # type: ignore[arg-type]
    torch.testing.assert_close(result.occluded, expected, rtol=1e-5, atol=1e-6)


def test_cuda_device_without_cuda_is_a_clear_error(images: torch.Tensor) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for model in (lambda x: x.flatten(1)[:, :3], small_cnn()):
        with pytest.raises(InputValueError, match=r"device: .* CUDA is not available"):
            op.sweep(model, images, op.grid(12, 12), progress=False, device="cuda")


def test_number_of_classes_must_not_change(images: torch.Tensor) -> None:
    calls = 0

    def growing(x: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        # the first check (twice), then batch 0 (occluded and unoccluded), then batch 1
        calls += 1
        return x.flatten(1)[:, : 3 if calls <= 3 else 4]

    batches = [images[:2], images[2:]]
    with pytest.raises(
        InputValueError,
        match=r"expected 3 class outputs per image \(as on the first call\), got 4 for batch 1 "
        "of the stream",
    ):
        op.sweep(growing, batches, op.grid(12, 12), progress=False, batch_size=1000)


def test_list_of_single_images_is_refused(cnn: nn.Module) -> None:
    rgb = [torch.rand(3, 8, 8), torch.rand(3, 8, 8)]
    with pytest.raises(
        InputValueError, match=r"images\[0\]: a list or tuple given as images must hold batches"
    ):
        op.sweep(lambda x: x.flatten(1), rgb, op.grid(8, 8, 2, 2), progress=False)
    stacked = op.sweep(
        lambda x: x.flatten(1)[:, :4], torch.stack(rgb), op.grid(8, 8, 2, 2), progress=False
    )
    assert stacked.occluded.shape[0] == 2
    with pytest.raises(InputValueError, match=r"images\[1\]: a list or tuple given as images"):
        op.sweep(
            cnn,
            (torch.rand(4, 1, 12, 12), torch.tensor([0, 1, 2, 3])),
            op.grid(12, 12),
            progress=False,
        )


def test_boundary_argument_errors(cnn: nn.Module, images: torch.Tensor) -> None:
    import numpy as np

    regions = op.grid(12, 12, 2, 2)
    for value in ("yes", None, 1):
        with pytest.raises(InputTypeError, match="progress: expected True or False"):
            op.sweep(cnn, images, regions, progress=value)  # type: ignore[arg-type]
    with pytest.raises(InputTypeError, match="labels: expected integer class labels, got ndarray"):
        op.sweep(cnn, images, regions, labels=np.array(list("abcde")), progress=False)  # type: ignore[arg-type]
    empty = [(images[:0], torch.zeros(0, dtype=torch.int64))] * 2
    with pytest.raises(InputValueError, match="a stream whose batches are all empty"):
        op.sweep(cnn, empty, regions, progress=False)


def test_fills_the_model_dtype_cannot_hold_or_that_are_not_real(
    cnn: nn.Module, images: torch.Tensor
) -> None:
    regions = op.grid(12, 12, 2, 2)
    with pytest.raises(
        InputValueError,
        match=r"fills\[1\]: expected a value the model's dtype torch.float32 can hold",
    ):
        op.sweep(cnn, images, regions, fills=[0.0, 1e39], progress=False)
    half = small_cnn().half().eval()
    with pytest.raises(InputValueError, match=r"fills\[0\]: .* torch.float16 can hold"):
        op.sweep(half, images, regions, fills=[torch.full((1, 12, 12), 1e5)], progress=False)
    for bad in (torch.tensor(1 + 2j), torch.tensor(True)):
        with pytest.raises(InputTypeError, match=r"fills\[0\]: expected a real number"):
            op.sweep(cnn, images, regions, fills=[bad], progress=False)

    def nan_fill(x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x, float("nan"))

    with pytest.raises(
        InputValueError, match="fills: the callable 'nan_fill' returned NaN or inf values"
    ):
        op.sweep(cnn, images, regions, fills=[nan_fill], progress=False)


# -- signals and volumes ----------------------------------------------------------------------


def _rank_model(rank: int, channels: int, classes: int = 3) -> nn.Module:
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[rank]
    pool = {1: nn.AdaptiveMaxPool1d, 2: nn.AdaptiveMaxPool2d, 3: nn.AdaptiveMaxPool3d}[rank]
    torch.manual_seed(10 + rank)
    return nn.Sequential(
        conv(channels, 5, 3, padding=1), nn.ReLU(), pool(2), nn.Flatten(),
        nn.Linear(5 * 2**rank, classes),
    ).eval()  # fmt: skip


@pytest.mark.parametrize(
    ("shape", "regions"),
    [
        ((32,), op.sliding_windows((32,), window=8, stride=4)),
        ((6, 8, 10), op.grid((6, 8, 10), (2, 2, 3))),
        (
            (8, 8, 8),
            op.sliding_windows((8, 8, 8), window=4, stride=4, box=((0, 8), (4, 8), (0, 8))),
        ),
    ],
    ids=["1d-windows", "3d-grid", "3d-boxed-windows"],
)
@pytest.mark.parametrize("channel_axis", [True, False], ids=["channels", "no-channel-axis"])
def test_signals_and_volumes_equal_a_loop_of_forwards(
    shape: tuple[int, ...], regions: op.Regions, channel_axis: bool
) -> None:
    inner = _rank_model(len(shape), 2 if channel_axis else 1)

    def model(x: torch.Tensor) -> torch.Tensor:
        # without a channel axis the model gets (B, *spatial), as the images were given
        return inner(x if channel_axis else x[:, None])

    generator = torch.Generator().manual_seed(0)
    images = torch.rand(3, *((2,) if channel_axis else ()), *shape, generator=generator)
    fills = (0.0, 0.7)
    result = op.sweep(model, images, regions, fills=fills, engine="dense", progress=False)
    assert result.image_shape == tuple(images.shape[1:])
    with torch.no_grad():
        for r, mask in enumerate(regions.masks):
            for v, fill in enumerate(fills):
                want = torch.softmax(model(torch.where(mask, torch.tensor(fill), images)), dim=1)
                torch.testing.assert_close(result.occluded[:, r, v], want, rtol=0, atol=1e-6)
        torch.testing.assert_close(result.baseline, torch.softmax(model(images), dim=1))
    assert result.heatmap(0).shape == (3, *shape)
    assert result.attribution(0).shape == images.shape
    assert result.engine_note.startswith("dense engine requested")


def test_keep_only_and_curves_on_volumes_equal_a_loop() -> None:
    shape = (6, 6, 6)
    model = _rank_model(3, 1)
    volumes = torch.rand(4, 1, *shape, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 0])
    regions = op.grid(shape, 2)
    report = op.keep_only(model, volumes, labels, regions, keep=[1, 8], fill=0.1, progress=False)
    with torch.no_grad():
        kept = torch.where(regions.union([1, 8]), volumes, torch.tensor(0.1))
        predicted = model(kept).argmax(dim=1)
    assert report.confusion.sum() == 4
    assert report.accuracy == pytest.approx(float((predicted == labels).float().mean()))
    order = [3, 1, 8, 2, 4, 5, 6, 7]
    curve = op.perturbation_curve(model, volumes, regions, order, mode="remove", labels=labels, fill=0.0, progress=False)  # fmt: skip
    with torch.no_grad():
        for k in range(len(regions) + 1):
            removed = regions.union(order[:k])
            correct = model(torch.where(removed, torch.tensor(0.0), volumes)).argmax(1) == labels
            assert curve.accuracy[k] == pytest.approx(float(correct.float().mean()))


def test_streams_of_volumes_and_their_errors() -> None:
    shape = (4, 4, 4)
    model = _rank_model(3, 1)
    regions = op.grid(shape, 2)
    volumes = torch.rand(5, 1, *shape, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1, 2, 0, 1])
    whole = op.sweep(model, volumes, regions, labels=labels, fills=0.0, progress=False)
    batches = [(volumes[:2], labels[:2]), (volumes[2:], labels[2:])]
    streamed = op.sweep(model, batches, regions, fills=0.0, progress=False)
    torch.testing.assert_close(streamed.occluded, whole.occluded)
    with pytest.raises(InputValueError, match=r"a 4-d tensor of shape \(2, 4, 4, 4\) without labels is ambiguous: one \(C, D, H, W\) image"):  # fmt: skip
        op.sweep(model, iter([volumes[:2, 0]]), regions, progress=False)
    with pytest.raises(InputValueError, match=r"expected shape \(N, C, D, H, W\) or \(N, D, H, W\) for regions with 3 spatial axes, got shape \(5, 4, 4\)"):  # fmt: skip
        op.sweep(model, volumes[:, 0, 0], regions, progress=False)
    with pytest.raises(
        InputValueError, match=r"image size 4x4x5 does not match the regions' 4x4x4"
    ):
        op.sweep(model, torch.rand(2, 1, 4, 4, 5), regions, progress=False)
    with pytest.raises(InputValueError, match=r"or \(N, C, L\) tensors; got"):
        op.sweep(model, [torch.rand(3, 8)], op.grid((8,), 2), progress=False)
