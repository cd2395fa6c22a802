"""Labelled per-region numbers, and the optional pandas / xarray export.

`RegionValues` is what per-region readings return (e.g. `SweepResult.mean_drop`): a mapping
from region id to value, so that nobody offsets positions by one to find area 10. pandas
and xarray are optional (``pip install "occlusion_probe[tables]"``); `optional_import`
imports them only when an export is asked for, with a message that says how to install
them.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from .errors import InputTypeError, InputValueError, describe
from .selection import integer_value

__all__ = ["RegionValues", "optional_import"]


def optional_import(module: str, purpose: str) -> ModuleType:
    """Import an optional dependency (``"pandas"`` or ``"xarray"``) for `purpose`.

    Raises
    ------
    ImportError
        When the module is not installed; the message names the extra that provides it.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{purpose} needs the optional dependency {module!r}, which is not installed; "
            f'install it with: pip install "occlusion_probe[tables]" (or pip install {module})'
        ) from error


@dataclass(frozen=True, eq=False)
class RegionValues(Mapping[int, float]):
    """One number per region, labelled with the region ids: ``drops[10]`` is region 10's.

    A read-only mapping region id -> float, in region order, backed by a tensor.

    Attributes
    ----------
    ids : tuple of int, length R
        The region ids, in the order of the R axis of the result.
    tensor : Tensor, shape (R,), float64
        The values, in the order of `ids`.
    name : str
        What the values are (e.g. ``"mean_drop"``), the column name in `to_pandas`.

    Examples
    --------
    >>> import torch
    >>> drops = RegionValues((1, 2, 3), torch.tensor([0.1, 0.5, 0.2], dtype=torch.float64))
    >>> drops[2], drops.ranking()
    (0.5, [2, 3, 1])
    """

    ids: tuple[int, ...]
    tensor: Tensor
    name: str = "value"

    def __post_init__(self) -> None:
        if not isinstance(self.tensor, Tensor):
            raise InputTypeError(
                f"tensor: expected a Tensor of shape (R,), got {describe(self.tensor)}"
            )
        if tuple(self.tensor.shape) != (len(self.ids),):
            raise InputValueError(
                f"tensor: expected shape ({len(self.ids)},) (one value per region id), "
                f"got {tuple(self.tensor.shape)}"
            )

    def __getitem__(self, region: object) -> float:
        region_id = integer_value(region)
        if region_id is None:
            raise InputTypeError(f"region: expected an integer region id, got {describe(region)}")
        if region_id not in self.ids:
            raise KeyError(f"region: unknown region id {region_id}; the ids are {list(self.ids)}")
        return float(self.tensor[self.ids.index(region_id)])

    def __iter__(self) -> Iterator[int]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{i}: {float(v):.4g}" for i, v in zip(self.ids, self.tensor.tolist(), strict=True)
        )
        return f"RegionValues({self.name}, {{{shown}}})"

    def ranking(self) -> list[int]:
        """Region ids by decreasing value (ties: the earlier region first; NaN last)."""
        keys = torch.nan_to_num(self.tensor.double(), nan=-float("inf"))
        order = torch.sort(keys, descending=True, stable=True).indices
        return [self.ids[i] for i in order.tolist()]

    def to_pandas(self) -> Any:
        """A ``pandas.Series`` named `name`, indexed by region id (index name ``"region"``).

        Raises
        ------
        ImportError
            When pandas is not installed.
        """
        pd = optional_import("pandas", "RegionValues.to_pandas")
        index = pd.Index(list(self.ids), name="region")
        return pd.Series(self.tensor.detach().cpu().double().numpy(), index=index, name=self.name)
