"""slimtorch: make trained PyTorch models smaller and faster while keeping their accuracy.

Sub-packages, bottom to top: ``core``, ``io``, ``data``, ``models``, ``metrics``, ``distill``, ``prune``,
``quant``, ``share``, ``train``, ``pipeline``, ``cli``. See DESIGN.md and docs/architecture.md.

The package root is the public front door, not a layer: importing it registers the model zoo into
:mod:`slimtorch.io.architectures` (so ``slimtorch.load`` rebuilds zoo models by name) and installs
:func:`slimtorch.train.fit` as the default fine-tuning loop of the techniques (see
:mod:`slimtorch.core.finetune`), which never import the trainer themselves.
"""

from slimtorch import models, train  # noqa: F401  (registration: zoo constructors, default fine-tune loop)
from slimtorch.io.storage import load, save

__version__ = "0.1.0"
__all__ = ["__version__", "load", "save"]
