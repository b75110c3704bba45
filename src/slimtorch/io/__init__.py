"""Safe storage: safetensors + structural spec (no code, no pickle).

``storage`` writes and reads model files; ``architectures`` is the name -> constructor table a stored
spec is rebuilt through (the zoo registers into it, so ``io`` never imports ``models``).
"""

from slimtorch.io.architectures import MODELS, SPEC_ATTR, create, list_models, register_model
from slimtorch.io.storage import MODEL_FILE, load, read_spec, resolve_model_file, save

__all__ = [
    "MODEL_FILE", "MODELS", "SPEC_ATTR", "create", "list_models", "load", "read_spec", "register_model",
    "resolve_model_file", "save",
]
