"""The package's own error and warning classes: one error base, so that callers can catch everything xrimpute refuses.

Every error xrimpute raises on purpose derives from :class:`XrimputeError`,
and also from the builtin class a caller would expect (``ValueError`` for a
bad value, ``TypeError`` for a bad type), so ``except ValueError`` keeps
working. Each message says what is wrong and how to fix it.
"""
from __future__ import annotations


class XrimputeError(Exception):
    """Base of every error xrimpute raises on purpose."""


class ArgumentError(XrimputeError, ValueError):
    """An argument is out of range or inconsistent with another (checked before any long computation)."""


class ArgumentTypeError(XrimputeError, TypeError):
    """An argument has the wrong type (e.g. ``K=2.5`` where a whole number is needed)."""


class ModelFileError(XrimputeError, ValueError):
    """A file is not a readable xrimpute model or checkpoint (random bytes, truncated, missing fields)."""


class NonFiniteLossError(XrimputeError, FloatingPointError):
    """Training produced a non-finite loss; the weights would be useless."""


class WorkFailedError(XrimputeError, RuntimeError):
    """Work that ran elsewhere (a dask worker's region, a thread reading an archive) failed; the message says what
    is kept and how to go on, the cause is chained."""


class DataWarning(UserWarning):
    """The data had something xrimpute handled on its own (non-finite or fill values, odd time stamps, variables
    passed through); the message says what and how many."""


class SkillWarning(UserWarning):
    """A trained model fills its held-back cells worse than one of the package's classical fillers; the message
    names the filler, both scores, the call that runs it, and how to train longer."""


__all__ = ["ArgumentError", "ArgumentTypeError", "DataWarning", "ModelFileError", "NonFiniteLossError", "SkillWarning",
           "WorkFailedError", "XrimputeError"]
