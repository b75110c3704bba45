"""The fine-tuning loop the techniques call when a schedule trains, without importing the trainer.

``prune`` (and any technique whose schedule fine-tunes) sits below ``train`` in the layer order, so it
cannot import :func:`slimtorch.train.fit`. It takes the loop as an argument instead (``fit_fn=``) and,
when none is given, uses the default installed here. :mod:`slimtorch.train` installs ``fit`` as that
default when it is imported, which importing ``slimtorch`` does; a user with their own loop passes it.

A fit function has ``fit``'s signature: ``fit_fn(model, data, epochs, callbacks=[...], **kwargs)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

FitFn = Callable[..., Any]

_default: list[FitFn] = []


def set_default_fit(fn: FitFn) -> None:
    """Install ``fn`` as the loop used when a technique is given training data but no ``fit_fn``."""
    _default[:] = [fn]


def resolve_fit(fn: FitFn | None) -> FitFn:
    """``fn`` if given, else the installed default (an error says how to provide one)."""
    if fn is not None:
        return fn
    if not _default:
        raise ValueError(
            "this schedule fine-tunes but no training loop is known: pass fit_fn=(model, data, epochs, "
            "callbacks=..., **kwargs) or import slimtorch.train, which installs slimtorch.train.fit"
        )
    return _default[0]
