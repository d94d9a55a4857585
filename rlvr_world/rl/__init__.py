"""RL pieces shared by the trainers: typed containers and GRPO advantages."""

from .advantages import grpo_advantages
from .types import GRPOStats, Rollout

__all__ = ["GRPOStats", "Rollout", "grpo_advantages"]
