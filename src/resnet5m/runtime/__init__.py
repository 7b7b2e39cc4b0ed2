"""Process-level set-up: allocator tuning, device and precision, seeding, thread counts."""

from resnet5m.runtime.allocator import tune_glibc_malloc
from resnet5m.runtime.device import autocast, precision_dtype, resolve_device
from resnet5m.runtime.seeding import seed_everything, set_deterministic

__all__ = ["autocast", "precision_dtype", "resolve_device", "seed_everything", "set_deterministic",
           "tune_glibc_malloc"]
