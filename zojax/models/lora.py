"""LoRA: ``zojax.models.lora.init(model, params, key, rank=8, alpha=16, targets=("q", "v")) -> (trainable,
adapted)``.

See :func:`zojax.models.adapters.lora_init`.
"""

from zojax.models.adapters import LORA_TARGETS, Adapted
from zojax.models.adapters import lora_init as init

__all__ = ["LORA_TARGETS", "Adapted", "init"]
