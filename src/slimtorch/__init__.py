"""slimtorch: make trained PyTorch models smaller and faster while keeping their accuracy.

Sub-packages, bottom to top: ``core``, ``data``, ``models``, ``metrics``, ``distill``, ``prune``,
``quant``, ``share``, ``train``, ``pipeline``, ``cli``. See DESIGN.md.
"""

from slimtorch.storage import load, save

__version__ = "0.1.0"
__all__ = ["__version__", "load", "save"]
