"""Recovery fine-tuning after compression: FNGD, baselines (SGD, AdamW, K-FAC, TWA), the
recovery loop with distillation, checkpoints and DDP."""
from .data import FinetuneData, FinetuneDataError
from .fngd import FNGD
from .kfac import KFAC
from .objective import OUTPUT_KINDS
from .optimizers import OPTIMIZERS
from .recover import (CurvePoint, EpochStats, NonFiniteLossError, RecoverConfig, RecoverResult,
                      recover)
from .twa import TWA

__all__ = ["FNGD", "KFAC", "TWA", "OPTIMIZERS", "OUTPUT_KINDS", "FinetuneData", "FinetuneDataError",
           "RecoverConfig", "RecoverResult", "EpochStats", "CurvePoint", "NonFiniteLossError",
           "recover"]
