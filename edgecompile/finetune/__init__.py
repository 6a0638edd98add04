"""Recovery fine-tuning after compression: FNGD, baselines (SGD, AdamW, K-FAC, TWA), the
recovery loop with distillation, checkpoints and DDP."""
from .data import FinetuneData, FinetuneDataError
from .fngd import FNGD
from .kfac import KFAC
from .optimizers import OPTIMIZERS
from .recover import (CurvePoint, EpochStats, NonFiniteLossError, RecoverConfig, RecoverResult,
                      recover)
from .twa import TWA

__all__ = ["FNGD", "KFAC", "TWA", "OPTIMIZERS", "FinetuneData", "FinetuneDataError",
           "RecoverConfig", "RecoverResult", "EpochStats", "CurvePoint", "NonFiniteLossError",
           "recover"]
