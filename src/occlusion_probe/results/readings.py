"""The reading API that `SweepResult` and `ClassMeanResult` share.

`ClassReadings` (`class_curves`, `mean_drop`, `ranking`, `selected_count`,
`unoccluded_mean`, `class_heatmap`) is written once over two primitives each result type
provides, so that the two cannot drift apart. Arguments after the class are keyword-only;
every reading of an empty selection raises `EmptySelectionError`; curves and drops are
float64.
"""

from __future__ import annotations

import abc
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor
from typing_extensions import Self

from ..errors import InputValueError
from ..regions import Regions
from ..selection import check_bool, check_selected, class_index, fill_position
from ..tables import RegionValues
from . import file

__all__ = ["ClassReadings", "ordinary_tensor"]


def ordinary_tensor(tensor: Tensor) -> Tensor:
    """`tensor`, or a copy of it made outside inference mode when it is an inference tensor.

    Sweeps run the model under ``torch.inference_mode()``; tensors made there refuse in-place
    updates (and autograd) outside it, which would surprise a user of a result.
    """
    if not tensor.is_inference():
        return tensor
    with torch.inference_mode(False):
        return tensor.clone()


class ClassReadings(abc.ABC):
    """The reading API shared by `SweepResult` and `ClassMeanResult`.

    Subclasses provide `selected_count`, `_occluded_mean` and `_baseline_mean`; everything
    else (argument checks, the empty-selection rule, fills, labelled outputs) lives here.

    Conventions of every method:

    - the class comes first (``cls``: index, numpy integer, 0-d integer tensor or name);
      every other argument is keyword-only;
    - ``correct_only=True`` (the paper's choice) uses the correctly classified images of
      true class ``cls``; ``False`` all images of that class;
    - ``fill=`` picks one fill by value or label, ``fill_index=`` by position; neither
      averages over the fills;
    - a selection with no image raises `EmptySelectionError` (an `InputValueError`);
    - values are float64; per-region numbers are `RegionValues` keyed by region id.
    """

    regions: Regions
    fill_labels: tuple[str, ...]
    class_names: tuple[str, ...] | None
    image_shape: tuple[int, ...]
    output: str
    engine: str
    engine_note: str
    #: The ``kind`` stored in a result file (checked on load).
    file_kind: ClassVar[str]

    @property
    @abc.abstractmethod
    def num_classes(self) -> int:
        """K, the number of class outputs per image."""

    # -- primitives the result types provide ------------------------------------------------
    @abc.abstractmethod
    def selected_count(self, cls: object, *, correct_only: bool = True) -> int:
        """How many images the readings of class `cls` use (see the class docstring)."""

    @abc.abstractmethod
    def _occluded_mean(self, index: int, correct_only: bool) -> Tensor:
        """Mean occluded output of class `index`, shape (R, V), float64 (selection non-empty)."""

    @abc.abstractmethod
    def _baseline_mean(self, index: int, correct_only: bool) -> float:
        """Mean unoccluded output of class `index` over the same (non-empty) selection."""

    # -- argument resolution ------------------------------------------------------------------
    def class_index(self, cls: object) -> int:
        """The index of class `cls`, given as an index (int, numpy integer, 0-d integer tensor)
        or a name in ``class_names``.

        Raises
        ------
        InputTypeError
            When `cls` is a bool, a float or of another type.
        InputValueError
            When the index is out of range or the name unknown.
        """
        return class_index(cls, self.num_classes, self.class_names)

    def fill_position(self, fill: object = None, *, fill_index: object = None) -> int:
        """Position on the V axis of a fill given by value or label (`fill`) or position.

        Parameters
        ----------
        fill : number or str, optional
            A fill value (``0.2``, or ``1`` for the fill 1.0) or label (one of ``fill_labels``).
        fill_index : int, optional
            A position in [0, V).

        Returns
        -------
        int
            The position in ``fill_labels``.

        Raises
        ------
        InputTypeError
            When `fill` is a bool or of another type, or `fill_index` is not an integer.
        InputValueError
            When neither or both are given, or no fill matches (the message lists the fills).
        """
        position = fill_position(fill, fill_index, self.fill_labels)
        if position is None:
            raise InputValueError(
                f"fill, fill_index: expected one of them, got neither; fills are {self.fill_labels}"
            )
        return position

    def _selected(self, cls: object, correct_only: object, method: str) -> tuple[int, bool]:
        index = self.class_index(cls)
        flag = check_bool("correct_only", correct_only)
        count = self.selected_count(index, correct_only=flag)
        check_selected(count, index, self.class_names, flag, method)
        return index, flag

    # -- readings -------------------------------------------------------------------------------
    def class_curves(self, cls: object, *, correct_only: bool = True) -> Tensor:
        """Mean output of class `cls` per region and fill over the selected images (Figs 4-9).

        Parameters
        ----------
        cls : int, numpy integer, 0-d integer Tensor or str
            Class index, or class name when the result has ``class_names``.
        correct_only : bool
            Use only the correctly classified images of class `cls` (the paper's choice).

        Returns
        -------
        Tensor, shape (R, V), float64
            ``curves[r, v]``: mean output of class `cls` with region r set to fill v.

        Raises
        ------
        EmptySelectionError
            When no image is selected (e.g. a class the model never gets right).

        Examples
        --------
        >>> import torch, occlusion_probe as op
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48 * 48, 7))
        >>> images, labels = torch.rand(14, 1, 48, 48), torch.arange(14) % 7
        >>> result = op.sweep(model, images, op.grid(48, 48), labels=labels, progress=False)
        >>> curves = result.class_curves(3, correct_only=False)
        >>> tuple(curves.shape)  # 16 areas x 6 fills
        (16, 6)
        """
        index, flag = self._selected(cls, correct_only, "class_curves")
        return self._occluded_mean(index, flag)

    def unoccluded_mean(self, cls: object, *, correct_only: bool = True) -> float:
        """Mean unoccluded output of class `cls` over the images `class_curves` uses.

        Raises
        ------
        EmptySelectionError
            When no image is selected.
        """
        index, flag = self._selected(cls, correct_only, "unoccluded_mean")
        return self._baseline_mean(index, flag)

    def mean_drop(
        self,
        cls: object,
        *,
        fill: object = None,
        fill_index: object = None,
        correct_only: bool = True,
    ) -> RegionValues:
        """Mean drop (unoccluded minus occluded output) of class `cls` per region.

        Parameters
        ----------
        cls : int, numpy integer, 0-d integer Tensor or str
            Class index, or class name when the result has ``class_names``.
        fill : number or str, optional
            One fill by value or label; with neither `fill` nor `fill_index` the drop is
            averaged over the fills.
        fill_index : int, optional
            One fill by position.
        correct_only : bool
            Use only the correctly classified images of class `cls` (the paper's choice).

        Returns
        -------
        RegionValues
            Region id -> mean drop (float64): positive when occluding the region lowers the
            output. ``drops[10]`` is region 10's.

        Raises
        ------
        EmptySelectionError
            When no image is selected.
        """
        position = fill_position(fill, fill_index, self.fill_labels)
        index, flag = self._selected(cls, correct_only, "mean_drop")
        occluded = self._occluded_mean(index, flag)
        after = occluded.mean(dim=1) if position is None else occluded[:, position]
        drops = self._baseline_mean(index, flag) - after
        return RegionValues(self.regions.ids, drops, "mean_drop")

    def ranking(
        self,
        cls: object,
        *,
        fill: object = None,
        fill_index: object = None,
        correct_only: bool = True,
    ) -> list[int]:
        """Region ids ordered by `mean_drop` of class `cls`, largest first.

        Same arguments as `mean_drop`.

        Returns
        -------
        list of int
            All R region ids, by decreasing mean drop (ties: the earlier region first).

        Raises
        ------
        EmptySelectionError
            When no image is selected.
        """
        return self.mean_drop(
            cls, fill=fill, fill_index=fill_index, correct_only=correct_only
        ).ranking()

    def class_heatmap(
        self,
        cls: object,
        *,
        fill: object = None,
        fill_index: object = None,
        correct_only: bool = True,
    ) -> Tensor:
        """Per-pixel heat map of `mean_drop`: the class-mean counterpart of
        `SweepResult.heatmap`, shape (*spatial).

        Each pixel holds the mean, over the regions covering it, of the region's mean drop
        of class `cls` over the selected images (0 where no region covers it). Because the
        mean is linear, this equals the mean of ``SweepResult.heatmap(cls)`` over those
        images; a `ClassMeanResult` (which has no per-image values) gives it too.

        Same arguments as `mean_drop`.

        Returns
        -------
        Tensor, shape (*spatial), float64

        Raises
        ------
        EmptySelectionError
            When no image is selected.

        Examples
        --------
        >>> import torch, occlusion_probe as op
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
        >>> result = op.sweep(model, torch.rand(4, 1, 8, 8), op.sliding_windows(8, 8, 4, 2),
        ...                   fills=0.0, labels=torch.tensor([0, 1, 2, 0]),
        ...                   reduce="class_mean", progress=False)
        >>> tuple(result.class_heatmap(0, correct_only=False).shape)
        (8, 8)
        """
        drops = self.mean_drop(cls, fill=fill, fill_index=fill_index, correct_only=correct_only)
        return self.regions.pixel_mean(drops.tensor.to(torch.float64).cpu())

    def _coordinates(self) -> dict[str, Any]:
        classes: list[object] = (
            list(self.class_names)
            if self.class_names is not None
            else list(range(self.num_classes))
        )
        return {
            "region": list(self.regions.ids),
            "fill": list(self.fill_labels),
            "class": classes,
        }

    # -- storage: one path for every result type (`occlusion_probe.results.file`) -------------
    @abc.abstractmethod
    def _stored_arrays(self) -> dict[str, Tensor | np.ndarray | None]:
        """The result's own arrays for its file (None: an optional field left out)."""

    @classmethod
    def _from_stored(cls, fields: dict[str, Any]) -> Self:
        """The result from the validated fields of its file."""
        return cls(**fields)

    def _metadata(self) -> dict[str, Any]:
        return {
            "regions": self.regions,
            "fill_labels": self.fill_labels,
            "class_names": self.class_names,
            "image_shape": self.image_shape,
            "output": self.output,
            "engine": self.engine,
            "engine_note": self.engine_note,
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the result to a checksummed ``.npz`` file (no pickles), atomically.

        Parameters
        ----------
        path : str or os.PathLike
            The file to write; an existing file is replaced.

        Returns
        -------
        Path
            `path` as a `pathlib.Path`.

        Raises
        ------
        ResultFileError
            When a field could not be loaded again (e.g. labels outside [0, K - 1]), or the
            file cannot be written (the message names `path`).

        Notes
        -----
        The file holds every array, the metadata, ``format_version``, ``kind`` and a
        SHA-256 ``checksum`` over all of them (see `occlusion_probe.results.file`).

        Examples
        --------
        >>> import pathlib, tempfile, torch, occlusion_probe as op
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
        >>> result = op.sweep(model, torch.rand(2, 1, 8, 8), op.grid(8, 8, 2, 2), progress=False)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = result.save(pathlib.Path(folder) / "sweep.npz")
        ...     loaded = op.SweepResult.load(path)
        >>> torch.equal(loaded.occluded, result.occluded), loaded.fill_labels == result.fill_labels
        (True, True)
        """
        return file.write_result(path, self.file_kind, self._stored_arrays(), self._metadata())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Self:
        """Read a result written by `save` (``allow_pickle=False``: nothing is executed).

        Parameters
        ----------
        path : str or os.PathLike
            A file written by `save` of the same result type.

        Returns
        -------
        The saved result, of the type `load` is called on.

        Raises
        ------
        ResultFileError
            When the file is missing, a directory, truncated or corrupted (its checksum does
            not match), of another result type or format version, or has a field with an
            invalid value; the message names the file and the field. A subclass of
            `InputValueError`.

        Warns
        -----
        OcclusionProbeWarning
            For a `SweepResult` file of format 1 (no checksum; its fields are still
            validated).
        """
        return cls._from_stored(file.read_result(path, cls.file_kind))
