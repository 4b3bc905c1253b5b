"""How every regime3 process reads its settings (`base`) and names its folders (`layout`).

Torch-free and free of `services`, so `bus/` and `checkpoints/` can build on it.
"""

from settings.base import R3Settings, Renamed
from settings.layout import DataLayout

__all__ = ["DataLayout", "R3Settings", "Renamed"]
