"""The zoo's view of the architecture registry, which lives in :mod:`slimtorch.io.architectures`.

``io`` rebuilds stored models by name and sits below ``models``, so the table is defined there and the
zoo registers into it; these names stay importable from here.
"""

from slimtorch.io.architectures import MODELS, SPEC_ATTR, create, list_models, register_model

__all__ = ["MODELS", "SPEC_ATTR", "create", "list_models", "register_model"]
