"""rlvr_world: train world models by reinforcement learning from verifiable rewards (RLVR).

Importing the package needs only torch: the compiled extension ``_C``, Triton and the simulators are
loaded when a path that uses them runs.
"""

__version__ = "0.1.0"

from . import ops, rl

__all__ = ["__version__", "ops", "rl"]
