"""TopK sparse autoencoders (SAEURON.md section 2): model, reference-format I/O, trainer."""
from __future__ import annotations

from governance.sae.config import SaeConfig
from governance.sae.model import SaeLoadError, TopKSAE

__all__ = ["SaeConfig", "SaeLoadError", "TopKSAE"]
