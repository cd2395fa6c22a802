"""Small models and plain reference loops shared by the tests.

A module of its own (not conftest.py): tests/examples has a conftest.py too, and
``from conftest import ...`` would pick whichever was imported first.
"""

from __future__ import annotations

import dataclasses
import itertools

import torch
from torch import nn


def small_cnn(in_channels: int = 1, classes: int = 5, size: int = 12) -> nn.Sequential:
    """A small conv net (eval-mode BatchNorm, dropout) for exactness tests."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(in_channels, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.Tanh(),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(6 * (size // 2) ** 2, classes),
    )


def reference_sweep(
    model: nn.Module, images: torch.Tensor, masks: torch.Tensor, fills: list[float]
) -> torch.Tensor:
    """The plain per-image loop: (N, R, V, K) softmax outputs."""
    n, r, v = images.shape[0], masks.shape[0], len(fills)
    out = []
    with torch.no_grad():
        for i in range(n):
            per_region = []
            for j in range(r):
                per_fill = []
                for fill in fills:
                    occluded = images[i].clone()
                    occluded[:, masks[j]] = fill
                    per_fill.append(torch.softmax(model(occluded[None]), dim=1)[0])
                per_region.append(torch.stack(per_fill))
            out.append(torch.stack(per_region))
    return torch.stack(out).reshape(n, r, v, -1)


# --------------------------------------------------------------------------- architectures
# The architectures users run, written from their papers, with random weights (seeded) and
# non-trivial batch-norm statistics (running means and variances away from 0, 1). Each takes
# size parameters (width, depth, growth rate, classes): the defaults are the tiny versions the
# tests use; benchmarks/architectures.py builds the 224x224 versions from the same code.


def randomize_batch_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every batch norm (1D, 2D or 3D) non-trivial running statistics and affine
    parameters."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            c = module.num_features
            module.running_mean.copy_(torch.rand(c, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(c, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(c, generator=generator) - 0.5)
    return model.eval()


#: VGG's configuration A (VGG-11) and D (VGG-16) from Simonyan & Zisserman 2015, Table 1:
#: output channels of each 3x3 conv, "M" a 2x2 max pool (stride 2).
VGG11_LAYOUT: tuple[int | str, ...] = (
    64,
    "M",
    128,
    "M",
    256,
    256,
    "M",
    512,
    512,
    "M",
    512,
    512,
    "M",
)
VGG16_LAYOUT: tuple[int | str, ...] = (
    *(64, 64, "M", 128, 128, "M"),
    *(256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
)


def vgg(
    layout: tuple[int | str, ...] = VGG16_LAYOUT,
    divisor: int = 16,
    size: int = 32,
    hidden: tuple[int, ...] = (32, 32),
    classes: int = 5,
    in_channels: int = 3,
    seed: int = 0,
) -> nn.Sequential:
    """A VGG net (Simonyan & Zisserman 2015) as one flat ``nn.Sequential``: 3x3 convs
    (padding 1) + ReLU, 2x2 max pools at the "M" entries, then fully connected layers of
    `hidden` units (ReLU, dropout 0.5; the paper's are 4096, 4096) and `classes` outputs.

    divisor : every conv width of `layout` is divided by it (1: the paper's widths)
    size : the input's height and width (sets the first fully connected layer's inputs)
    """
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    channels = in_channels
    for entry in layout:
        if entry == "M":
            layers.append(nn.MaxPool2d(2))
            size //= 2
        else:
            width = max(1, int(entry) // divisor)
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
            channels = width
    layers.append(nn.Flatten())
    features = channels * size * size
    for units in hidden:
        layers += [nn.Linear(features, units), nn.ReLU(), nn.Dropout(0.5)]
        features = units
    layers.append(nn.Linear(features, classes))
    return nn.Sequential(*layers).eval()


def vgg_max_pooled(
    layout: tuple[int | str, ...] = VGG16_LAYOUT[:-1],
    divisor: int = 16,
    hidden: int = 1024,
    classes: int = 4,
    seed: int = 0,
) -> nn.Sequential:
    """VGG's convolutions ending in class score maps and a global max pool, the weakly
    supervised localisation net of Oquab et al. (CVPR 2015): it takes any input size, and
    each class's output is its score at the best position.

    The default layout is VGG-16's without pool5; as in Zhou et al.'s CAM (CVPR 2016) a 3x3
    conv of `hidden` units follows conv5_3, then a 1x1 conv to `classes` score maps and
    ``AdaptiveMaxPool2d(1)``. Every 3x3 conv is followed by BatchNorm (Ioffe & Szegedy 2015)
    so that the net trains from scratch in minutes.

    divisor : every conv width of `layout` and `hidden` is divided by it (1: the paper's)
    """
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    channels = 3
    for entry in (*layout, hidden):
        if entry == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        width = max(1, int(entry) // divisor)
        layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                   nn.ReLU()]  # fmt: skip
        channels = width
    layers += [nn.Conv2d(channels, classes, 1), nn.AdaptiveMaxPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers).eval()


class BasicBlock(nn.Module):
    """ResNet's basic block (He et al. 2016): two 3x3 convs, identity or 1x1 projection."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNet18(nn.Module):
    """ResNet-18's layout (He et al. 2016, Table 1: 7x7 stride-2 stem, 3x3 max pool, four
    stages of 2-2-2-2 basic blocks at width, 2, 4, 8 x width, global average pool, fc).

    width : the first stage's channels (the paper's: 64); blocks : basic blocks per stage
    (``(3, 4, 6, 3)`` gives ResNet-34)
    """

    def __init__(
        self, width: int = 8, classes: int = 5, blocks: tuple[int, ...] = (2, 2, 2, 2)
    ) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 7, 2, 3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        layers: list[nn.Module] = []
        cin = width
        for stage, count in enumerate(blocks):
            cout = width * 2**stage
            for index in range(count):
                layers.append(BasicBlock(cin, cout, 2 if stage and not index else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)
        randomize_batch_norms(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2's block (Sandler et al. 2018): 1x1 expand, 3x3 depthwise, 1x1 project."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        self.block = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


#: MobileNetV2's Table 2 (Sandler et al. 2018): per stage the expansion t, output channels c,
#: repeats n and the first block's stride s; with a 32-channel stem and a 1280-channel head.
MOBILENETV2_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class MobileNetV2(nn.Module):
    """MobileNetV2's layout: a 3x3 stride-2 stem, stages of inverted residuals, a 1x1 head
    conv, global average pool, dropout, fc. The defaults are a tiny version (four stages);
    ``settings=MOBILENETV2_SETTINGS, stem=32, head=1280`` is the paper's network.

    settings : (t, c, n, s) per stage; stem, head : channels of the first and last conv
    width : the paper's width multiplier, applied to the stem and every stage's channels
        (rounded to the nearest integer); the head keeps its channels when width < 1, as in
        the paper
    """

    def __init__(
        self,
        classes: int = 5,
        settings: tuple[tuple[int, int, int, int], ...] = (
            (1, 8, 1, 1),
            (6, 12, 2, 2),
            (6, 16, 2, 2),
            (6, 24, 1, 1),
        ),
        stem: int = 8,
        head: int = 64,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        torch.manual_seed(0)
        stem = max(1, round(stem * width))
        head = head if width < 1 else max(1, round(head * width))
        layers: list[nn.Module] = [
            nn.Conv2d(3, stem, 3, 2, 1, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU6(inplace=True),
        ]
        cin = stem
        for expand, channels, repeats, stride in settings:
            cout = max(1, round(channels * width))
            for index in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if index == 0 else 1, expand))
                cin = cout
        layers += [
            nn.Conv2d(cin, head, 1, bias=False),
            nn.BatchNorm2d(head),
            nn.ReLU6(inplace=True),
        ]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(head, classes))
        randomize_batch_norms(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(x.mean((2, 3)))


class DenseLayer(nn.Module):
    """DenseNet's bottleneck layer (Huang et al. 2017): BN-ReLU-1x1, BN-ReLU-3x3, concat."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.ReLU(),
            nn.Conv2d(cin, 4 * growth, 1, bias=False),
            nn.BatchNorm2d(4 * growth),
            nn.ReLU(),
            nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], 1)


class DenseNet(nn.Module):
    """A DenseNet-BC stack (Huang et al. 2017): 7x7 stride-2 stem of 2 x growth channels,
    3x3 max pool, dense blocks of bottleneck layers joined by transitions (BN-ReLU, 1x1 conv
    halving the channels, 2x2 average pool), BN-ReLU, global average pool, fc.

    growth : the growth rate k (DenseNet-121: 32); blocks : layers per dense block
    (DenseNet-121: ``(6, 12, 24, 16)``; the default is a tiny two-block stack)
    """

    def __init__(self, growth: int = 4, blocks: tuple[int, ...] = (2, 3), classes: int = 5) -> None:
        super().__init__()
        torch.manual_seed(0)
        layers: list[nn.Module] = [
            nn.Conv2d(3, 2 * growth, 7, 2, 3, bias=False),
            nn.BatchNorm2d(2 * growth),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        ]
        channels = 2 * growth
        for index, count in enumerate(blocks):
            for _ in range(count):
                layers.append(DenseLayer(channels, growth))
                channels += growth
            if index < len(blocks) - 1:
                layers += [
                    nn.BatchNorm2d(channels),
                    nn.ReLU(),
                    nn.Conv2d(channels, channels // 2, 1, bias=False),
                    nn.AvgPool2d(2, 2),
                ]
                channels //= 2
        layers += [nn.BatchNorm2d(channels), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, classes)
        randomize_batch_norms(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.fc(torch.flatten(x, 1))


class ConvNeXtBlock(nn.Module):
    """ConvNeXt's block (Liu et al. 2022): 7x7 depthwise conv, channels-last LayerNorm,
    Linear 4x expansion, GELU, Linear, layer scale, residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.rand(dim) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class ChannelsFirstLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of an (N, C, H, W) map (ConvNeXt's "channels_first" LN),
    written as permute - LayerNorm - permute."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    """A ConvNeXt net (Liu et al. 2022): 4x4 stride-4 patchify stem with LayerNorm, stages of
    blocks, between stages a LayerNorm and a 2x2 stride-2 downsampling conv, global average
    pool, LayerNorm, Linear.

    dims, depths : channels and blocks per stage (ConvNeXt-T: (96, 192, 384, 768) and
    (3, 3, 9, 3); the default is a tiny two-stage net)
    """

    def __init__(
        self, dims: tuple[int, ...] = (8, 16), depths: tuple[int, ...] = (1, 1), classes: int = 5
    ) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, dims[0], 4, 4)
        self.stem_norm = ChannelsFirstLayerNorm(dims[0], eps=1e-6)
        stages: list[nn.Module] = []
        for index, (dim, depth) in enumerate(zip(dims, depths, strict=True)):
            if index:
                stages.append(ChannelsFirstLayerNorm(dims[index - 1], eps=1e-6))
                stages.append(nn.Conv2d(dims[index - 1], dim, 2, 2))
            stages += [ConvNeXtBlock(dim) for _ in range(depth)]
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem_norm(self.stem(x)))
        return self.head(self.norm(x.mean((-2, -1))))


class Attention(nn.Module):
    """Multi-head self-attention over tokens (Vaswani et al. 2017) with one qkv Linear and
    ``scaled_dot_product_attention``, as vision model zoos write it."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        y = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(batch, tokens, dim))


class TransformerBlock(nn.Module):
    """ViT's pre-norm encoder block: x + attention(LN(x)), then x + MLP(LN(x)), GELU."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """A ViT (Dosovitskiy et al. 2021): patch embedding (a conv with kernel = stride =
    patch), flattened to tokens, a class token prepended, learned position embeddings,
    pre-norm encoder blocks, LayerNorm, and a Linear head on the class token.

    image, patch : sides in pixels (ViT-B/16: 224 and 16; the default is a tiny net)
    """

    def __init__(
        self,
        image: int = 32,
        patch: int = 8,
        dim: int = 32,
        depth: int = 2,
        heads: int = 4,
        classes: int = 5,
    ) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.position = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.position
        return self.head(self.norm(self.blocks(tokens))[:, 0])


# --------------------------------------------------------------------------- model outputs


@dataclasses.dataclass
class ZooOutput:
    """A dataclass-style model output, as model zoos return them (logits and extras)."""

    logits: torch.Tensor
    hidden: torch.Tensor | None = None


# torch.export must know the class to export a model returning it (zoos register theirs).
torch.export.register_dataclass(ZooOutput)


class ZooNet(nn.Module):
    """`small_cnn` returning its logits wrapped as a model zoo would: "dataclass" (.logits),
    "mapping" ({"logits": ...}), "tuple" ((logits, features)) or "tensor"."""

    def __init__(self, kind: str, classes: int = 5) -> None:
        super().__init__()
        self.kind = kind
        self.net = small_cnn(classes=classes).eval()

    def forward(self, x: torch.Tensor) -> object:
        logits = self.net(x)
        if self.kind == "dataclass":
            return ZooOutput(logits, x.mean(dim=(2, 3)))
        if self.kind == "mapping":
            return {"logits": logits, "features": x.mean(dim=(2, 3))}
        if self.kind == "tuple":
            return logits, x.mean(dim=(2, 3))
        return logits


# --------------------------------------------------------------------------- signals (1D)


def _same_padding(downsample: int, kernel: int) -> int:
    """Ribeiro et al.'s padding of a strided conv: the output is the input / downsample."""
    return max(0, (kernel - downsample + 1) // 2)


class EcgResidualUnit(nn.Module):
    """The residual unit of Ribeiro et al. 2020 (Nat. Commun. 11:1760, Fig. 1): two streams,
    x (pre-activation) and y (the skip); the skip is max-pooled by the downsampling factor
    and projected by a 1x1 conv when the channels change; conv, batch norm, ReLU, dropout,
    a strided conv, the sum with the skip, then batch norm, ReLU and dropout."""

    def __init__(self, cin: int, cout: int, downsample: int, kernel: int) -> None:
        super().__init__()
        self.pool = nn.MaxPool1d(downsample, downsample) if downsample > 1 else nn.Identity()
        self.project = nn.Conv1d(cin, cout, 1, bias=False) if cin != cout else nn.Identity()
        self.conv1 = nn.Conv1d(cin, cout, kernel, padding=_same_padding(1, kernel), bias=False)
        self.bn1 = nn.BatchNorm1d(cout)
        self.conv2 = nn.Conv1d(
            cout, cout, kernel, downsample, _same_padding(downsample, kernel), bias=False
        )
        self.bn2 = nn.BatchNorm1d(cout)
        self.dropout = nn.Dropout(0.2)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.project(self.pool(y))
        x = self.dropout(torch.relu(self.bn1(self.conv1(x))))
        x = self.conv2(x) + y
        y = x
        x = self.dropout(torch.relu(self.bn2(x)))
        return x, y


class EcgResNet(nn.Module):
    """The 12-lead ECG ResNet of Ribeiro et al. 2020: a conv stem (kernel 16 in the paper),
    four residual units each downsampling by 4 with 64, 128, 196, 256, 320 filters, then
    flatten and a dense layer (6 abnormalities, sigmoid in the paper: logits here).

    length : samples per lead (the paper's: 4,096; a length whose strided convs and skip
    pools disagree on a size fails in the forward); widths : the stem's and the units'
    filters; kernel : the convs' kernel (odd here, so that 'same' padding is symmetric)
    """

    def __init__(
        self,
        length: int = 256,
        leads: int = 12,
        classes: int = 6,
        widths: tuple[int, ...] = (8, 12, 16, 20, 24),
        kernel: int = 9,
        downsample: int = 4,
    ) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(
            nn.Conv1d(leads, widths[0], kernel, padding=_same_padding(1, kernel), bias=False),
            nn.BatchNorm1d(widths[0]),
            nn.ReLU(),
        )
        self.units = nn.ModuleList(
            EcgResidualUnit(cin, cout, downsample, kernel)
            for cin, cout in itertools.pairwise(widths)
        )
        self.eval()  # the dry run that sizes the dense layer leaves the statistics alone
        with torch.no_grad():
            features = self.features(torch.zeros(1, leads, length)).shape[1]
        self.fc = nn.Linear(features, classes)
        randomize_batch_norms(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The flattened output of the last unit, (n, channels * samples)."""
        x = self.stem(x)
        y = x
        for unit in self.units:
            x, y = unit(x, y)
        return torch.flatten(x, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


# --------------------------------------------------------------------------- any rank


def grid_masks(shape: tuple[int, ...], cells: tuple[int, ...]) -> torch.Tensor:
    """(R, *shape) bool masks of a grid of `cells` per axis (row-major, every position in
    exactly one cell; cell edges along an axis at ``round(i * size / count)``)."""
    edges = [
        [round(i * size / count) for i in range(count + 1)]
        for size, count in zip(shape, cells, strict=True)
    ]
    masks = []
    for index in itertools.product(*(range(count) for count in cells)):
        mask = torch.zeros(shape, dtype=torch.bool)
        mask[tuple(slice(e[i], e[i + 1]) for e, i in zip(edges, index, strict=True))] = True
        masks.append(mask)
    return torch.stack(masks)


def window_masks(shape: tuple[int, ...], window: int, stride: int) -> torch.Tensor:
    """(R, *shape) bool masks of cubic sliding windows of side `window` at `stride` along
    every axis (the windows that fit, row-major)."""
    starts = [range(0, size - window + 1, stride) for size in shape]
    masks = []
    for corner in itertools.product(*starts):
        mask = torch.zeros(shape, dtype=torch.bool)
        mask[tuple(slice(c, c + window) for c in corner)] = True
        masks.append(mask)
    return torch.stack(masks)
