"""Every exception and warning class of occlusion_probe.

The exceptions subclass the built-in ``ValueError`` / ``TypeError`` so that callers who catch those keep
working, while callers who want to tell our validation apart from other failures can catch
``OcclusionProbeError``.
"""

from __future__ import annotations

import inspect

__all__ = [
    "CheckpointError",
    "EmptySelectionError",
    "InputTypeError",
    "InputValueError",
    "OcclusionProbeError",
    "OcclusionProbeWarning",
    "RankMismatchError",
    "ResultFileError",
    "check_one_argument_callable",
]


class OcclusionProbeError(Exception):
    """Base class of every error raised by occlusion_probe's argument checks."""


class InputValueError(OcclusionProbeError, ValueError):
    """An argument has the right type but an unusable value (shape, range, size...)."""


class InputTypeError(OcclusionProbeError, TypeError):
    """An argument has a type occlusion_probe cannot work with."""


class ResultFileError(InputValueError):
    """A result file (``SweepResult.save`` / ``ClassMeanResult.save``) cannot be loaded or
    written.

    Raised for a missing, truncated or corrupted file (its SHA-256 checksum does not match),
    a file of another format version or kind, a refused archive member (compressed, or
    larger than its header declares), a field whose value is invalid, and a folder that
    cannot be written; the message names the user's file and the field.
    """


class CheckpointError(InputValueError):
    """A checkpoint cannot be used: another run's, locked, in a bad place, or corrupted."""


class RankMismatchError(InputValueError):
    """The ranks of a distributed sweep were given different sweeps (raised on every rank,
    before any work; the message names each differing item and every rank's value)."""


class EmptySelectionError(InputValueError):
    """A reading of a result (curves, drops, rankings, tests, bands) selects no image.

    Every reading method of `SweepResult` and `ClassMeanResult` raises it for an empty
    selection (e.g. a class the model never gets right with ``correct_only=True``);
    ``selected_count`` tells beforehand how many images a selection holds.
    """


class OcclusionProbeWarning(UserWarning):
    """Doubtful but legal input or an undefined statistic (e.g. a test over one image)."""


def describe(value: object) -> str:
    """A short description of `value` for error messages (type, and shape/dtype for arrays)."""
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is not None:
        return f"{type(value).__name__} of shape {tuple(shape)} and dtype {dtype}"
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{type(value).__name__} {text}"


def check_one_argument_callable(name: str, value: object, takes: str) -> None:
    """Refuse a `value` given where a callable of one argument (`takes`) is expected: a
    class instead of an instance, or a callable whose signature cannot take exactly one
    positional argument (a two-argument lambda). Callables without a readable signature
    (builtins) pass.

    Raises
    ------
    InputTypeError
        Naming `name`, what it takes and what was given.
    """
    if isinstance(value, type):
        raise InputTypeError(
            f"{name}: expected a callable taking {takes}, got the class {value.__name__}; "
            "pass an instance (e.g. " + value.__name__ + "(...))"
        )
    try:
        signature = inspect.signature(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return
    try:
        signature.bind(object())
    except TypeError:
        raise InputTypeError(
            f"{name}: expected a callable taking one argument ({takes}), got "
            f"{getattr(value, '__name__', type(value).__name__)}{signature}"
        ) from None
