"""Core building blocks shared by every layer: typed configs, registries, module selection.

This package imports nothing else from slimtorch (see DESIGN.md, "layers").
"""

from slimtorch.core.config import Config, check_choice, check_positive, check_range
from slimtorch.core.errors import SlimtorchError
from slimtorch.core.registry import Registry
from slimtorch.core.selection import Selector, named_modules_matching

__all__ = [
    "Config",
    "Registry",
    "Selector",
    "SlimtorchError",
    "check_choice",
    "check_positive",
    "check_range",
    "named_modules_matching",
]
