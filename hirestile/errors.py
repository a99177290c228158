"""User-facing errors.

Every error a user can cause (bad input, unknown model, unwritable output, ...)
is a :class:`HirestileError`. The message is one line that names the problem and
says what to do; the CLI prints it as ``hirestile: error: <message>`` and exits
non-zero without a traceback. Anything else escaping is a bug in hirestile.
"""
from __future__ import annotations


class HirestileError(Exception):
    """Base class of all errors hirestile reports to the user."""

    exit_code = 1


class InputError(HirestileError, ValueError):
    """The input image cannot be used: missing, unreadable, wrong shape/dtype, NaN, ..."""

    exit_code = 2


class ModelError(HirestileError, ValueError):
    """The model cannot be used: unknown name, malformed file, unsupported op, ..."""

    exit_code = 3


class NotTileableError(ModelError):
    """The model holds a whole-image op (global pooling, instance norm, ...) and cannot run tiled."""


class OutputError(HirestileError, OSError):
    """The output cannot be written: exists, not writable, I/O failure, belongs to another job."""

    exit_code = 4


__all__ = ["HirestileError", "InputError", "ModelError", "NotTileableError", "OutputError"]
