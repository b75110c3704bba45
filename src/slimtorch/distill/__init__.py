"""Knowledge distillation: pure loss functions, loss configs, the ``Distiller`` module, teacher caching,
online (mutual) and self (born-again) distillation, parameter initialisation from a teacher, and
TinyBERT-style layer distillation of a transformer into fewer layers (``layer_drop_student`` +
``TinyBERTDistiller``).

Quick start::

    from slimtorch.distill import Distiller, KD, Hint
    distiller = Distiller(student, teacher, [KD(temperature=4.0, weight=1.0)], task_weight=1.0)
    out = distiller(x, y)          # {"loss", "output", "task", "kd"}
    out["loss"].backward()
"""

from slimtorch.distill.cache import (
    CachedTeacher,
    IndexedDataset,
    cache_teacher_outputs,
    data_hash,
    model_hash,
)
from slimtorch.distill.dist import DIST, dist_loss
from slimtorch.distill.distiller import Distiller, freeze_, task_cross_entropy
from slimtorch.distill.functional import (
    attention_map,
    attention_transfer_loss,
    average_soft_targets,
    hint_loss,
    kd_loss,
    logit_mse_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    similarity_loss,
    soft_target_loss,
    soft_targets,
)
from slimtorch.distill.layer_drop import find_layers, layer_drop_student, uniform_mapping
from slimtorch.distill.losses import (
    KD,
    LOSSES,
    RKD,
    AttentionTransfer,
    DistillContext,
    DistillLoss,
    Hint,
    LogitMSE,
    LossTerm,
    SimilarityPreserving,
    build_term,
    register_loss,
)
from slimtorch.distill.mutual import MutualLearning
from slimtorch.distill.param_init import init_from_teacher
from slimtorch.distill.self_distill import born_again
from slimtorch.distill.tinybert import (
    TinyBERT,
    TinyBERTDistiller,
    attention_mse_loss,
    embedding_cosine_loss,
    hidden_mse_loss,
    soft_cross_entropy,
)

__all__ = [
    "DIST",
    "dist_loss",
    "KD",
    "LOSSES",
    "RKD",
    "AttentionTransfer",
    "CachedTeacher",
    "DistillContext",
    "DistillLoss",
    "Distiller",
    "Hint",
    "IndexedDataset",
    "LogitMSE",
    "LossTerm",
    "MutualLearning",
    "SimilarityPreserving",
    "TinyBERT",
    "TinyBERTDistiller",
    "attention_mse_loss",
    "embedding_cosine_loss",
    "find_layers",
    "hidden_mse_loss",
    "layer_drop_student",
    "soft_cross_entropy",
    "uniform_mapping",
    "attention_map",
    "attention_transfer_loss",
    "average_soft_targets",
    "born_again",
    "build_term",
    "cache_teacher_outputs",
    "data_hash",
    "freeze_",
    "hint_loss",
    "init_from_teacher",
    "kd_loss",
    "logit_mse_loss",
    "model_hash",
    "register_loss",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "similarity_loss",
    "soft_target_loss",
    "soft_targets",
    "task_cross_entropy",
]
