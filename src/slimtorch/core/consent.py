"""Code runs only with the user's explicit consent.

A recipe, a CLI argument or a model folder may name Python code (``factory: "pkg.mod:build"``,
``--model mymod:make_net``, a Hugging Face folder with ``auto_map`` remote code). Importing it runs
arbitrary code, so slimtorch refuses unless the user said ``--allow-code`` (API: ``allow_code=True``).
This module is the one place that check lives.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

from slimtorch.core.errors import SlimtorchError

_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class CodeConsentError(SlimtorchError):
    """Something asked to run Python code the user did not consent to (no ``--allow-code``)."""


def require_code_consent(what: str, allow_code: bool) -> None:
    """Raise :class:`CodeConsentError` unless ``allow_code`` is true.

    Args:
        what: what would run, said to the user, e.g. ``"the recipe's model factory 'os:system'"``.
        allow_code: the user's consent (``--allow-code`` / ``allow_code=True``).
    """
    if not allow_code:
        raise CodeConsentError(
            f"{what} names Python code, which would run on import; slimtorch runs code only with your "
            "consent: pass --allow-code (API: allow_code=True) if you trust it"
        )


def import_callable(spec: str, *, allow_code: bool, what: str = "") -> Callable[..., Any]:
    """Import ``"module:function"`` (dotted attributes allowed after the colon), with consent.

    Consent is checked before anything is imported. Raises :class:`CodeConsentError` without consent and
    :class:`SlimtorchError` for a malformed spec, a missing module or attribute, or a non-callable.
    """
    label = what or f"{spec!r}"
    if not isinstance(spec, str) or not _SPEC.match(spec):
        raise SlimtorchError(f"{label}: expected 'module:function' (e.g. 'mypkg.models:build'), got {spec!r}")
    require_code_consent(label, allow_code)
    mod_name, attr = spec.split(":", 1)
    try:
        obj: Any = importlib.import_module(mod_name)
    except ImportError as e:
        raise SlimtorchError(f"{label}: cannot import module {mod_name!r} ({e})") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SlimtorchError(f"{label}: module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise SlimtorchError(f"{label}: {spec!r} is a {type(obj).__name__}, not a callable")
    return obj
