"""ROAD's noisy linear imputation as a region-aware fill.

Rong, Leemann et al., "A Consistent and Efficient Evaluation Strategy for Attribution
Methods" (ICML 2022) remove pixels by imputing them: each removed pixel is the weighted mean
of its neighbours, 1/6 for the four direct ones and 1/12 for the four diagonal ones. A
neighbour outside the image drops out and the weights of the others are renormalised (they
sum to 1 minus the dropped weights); a neighbour that is removed too is an unknown of the
same system, a kept one enters the right-hand side with its value. All removed pixels of one
image and mask are one sparse linear system; Gaussian noise of standard deviation `noise` is
added to the solution.

Here the system depends only on the mask, so it is factorised once per mask
(``scipy.sparse.linalg.splu``) and solved for every image and channel of a chunk at once
(one right-hand side each); factorisations are kept across chunks and shared by translated
masks (equal pattern in the bounding box, touching the same image borders), such as the
inner cells of a grid or the inner sliding windows.

Every spatial rank uses the same rule over all 3**d - 1 neighbours that differ by at most
one step along each axis: a neighbour whose offset moves along j axes weighs
``2 ** (1 - j)`` before the weights are normalised to sum 1, so each further axis halves the
weight (in 2D the direct neighbours weigh twice the diagonal ones, ROAD's ratio). Exactly:

* rank 1, signals (n, C, L): the 2 neighbours, 1/2 each;
* rank 2, images (n, C, H, W): ROAD's 4 direct neighbours 1/6 each, 4 diagonal 1/12 each;
* rank 3, volumes (n, C, D, H, W): 6 face neighbours 1/14 each, 12 edge neighbours 1/28
  each, 8 corner neighbours 1/56 each.

At the border the same renormalisation as ROAD's applies at every rank.

The noise is one field, Tensor of shape (C, *spatial), drawn from N(0, noise**2) with the
generator seeded by `seed`, the same for every image and mask, so results repeat and do not
depend on chunking or engine. A mask that covers the whole image leaves nothing to impute
from: its pixels get 0 plus the noise.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import torch
from scipy.sparse.linalg import SuperLU
from torch import Tensor

from .errors import InputTypeError, InputValueError, describe
from .region_fills import RegionFill, check_images_and_masks, positive_float

__all__ = ["LinearImputation", "linear_imputation", "neighbour_weights"]

# Kept systems (and, apart, shared factorisations): at most this many, and at most this many
# nonzeros of L and U and of the known neighbours' weights together (12 bytes each: about
# 240 MB), the least recently used dropped first. The nonzeros bound the memory; the count
# is high enough for the working set of perturbation curves with a few orders (a 4x4 grid:
# 15 unions per order; a 48x48 union's factors hold about 40,000 nonzeros on average).
_KEPT_SYSTEMS = 4096
_KEPT_NONZEROS = 20_000_000

_Kept = TypeVar("_Kept")


class _LeastRecentlyUsed(Generic[_Kept]):
    """Entries by key, each with its size in nonzeros; `put` drops the least recently used
    while there are over `_KEPT_SYSTEMS` of them or over `_KEPT_NONZEROS` in all (never the
    newest)."""

    def __init__(self) -> None:
        self.entries: OrderedDict[bytes, tuple[_Kept, int]] = OrderedDict()
        self.nonzeros = 0

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: bytes) -> _Kept | None:
        found = self.entries.get(key)
        if found is None:
            return None
        self.entries.move_to_end(key)
        return found[0]

    def put(self, key: bytes, value: _Kept, size: int) -> None:
        self.entries[key] = (value, size)
        self.nonzeros += size
        while len(self.entries) > 1 and (
            len(self.entries) > _KEPT_SYSTEMS or self.nonzeros > _KEPT_NONZEROS
        ):
            _, (_, dropped) = self.entries.popitem(last=False)
            self.nonzeros -= dropped


def neighbour_weights(rank: int) -> list[tuple[tuple[int, ...], float]]:
    """The stencil of `rank` spatial axes: (offset, weight) for every axis and diagonal
    neighbour, weights proportional to ``2 ** (1 - |offset|_1)`` and summing to 1.

    Rank 1: 1/2 per neighbour; rank 2: 1/6 direct, 1/12 diagonal (ROAD's); rank 3: 1/14
    per face, 1/28 per edge, 1/56 per corner neighbour.

    >>> neighbour_weights(2)[:3]  # doctest: +ELLIPSIS
    [((-1, -1), 0.0833...), ((-1, 0), 0.1666...), ((-1, 1), 0.0833...)]
    >>> neighbour_weights(1)
    [((-1,), 0.5), ((1,), 0.5)]
    >>> sorted({round(w * 56) for _, w in neighbour_weights(3)})
    [1, 2, 4]
    """
    offsets = [o for o in itertools.product((-1, 0, 1), repeat=rank) if any(o)]
    raw = [2.0 ** (1 - sum(abs(x) for x in o)) for o in offsets]
    total = sum(raw)
    return [(o, w / total) for o, w in zip(offsets, raw, strict=True)]


@dataclass(frozen=True)
class _System:
    """One mask's factorised system: unknowns (m,) flat positions, `known` (m, P) sparse
    weights of kept neighbours, and the LU factors of the (m, m) system matrix (None when
    nothing is known)."""

    unknown: np.ndarray
    known: scipy.sparse.csr_matrix
    solve: SuperLU | None
    nonzeros: int


def _shape_key(mask: np.ndarray) -> bytes:
    """What the system matrix depends on: the mask's pattern inside its bounding box and
    which image borders the box touches (translated masks share their matrix: unknowns in
    row-major order keep their relative order)."""
    spans = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=others))
        spans.append((int(hit[0]), int(hit[-1]) + 1))
    cropped = mask[tuple(slice(lo, hi) for lo, hi in spans)]
    touches = tuple((lo == 0, hi == size) for (lo, hi), size in zip(spans, mask.shape, strict=True))
    return repr((cropped.shape, touches)).encode() + np.packbits(cropped).tobytes()


def _build_system(
    mask: np.ndarray, factorise: Callable[[bytes, scipy.sparse.csc_matrix], SuperLU]
) -> _System:
    """The system of `mask` (True: removed), its matrix factorised by `factorise(key,
    matrix)`, which may return the factors of an earlier matrix of the same key."""
    shape = mask.shape
    flat = mask.reshape(-1)
    unknown = np.flatnonzero(flat)
    m, p = unknown.size, flat.size
    variable = np.full(p, -1, dtype=np.int64)
    variable[unknown] = np.arange(m)
    coords = np.unravel_index(unknown, shape)
    rows_a: list[np.ndarray] = []
    cols_a: list[np.ndarray] = []
    vals_a: list[np.ndarray] = []
    rows_b: list[np.ndarray] = []
    cols_b: list[np.ndarray] = []
    vals_b: list[np.ndarray] = []
    present = np.ones(m)  # the weights of the in-image neighbours, summed
    ids = np.arange(m)
    for offset, weight in neighbour_weights(len(shape)):
        moved = [c + o for c, o in zip(coords, offset, strict=True)]
        inside = np.ones(m, dtype=bool)
        for axis, values in enumerate(moved):
            inside &= (values >= 0) & (values < shape[axis])
        present[~inside] -= weight
        where = np.ravel_multi_index(tuple(v[inside] for v in moved), shape)
        owner = ids[inside]
        removed = flat[where]
        rows_a.append(owner[removed])
        cols_a.append(variable[where[removed]])
        vals_a.append(np.full(int(removed.sum()), weight))
        rows_b.append(owner[~removed])
        cols_b.append(where[~removed])
        vals_b.append(np.full(int((~removed).sum()), weight))
    known = scipy.sparse.csr_matrix(
        (np.concatenate(vals_b), (np.concatenate(rows_b), np.concatenate(cols_b))), shape=(m, p)
    )
    if m == 0 or m == p:
        # Nothing to impute, or nothing known (the system is singular: any constant solves it).
        return _System(unknown, known, None, int(known.nnz))
    matrix = scipy.sparse.csc_matrix(
        (
            np.concatenate([*vals_a, -present]),
            (np.concatenate([*rows_a, ids]), np.concatenate([*cols_a, ids])),
        ),
        shape=(m, m),
    )
    factors = factorise(_shape_key(mask), matrix)
    return _System(unknown, known, factors, int(factors.nnz) + int(known.nnz))


@dataclass(frozen=True)
class LinearImputation(RegionFill):
    """ROAD's noisy linear imputation (see the module docstring); use `linear_imputation`."""

    noise: float = 0.01
    seed: int = 0
    _systems: _LeastRecentlyUsed[_System] = field(
        default_factory=_LeastRecentlyUsed, init=False, repr=False, compare=False
    )
    _factors: _LeastRecentlyUsed[SuperLU] = field(
        default_factory=_LeastRecentlyUsed, init=False, repr=False, compare=False
    )
    _noise_fields: dict[tuple[int, int], np.ndarray] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def label(self) -> str:
        return f"linear_imputation(noise={self.noise!r}, seed={self.seed!r})"

    def __call__(self, images: Tensor, masks: Tensor) -> Tensor:
        check_images_and_masks(self.label, images, masks)
        n, c = images.shape[:2]
        host = _on_host(images)
        out = host.copy()
        groups: dict[int, list[int]]
        if masks.shape[0] == 1:
            groups = {0: list(range(n))}
        else:
            # Images with equal masks share one system and one solve.
            packed = np.packbits(masks.reshape(n, -1).cpu().numpy(), axis=1)
            firsts: dict[bytes, int] = {}
            groups = {}
            for i in range(n):
                first = firsts.setdefault(packed[i].tobytes(), i)
                groups.setdefault(first, []).append(i)
        for first, members in groups.items():
            system = self._system(masks[first])
            values = self._solve_host(_columns(host[members]), system, len(members), c)
            out[np.ix_(np.asarray(members), np.arange(c), system.unknown)] = values
        made = torch.from_numpy(out).reshape(images.shape)
        return made.to(dtype=images.dtype, device=images.device)

    def regions(self, images: Tensor, masks: Tensor) -> list[Tensor]:
        host = _on_host(images)
        n, c = images.shape[:2]
        columns = _columns(host)  # one transposed copy serves every mask
        return [self._solve(columns, self._system(mask), (n, c), images) for mask in masks]

    def _system(self, mask: Tensor) -> _System:
        array = mask.detach().cpu().numpy()
        key = repr(array.shape).encode() + np.packbits(array).tobytes()
        found = self._systems.get(key)
        if found is not None:
            return found
        built = _build_system(array, self._factorise)
        self._systems.put(key, built, built.nonzeros)
        return built

    def _factorise(self, key: bytes, matrix: scipy.sparse.csc_matrix) -> SuperLU:
        """The LU factors of `matrix`, shared by every mask of the same shape key."""
        found = self._factors.get(key)
        if found is not None:
            return found
        # The matrix is structurally symmetric and diagonally dominant (each diagonal entry
        # is the sum of the in-image neighbours' weights, the unknown ones among them off
        # the diagonal): a symmetric ordering without pivoting keeps the factors about a
        # third sparser than the default column ordering, and faster to make and use.
        made = scipy.sparse.linalg.splu(
            matrix,
            permc_spec="MMD_AT_PLUS_A",
            diag_pivot_thresh=0.0,
            options={"SymmetricMode": True},
        )
        self._factors.put(key, made, int(made.nnz))
        return made

    def _solve(
        self, columns: np.ndarray, system: _System, batch: tuple[int, int], like: Tensor
    ) -> Tensor:
        """Values (n, C, m) at the system's unknowns, for images as `columns` (P, n * C)
        float64, in the dtype and on the device of `like`."""
        values = torch.from_numpy(self._solve_host(columns, system, *batch))
        return values.to(dtype=like.dtype, device=like.device)

    def _solve_host(
        self, columns: np.ndarray, system: _System, n: int, channels: int
    ) -> np.ndarray:
        """Values (n, C, m) at the system's unknowns, float64, noise included, for images
        as `columns` (P, n * C): one right-hand side per image and channel."""
        m = system.unknown.size
        if system.solve is None:
            solution = np.zeros((m, n * channels))
        else:
            right = np.asfortranarray(-(system.known @ columns), dtype=np.float64)
            solution = system.solve.solve(right)
        values: np.ndarray = np.ascontiguousarray(solution.T).reshape(n, channels, m)
        if self.noise > 0:
            values = values + self._noise(channels, columns.shape[0])[:, system.unknown]
        return values

    def _noise(self, channels: int, size: int) -> np.ndarray:
        """The noise field (C, P): N(0, noise**2), drawn with the seed once per shape."""
        key = (channels, size)
        found = self._noise_fields.get(key)
        if found is None:
            generator = torch.Generator().manual_seed(self.seed)
            drawn = torch.randn((channels, size), generator=generator, dtype=torch.float64)
            found = (drawn * self.noise).numpy()
            self._noise_fields[key] = found
        return found


def _columns(host: np.ndarray) -> np.ndarray:
    """Images `host` (n, C, P) as a contiguous (P, n * C) array: one column per image and
    channel, the layout the sparse product and the solver read fastest."""
    return np.ascontiguousarray(host.reshape(host.shape[0] * host.shape[1], -1).T)


def _on_host(images: Tensor) -> np.ndarray:
    """`images` (n, C, *spatial) as a float64 array (n, C, P) on the CPU."""
    flat = images.detach().reshape(images.shape[0], images.shape[1], -1)
    array: np.ndarray = flat.to(device="cpu", dtype=torch.float64).numpy()
    return array


def linear_imputation(noise: float = 0.01, seed: int = 0) -> LinearImputation:
    """ROAD's noisy linear imputation (Rong, Leemann et al., ICML 2022) as a fill.

    Each filled pixel is the weighted mean of its eight neighbours (1/6 direct, 1/12
    diagonal, renormalised over the neighbours inside the image), solved jointly for all
    pixels of the region, plus Gaussian noise of standard deviation `noise` (one field drawn
    with `seed`, the same for every image and region). Signals (n, C, L) use their 2
    neighbours at 1/2 each, volumes (n, C, D, H, W) their 26 neighbours at 1/14 per face,
    1/28 per edge and 1/56 per corner (each axis an offset moves along halves its weight;
    see `neighbour_weights`).

    Parameters
    ----------
    noise : float
        Standard deviation of the added noise, >= 0 (ROAD's default 0.01).
    seed : int
        Seed of the noise field.

    Raises
    ------
    InputTypeError
        When `noise` is not a number or `seed` not an int.
    InputValueError
        When `noise` is negative or not finite.

    Examples
    --------
    >>> import torch, occlusion_probe as op
    >>> images = torch.tensor([[[[0.0, 0.0, 0.0], [3.0, 9.0, 3.0], [6.0, 6.0, 6.0]]]])
    >>> mask = torch.zeros(1, 3, 3, dtype=torch.bool)
    >>> mask[0, 1, 1] = True
    >>> float(op.fills.linear_imputation(noise=0.0)(images, mask)[0, 0, 1, 1])
    3.0
    """
    level = positive_float("noise", noise, allow_zero=True)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputTypeError(f"seed: expected an int, got {describe(seed)}")
    if not 0 <= int(seed) < 2**63:
        raise InputValueError(f"seed: expected an int in [0, 2**63), got {seed}")
    return LinearImputation(level, int(seed))
