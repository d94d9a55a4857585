"""Models: the networks the trainer, the rollout engine and the rewards run (DESIGN §2).

* ``lpips``: VGG16 / AlexNet feature nets and the LPIPS v0.1 metric (``LPIPS``), a video reward.
"""

from . import lpips
from .lpips import LPIPS

__all__ = ["LPIPS", "lpips"]
