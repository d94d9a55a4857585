"""RL pieces shared by the trainers: typed containers and GRPO advantages."""

from .advantages import grpo_advantages
from .types import GRPOStats

__all__ = ["GRPOStats", "grpo_advantages"]
