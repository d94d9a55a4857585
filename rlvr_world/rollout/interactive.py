"""Interactive multi-step rollouts: a policy in the loop chooses each turn's injected action tokens.

The multi-step video layout (``data.video_layout.MultiStepLayout``) alternates F sampled frame tokens and A
injected action tokens per step. For training the actions are known (``MultiStepLayout.forced`` gives
``forced_tokens`` / ``forced_mask`` for ``generate``); for real2sim evaluation they come from a policy that
looks at the frame the world model just imagined. ``generate_interactive`` is ``generate`` with the
``forced_fn`` callback: when a forced run [t, t + k) starts, the callback gets ``(t, generated)`` with every
token decided so far (``generated`` [P*G, t]) and returns the run's tokens [P*G, k]; they are appended to
the KV cache by one forward of k (+ 1) tokens, never a re-prefill of the history.

``latest_frame_policy`` adapts a policy on frame tokens (``act(frame [P*G, F]) -> action ids [P*G, A]``)
to that callback: the frame is the F tokens just before the run. Decoding the frame to pixels, running the
image policy and tokenizing its action happen inside ``act`` (the caller owns the tokenizer and the policy;
this module knows neither). A sliding context window for long episodes is the caller's loop: call again
with the newest frames as the prompt.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .engine import ForcedFn, Rollout, generate

__all__ = ["generate_interactive", "latest_frame_policy"]


def generate_interactive(model, prompts: torch.Tensor, *, forced_mask: torch.Tensor, policy: ForcedFn,
                         group_size: int = 1, **kwargs) -> Rollout:
    """``generate`` with the forced tokens chosen by ``policy(t, generated [P*G, t]) -> [P*G, k]``.

    forced_mask [N] bool sets max_new_tokens = N and where the policy's tokens go; other keyword arguments
    (temperature, top_k, top_p, seed, eos_id, sequence_ids, ...) are ``generate``'s.
    """
    if not isinstance(forced_mask, torch.Tensor) or forced_mask.dim() != 1:
        got = tuple(forced_mask.shape) if isinstance(forced_mask, torch.Tensor) else type(forced_mask).__name__
        raise ValueError(f"forced_mask must be a 1-D bool tensor [max_new_tokens], got {got}")
    return generate(model, prompts, group_size=group_size, max_new_tokens=forced_mask.shape[0],
                    forced_mask=forced_mask, forced_fn=policy, **kwargs)


def latest_frame_policy(act: Callable[[torch.Tensor], torch.Tensor], tokens_per_frame: int) -> ForcedFn:
    """A ``forced_fn`` that calls ``act(frame [P*G, F])`` on the F tokens generated just before each forced run.

    >>> fn = latest_frame_policy(lambda frame: frame[:, -1:] + 100, tokens_per_frame=2)
    >>> fn(3, torch.tensor([[1, 2, 3]])).tolist()
    [[103]]
    """
    if isinstance(tokens_per_frame, bool) or not isinstance(tokens_per_frame, int) or tokens_per_frame < 1:
        raise ValueError(f"tokens_per_frame must be an int >= 1, got {tokens_per_frame!r}")

    def forced_fn(step: int, generated: torch.Tensor) -> torch.Tensor:
        if step < tokens_per_frame:
            raise ValueError(f"a forced run at response step {step} has no generated frame of "
                             f"tokens_per_frame={tokens_per_frame} tokens before it")
        return act(generated[:, step - tokens_per_frame: step])

    return forced_fn
