"""TopK sparse autoencoders (SAEURON.md section 2): the model in the reference checkpoint
layout, the activation-dataset reader, the trainer, and `sae train` end to end."""
from __future__ import annotations

from governance.sae.data import DatasetError, open_dataset
from governance.sae.model import SaeLoadError, TopKSAE
from governance.sae.trainer import TrainConfig, TrainRefused, train_sae

__all__ = ["DatasetError", "SaeLoadError", "TopKSAE", "TrainConfig", "TrainRefused", "open_dataset", "train_sae"]
