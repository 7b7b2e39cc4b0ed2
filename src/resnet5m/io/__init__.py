"""Files: atomic writes, the run directory, YAML and pickles from users read safely."""

from resnet5m.io.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from resnet5m.io.safe_pickle import restricted_load

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "restricted_load"]
