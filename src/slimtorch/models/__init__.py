"""Reference model zoo for demos, tests and benchmarks (the library never requires it).

>>> from slimtorch.models import create, list_models
>>> model = create("resnet20", num_classes=10)
"""

from slimtorch.models import char_gpt, lenet, mlp, mobilenetv2, resnet_cifar, vit  # noqa: F401  (registration)
from slimtorch.models.attention import SelfAttention
from slimtorch.models.registry import MODELS, SPEC_ATTR, create, list_models, register_model

__all__ = ["MODELS", "SPEC_ATTR", "SelfAttention", "create", "list_models", "register_model"]
