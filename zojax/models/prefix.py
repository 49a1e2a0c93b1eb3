"""Prefix tuning: ``zojax.models.prefix.init(model, params, key, num_virtual_tokens=5) -> (trainable,
adapted)``.

See :func:`zojax.models.adapters.prefix_init`.
"""

from zojax.models.adapters import Adapted
from zojax.models.adapters import prefix_init as init

__all__ = ["Adapted", "init"]
