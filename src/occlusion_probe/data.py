"""Image input: one tensor, or a stream of ``(images, labels)`` batches such as a DataLoader.

Both are turned into a sequence of validated chunks ``(images (n, C, *spatial), labels (n,)
or None)``, so the rest of the library handles a tensor and a DataLoader the same way. The
regions fix the spatial rank: images with ``rank + 2`` dims are (N, C, *spatial), with
``rank + 1`` one channel without its axis (the channel is added).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import torch
from torch import Tensor

from .errors import InputTypeError, InputValueError, describe

__all__ = [
    "Chunk",
    "ImageSource",
    "Images",
    "check_label_range",
    "check_labels",
    "check_tensor_layout",
    "from_numpy",
]

Images: TypeAlias = Tensor | np.ndarray | Iterable[object]

# Images handled together between checkpoints and progress updates when a single tensor
# is given; the engines split further by `batch_size`.
DEFAULT_CHUNK_IMAGES = 256

_INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class Chunk:
    """A validated piece of the input: images (n, C, *spatial) and labels (n,) or None."""

    index: int
    images: Tensor
    labels: Tensor | None


def from_numpy(name: str, array: np.ndarray) -> Tensor:
    """`array` as a tensor with the same values, or the library's error naming `name`.

    Negative strides and non-native byte order are copied into a native array (the values
    stay the same); masked arrays (their mask would be ignored), object arrays and
    extended-precision floats (no torch dtype holds them) are refused.
    """
    if isinstance(array, np.ma.MaskedArray):
        raise InputTypeError(
            f"{name}: got a numpy masked array; its mask would be ignored. Pass "
            "array.filled(value) or array.data explicitly"
        )
    extended = array.dtype.itemsize > (16 if array.dtype.kind == "c" else 8)
    if array.dtype.kind not in "biufc" or extended:
        raise InputTypeError(
            f"{name}: expected a numpy array of a dtype torch holds (bool, integers, float16, "
            f"float32, float64), got dtype {array.dtype}; convert explicitly (e.g. "
            "array.astype(np.float32))"
        )
    if not array.dtype.isnative or any(stride < 0 for stride in array.strides):
        array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))
    return torch.from_numpy(array)


def check_tensor_layout(name: str, tensor: Tensor) -> None:
    """Refuse tensors without values on a device (meta) and sparse or other non-strided
    layouts, naming `name`."""
    if tensor.is_meta:
        raise InputValueError(
            f"{name}: got a tensor on the meta device, which holds no values; pass a tensor "
            "with data (e.g. on 'cpu' or 'cuda')"
        )
    if tensor.layout != torch.strided:
        raise InputTypeError(
            f"{name}: expected a dense (strided) tensor, got layout {tensor.layout}; pass "
            "tensor.to_dense()"
        )


def batch_shape(spatial: tuple[int, ...], channels: bool = True, batch: bool = True) -> str:
    """How images of this spatial rank are written: ``(N, C, H, W)``, ``(N, L)``, ``(C, L)``.

    >>> batch_shape((32, 32, 32)), batch_shape((100,), channels=False)
    ('(N, C, D, H, W)', '(N, L)')
    """
    names = {1: ("L",), 2: ("H", "W"), 3: ("D", "H", "W")}[len(spatial)]
    axes = ("N",) * batch + ("C",) * channels + names
    return "(" + ", ".join(axes) + ")"


def _as_image_tensor(name: str, images: object, spatial: tuple[int, ...]) -> tuple[Tensor, bool]:
    """Validate one image tensor; returns it as (n, C, *spatial) and whether it came
    without its channel axis (n, *spatial)."""
    rank = len(spatial)
    shapes = f"{batch_shape(spatial)} or {batch_shape(spatial, channels=False)}"
    if isinstance(images, np.ndarray):
        images = from_numpy(name, images)
    if not isinstance(images, Tensor):
        raise InputTypeError(
            f"{name}: expected a float Tensor of shape {shapes}, got {describe(images)}"
        )
    check_tensor_layout(name, images)
    if not images.is_floating_point():
        raise InputTypeError(
            f"{name}: expected a floating-point tensor, got dtype {images.dtype}; "
            "convert explicitly (e.g. images.float() / 255) so the fill values mean what you intend"
        )
    if images.dim() not in (rank + 1, rank + 2):
        raise InputValueError(
            f"{name}: expected shape {shapes} for regions with {rank} spatial axes, got shape "
            f"{tuple(images.shape)}"
        )
    single_channel = images.dim() == rank + 1
    if single_channel:
        images = images.unsqueeze(1)
    if images.shape[1] == 0:
        raise InputValueError(
            f"{name}: expected at least one channel, got shape {tuple(images.shape)}"
        )
    found = tuple(int(size) for size in images.shape[2:])
    if found != spatial:
        raise InputValueError(
            f"{name}: image size {'x'.join(map(str, found))} does not match the "
            f"regions' {'x'.join(map(str, spatial))}"
        )
    return images, single_channel


def _check_listed_batches(
    items: list[object] | tuple[object, ...], spatial: tuple[int, ...]
) -> None:
    """A list or tuple given as `images` must hold batches, never bare images.

    A bare (C, *spatial) image and a (n, *spatial) batch of one channel look alike, so items
    that are neither (images, labels) pairs, {"images": ...} dicts nor (n, C, *spatial)
    batches are refused instead of being read one way or the other.
    """
    for position, item in enumerate(items):
        if isinstance(item, (tuple, list, dict)):
            continue
        if isinstance(item, (Tensor, np.ndarray)) and item.ndim == len(spatial) + 2:
            continue
        raise InputValueError(
            f"images[{position}]: a list or tuple given as images must hold batches: "
            f"(images, labels) pairs, {{'images': ...}} dicts or {batch_shape(spatial)} "
            f"tensors; got {describe(item)}. For a list of single images "
            f"{batch_shape(spatial, batch=False)} pass torch.stack(images); for one-channel batches "
            f"{batch_shape(spatial, channels=False)} add the channel (batch.unsqueeze(1)) or "
            "pass (images, labels) pairs"
        )


def _refuse_bare_unbatched(
    name: str, images: object, labels: object, spatial: tuple[int, ...]
) -> None:
    """A stream's item of rank + 1 dims without labels may be one (C, *spatial) image or a
    one-channel batch (n, *spatial); labels (one per image) tell them apart, so only a bare
    one is refused."""
    if (
        labels is None
        and isinstance(images, (Tensor, np.ndarray))
        and images.ndim == len(spatial) + 1
    ):
        raise InputValueError(
            f"{name}: a {images.ndim}-d tensor of shape {tuple(images.shape)} without labels is "
            f"ambiguous: one {batch_shape(spatial, batch=False)} image or a batch of one-channel "
            f"{batch_shape(spatial, channels=False)} images; yield {batch_shape(spatial)} "
            "batches (image.unsqueeze(0) for one image, batch.unsqueeze(1) for one channel), "
            "or (images, labels) pairs"
        )


def check_labels(name: str, labels: object, n: int) -> Tensor:
    """Validate labels for n images: an integer tensor (n,). Range is checked later, once K is known."""
    if isinstance(labels, np.ndarray):
        if labels.dtype.kind not in "iu":
            raise InputTypeError(
                f"{name}: expected integer class labels, got {describe(labels)}; map class "
                "names to indices 0..K-1 first"
            )
        if labels.dtype.kind == "u" and labels.size and int(labels.max()) > _INT64_MAX:
            raise InputValueError(
                f"{name}: expected class labels in int64 range, got {int(labels.max())}"
            )
        labels = from_numpy(name, labels.astype(np.int64) if labels.dtype == np.uint64 else labels)
    elif isinstance(labels, (list, tuple)):
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in labels):
            raise InputTypeError(f"{name}: expected integer class labels, got {describe(labels)}")
        too_large = [int(v) for v in labels if not -_INT64_MAX - 1 <= int(v) <= _INT64_MAX]
        if too_large:
            raise InputValueError(
                f"{name}: expected class labels in int64 range, got {too_large[0]}"
            )
        labels = torch.tensor([int(v) for v in labels], dtype=torch.int64)
    if not isinstance(labels, Tensor):
        raise InputTypeError(
            f"{name}: expected an integer Tensor of shape ({n},), got {describe(labels)}"
        )
    check_tensor_layout(name, labels)
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise InputTypeError(f"{name}: expected an integer dtype, got {labels.dtype}")
    if tuple(labels.shape) != (n,):
        raise InputValueError(
            f"{name}: expected one label per image, shape ({n},), got shape {tuple(labels.shape)}"
        )
    # A copy: a loader may yield the same label buffer again with the next batch's labels.
    return labels.to(torch.int64, copy=True)


def check_label_range(name: str, labels: Tensor, num_classes: int) -> None:
    """Raise when a label is outside [0, num_classes)."""
    if labels.numel() == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        bad = torch.nonzero((labels < 0) | (labels >= num_classes)).flatten()[:10].tolist()
        raise InputValueError(
            f"{name}: expected class labels in [0, {num_classes - 1}] (the model has {num_classes} "
            f"outputs), got values {low}..{high}; first offending positions {bad}"
        )


def _check_finite(name: str, images: Tensor, offset: int) -> None:
    finite = torch.isfinite(images.flatten(1)).all(dim=1)
    if not bool(finite.all()):
        bad = (torch.nonzero(~finite).flatten()[:10] + offset).tolist()
        raise InputValueError(f"{name}: images contain NaN or inf values (first images {bad})")


class ImageSource:
    """Iterates validated `Chunk`s of a tensor or of a stream of batches.

    Attributes known before iterating: ``single_channel``, ``image_shape`` (C, *spatial)
    and, for a tensor, ``num_images``. `spatial` is the regions' spatial shape: it fixes the
    rank the images are read at.
    """

    def __init__(
        self,
        images: Images,
        labels: object,
        spatial: tuple[int, ...],
        chunk_images: int = DEFAULT_CHUNK_IMAGES,
    ) -> None:
        self.spatial = tuple(spatial)
        self._stream: Iterable[object] | None = None
        self._tensor: Tensor | None = None
        self._labels: Tensor | None = None
        self.chunk_images = chunk_images
        self._first: object = None
        self._probe: Tensor | None = None
        self.dtype: torch.dtype
        self.device: torch.device
        if isinstance(images, (Tensor, np.ndarray)):
            tensor, self.single_channel = _as_image_tensor("images", images, self.spatial)
            if tensor.shape[0] == 0:
                raise InputValueError(
                    "images: expected at least one image, got an empty batch (N = 0)"
                )
            _check_finite("images", tensor, 0)
            self._tensor = tensor
            self.num_images: int | None = int(tensor.shape[0])
            if labels is not None:
                self._labels = check_labels("labels", labels, int(tensor.shape[0]))
            self.image_shape = tuple(int(s) for s in tensor.shape[1:])
            self.dtype, self.device = tensor.dtype, tensor.device
            self._probe = tensor[:2].clone()
        elif isinstance(images, Mapping):
            raise InputTypeError(
                f"images: got a {type(images).__name__} with keys {list(images)[:5]}, which would "
                "be iterated by its keys; pass the image tensor itself (e.g. "
                "images['images']), or an iterable of batches"
            )
        elif isinstance(images, Iterable) and not isinstance(images, (str, bytes)):
            if isinstance(images, (list, tuple)):
                _check_listed_batches(images, self.spatial)
            if labels is not None:
                raise InputValueError(
                    "labels: must be None when images is a stream of (images, labels) batches; "
                    "the labels come with the batches"
                )
            self._stream = images
            self.num_images = None
            # Peek at the first batch so shapes are known before the run starts.
            iterator = iter(images)
            try:
                first = next(iterator)
            except StopIteration:
                raise InputValueError("images: the stream of batches is empty") from None
            self._first = first
            self._iterator = iterator
            batch_images, first_labels = self._split_batch(first, 0)
            _refuse_bare_unbatched("images[batch 0]", batch_images, first_labels, self.spatial)
            tensor, self.single_channel = _as_image_tensor(
                "images[batch 0]", batch_images, self.spatial
            )
            self.image_shape = tuple(int(s) for s in tensor.shape[1:])
            self.dtype, self.device = tensor.dtype, tensor.device
            # A copy: a loader may refill the same buffer with the next batch.
            self._probe = tensor[:2].clone() if tensor.shape[0] else None
            if self._probe is not None:
                _check_finite("images[batch 0]", self._probe, 0)
        else:
            raise InputTypeError(
                f"images: expected a Tensor {batch_shape(self.spatial)} / "
                f"{batch_shape(self.spatial, channels=False)} or an iterable of "
                f"(images, labels) batches, got {describe(images)}"
            )

    @property
    def is_stream(self) -> bool:
        return self._stream is not None

    def first_images(self) -> Tensor | None:
        """Up to two of the first images (n, C, *spatial), for checking the model before the
        run; None when the first batch of a stream is empty."""
        return self._probe

    @staticmethod
    def _split_batch(batch: object, index: int) -> tuple[object, object]:
        if isinstance(batch, (tuple, list)):
            if len(batch) != 2:
                raise InputValueError(
                    f"images[batch {index}]: expected a pair (images, labels), got {len(batch)} items"
                )
            return batch[0], batch[1]
        if isinstance(batch, dict) and "images" in batch:
            return batch["images"], batch.get("labels")
        return batch, None

    def __iter__(self) -> Iterator[Chunk]:
        if self._tensor is not None:
            for index, start in enumerate(range(0, self._tensor.shape[0], self.chunk_images)):
                stop = start + self.chunk_images
                labels = None if self._labels is None else self._labels[start:stop]
                yield Chunk(index, self._tensor[start:stop], labels)
            return
        offset = 0
        batches = self._chain_first()
        for index, batch in enumerate(batches):
            raw_images, raw_labels = self._split_batch(batch, index)
            name = f"images[batch {index}]"
            _refuse_bare_unbatched(name, raw_images, raw_labels, self.spatial)
            tensor, single = _as_image_tensor(name, raw_images, self.spatial)
            if single != self.single_channel:
                # (n, L) and (n, 1, L) hold images of the same shape; the model would get both
                have = "without" if self.single_channel else "with"
                got = "without" if single else "with"
                given = tuple(tensor.shape[:1]) + tuple(tensor.shape[1 + single :])
                raise InputValueError(
                    f"{name}: the first batch was given {have} a channel axis "
                    f"{batch_shape(self.spatial, channels=not self.single_channel)}, this one "
                    f"{got} (shape {given}); the model is called with the "
                    "batches as given, so give every batch the same form"
                )
            if tuple(tensor.shape[1:]) != self.image_shape:
                raise InputValueError(
                    f"{name}: expected images of shape {self.image_shape} like the first batch, "
                    f"got {tuple(tensor.shape[1:])}"
                )
            if tensor.shape[0] == 0:
                continue
            _check_finite(name, tensor, offset)
            labels = (
                None
                if raw_labels is None
                else check_labels(f"labels[batch {index}]", raw_labels, tensor.shape[0])
            )
            yield Chunk(index, tensor, labels)
            offset += int(tensor.shape[0])
        if offset == 0:
            raise InputValueError(
                "images: expected at least one image, got a stream whose batches are all empty"
            )

    def _chain_first(self) -> Iterator[object]:
        if self._first is not None:
            first, self._first = self._first, None
            yield first
            yield from self._iterator
        elif self._stream is not None:
            yield from self._stream
