"""Compatibility alias of :mod:`slimtorch.io.storage` (``slimtorch.storage.read_spec`` etc. keep working).

Kept while ``slimtorch.quant`` (restructured in another branch) still imports ``slimtorch.storage``;
new code imports :mod:`slimtorch.io.storage`.
"""

from slimtorch.io.storage import (  # noqa: F401  (re-exported names)
    FORMAT,
    FORMAT_VERSION,
    MODEL_FILE,
    STRUCTURAL_ATTRS,
    load,
    load_state_into,
    model_from_spec,
    model_spec,
    read_spec,
    resolve_model_file,
    save,
    write_safetensors,
)
