"""Token layouts of the video world models: how frame codes, action bins and special tokens form one sequence.

Both layouts follow one rule: **each frame's tokens are followed by the tokens of the action taken at that
frame** (which leads to the next frame), so the model has seen action t before it predicts frame t+1. A
sequence is a prompt (given) and a response (predicted), both of fixed length.

**SingleStepLayout** (the paper's single-step prediction; vocab = K codes + bins + 2)::

    ids:      [0, K) frame codes | [K, K + bins) action bins | K + bins = BOS | K + bins + 1 = EOS
    prompt:   f_0 a_0 f_1 a_1 ... f_{n-1} a_{n-1} BOS            n (F + A) + 1 tokens
    response: f_n EOS                                            F + 1 tokens (F with eos=False)

  with F = tokens_per_frame, A = action_dims, n = context_frames. Worked example (the paper's RT-1 set-up):
  n = 4 context frames of F = 320 FSQ codes (levels [7,5,5,5,5], K = 4,375) and A = 13 action dims in 256
  bins: vocab = 4,375 + 256 + 2 = 4,633 (BOS 4,631, EOS 4,632); an action value with bin 10 is id 4,385;
  prompt = 4 x (320 + 13) + 1 = 1,333 tokens; response = 321 tokens (320 with ``eos=False``).

**MultiStepLayout** (multi-step prediction with a context tokenizer and a dynamics tokenizer; the context
codes are **offset by the dynamics codebook size** so that the two codebooks never share an id)::

    ids:      [0, K) dynamics codes | [K, K + Kc) context codes | [K + Kc, K + Kc + bins) action bins
              | K + Kc + bins = BOS | K + Kc + bins + 1 = EOS (reserved: responses are fixed length)
    prompt:   c_0 a_0 ... c_{n-1} a_{n-1} BOS                    n (Fc + A) + 1 tokens
    response: f_n a_n  f_{n+1} a_{n+1} ... f_{n+S-1} a_{n+S-1}   S (F + A) tokens

  with Fc = context_tokens_per_frame, F = tokens_per_frame, S = future_frames. The response's action tokens
  are given, not predicted (the rollout injects them: ``forced`` gives ``forced_tokens``/``forced_mask`` for
  ``rlvr_world.rollout.generate``); their labels are -100 and their ``response_mask`` is False. Each step
  ends with its action so steps are uniform (the last action keeps a later turn going). Paper example:
  K = Kc = 4,375, 256 bins: vocab = 9,008; S = 7 steps of 80 + 13 tokens: response = 651 tokens.

Conventions: inputs are integer tensors (numpy accepted) of codebook indices (``FSQ.codes_to_indices``) and
action bins (``ActionTokenizer.encode``) **before** offsetting; ``labels`` follow the Hugging Face rule (same
positions as ``input_ids``, -100 where not a target; the loss shifts by one). A clip from
``ClipSampler`` has one action per frame: single-step uses the first n, multi-step the first n + S.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["IGNORE_INDEX", "LayoutBatch", "MultiStepLayout", "SingleStepLayout"]

IGNORE_INDEX = -100


@dataclass
class LayoutBatch:
    """input_ids [B, S] int64; labels [B, S] int64 (-100 off target); response_mask [B, response_len] bool."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    prompt_len: int
    response_len: int
    response_mask: torch.Tensor


def _ids(name: str, x, shape: tuple, high: int) -> torch.Tensor:
    """Integer tensor of the given shape (None = any size) with values in [0, high), as int64."""
    x = torch.as_tensor(x)
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got {x.dtype}")
    if x.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape)):
        want = ", ".join("B" if s is None else str(s) for s in shape)
        raise ValueError(f"{name} must have shape [{want}], got {tuple(x.shape)}")
    if x.numel() and bool(((x < 0) | (x >= high)).any()):
        bad = x[(x < 0) | (x >= high)]
        raise ValueError(f"{name} must lie in [0, {high}), got {bad.numel()} values outside, e.g. {int(bad[0])}")
    return x.to(torch.int64)


def _interleave(frames: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """frames [B, T, F], actions [B, T, A] (ids) -> [B, T (F + A)]: f_0 a_0 f_1 a_1 ..."""
    return torch.cat([frames, actions.to(frames.device)], dim=2).reshape(frames.shape[0], -1)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")


class _Layout:
    prompt_len: int
    response_len: int

    def split(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids [B, prompt_len + response_len] -> (prompt [B, prompt_len], response [B, response_len])."""
        total = self.prompt_len + self.response_len
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[1] != total:
            got = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids must have shape [B, {total}] (prompt {self.prompt_len} + response "
                             f"{self.response_len}), got {got}")
        return input_ids[:, : self.prompt_len], input_ids[:, self.prompt_len:]

    def _check_response(self, response: torch.Tensor) -> None:
        if not isinstance(response, torch.Tensor) or response.dim() != 2 or response.shape[1] != self.response_len:
            got = tuple(response.shape) if isinstance(response, torch.Tensor) else type(response).__name__
            raise ValueError(f"response must have shape [B, {self.response_len}], got {got}")


@dataclass
class SingleStepLayout(_Layout):
    """Context frames with their actions, BOS, the target frame, EOS (see the module docstring)."""

    tokens_per_frame: int = 320
    context_frames: int = 4
    action_dims: int = 13
    codebook_size: int = 4375
    action_bins: int = 256
    eos: bool = True

    def __post_init__(self):
        _check_positive(tokens_per_frame=self.tokens_per_frame, context_frames=self.context_frames,
                        action_dims=self.action_dims, codebook_size=self.codebook_size, action_bins=self.action_bins)
        self.action_offset = self.codebook_size
        self.bos_id = self.codebook_size + self.action_bins
        self.eos_id = self.bos_id + 1
        self.vocab_size = self.eos_id + 1
        self.num_actions = self.context_frames
        self.prompt_len = self.context_frames * (self.tokens_per_frame + self.action_dims) + 1
        self.response_len = self.tokens_per_frame + int(self.eos)

    def build_prompt(self, context_tokens, action_bins) -> torch.Tensor:
        """context_tokens [B, n, F] codes, action_bins [B, n, A] bins -> prompt [B, prompt_len] int64."""
        n, f, a = self.context_frames, self.tokens_per_frame, self.action_dims
        ctx = _ids("context_tokens", context_tokens, (None, n, f), self.codebook_size)
        acts = _ids("action_bins", action_bins, (ctx.shape[0], n, a), self.action_bins)
        bos = torch.full((ctx.shape[0], 1), self.bos_id, dtype=torch.int64, device=ctx.device)
        return torch.cat([_interleave(ctx, acts + self.action_offset), bos], dim=1)  # [B, P]

    def build(self, frame_tokens, action_bins) -> LayoutBatch:
        """frame_tokens [B, n + 1, F] codes (n context frames + the target), action_bins [B, n, A] bins.

        >>> lay = SingleStepLayout(tokens_per_frame=2, context_frames=2, action_dims=1, codebook_size=5,
        ...                        action_bins=3)
        >>> out = lay.build(torch.tensor([[[0, 1], [2, 3], [4, 4]]]), torch.tensor([[[0], [2]]]))
        >>> out.input_ids.tolist(), out.labels.tolist()
        ([[0, 1, 5, 2, 3, 7, 8, 4, 4, 9]], [[-100, -100, -100, -100, -100, -100, -100, 4, 4, 9]])
        """
        n, f = self.context_frames, self.tokens_per_frame
        frames = _ids("frame_tokens", frame_tokens, (None, n + 1, f), self.codebook_size)
        prompt = self.build_prompt(frames[:, :n], action_bins)
        parts = [prompt, frames[:, n]]
        if self.eos:
            parts.append(torch.full_like(prompt[:, :1], self.eos_id))
        input_ids = torch.cat(parts, dim=1)                                          # [B, P + R]
        labels = input_ids.clone()
        labels[:, : self.prompt_len] = IGNORE_INDEX
        mask = torch.ones(input_ids.shape[0], self.response_len, dtype=torch.bool, device=input_ids.device)
        return LayoutBatch(input_ids, labels, self.prompt_len, self.response_len, mask)

    def response_frames(self, response: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """response [B, response_len] -> (codes [B, 1, F] clamped into [0, K), valid [B] bool: every frame
        token is a code and the EOS, if any, is EOS)."""
        self._check_response(response)
        frame = response[:, : self.tokens_per_frame]
        valid = ((frame >= 0) & (frame < self.codebook_size)).all(dim=1)
        if self.eos:
            valid &= response[:, -1] == self.eos_id
        return frame.clamp(0, self.codebook_size - 1)[:, None], valid


@dataclass
class MultiStepLayout(_Layout):
    """Context frames (context codebook, offset) with actions, BOS, then S steps of frame + injected action."""

    tokens_per_frame: int = 80
    context_tokens_per_frame: int = 320
    context_frames: int = 1
    future_frames: int = 7
    action_dims: int = 13
    codebook_size: int = 4375
    context_codebook_size: int = 4375
    action_bins: int = 256

    def __post_init__(self):
        _check_positive(tokens_per_frame=self.tokens_per_frame, context_tokens_per_frame=self.context_tokens_per_frame,
                        context_frames=self.context_frames, future_frames=self.future_frames,
                        action_dims=self.action_dims, codebook_size=self.codebook_size,
                        context_codebook_size=self.context_codebook_size, action_bins=self.action_bins)
        self.context_offset = self.codebook_size
        self.action_offset = self.codebook_size + self.context_codebook_size
        self.bos_id = self.action_offset + self.action_bins
        self.eos_id = self.bos_id + 1
        self.vocab_size = self.eos_id + 1
        self.num_actions = self.context_frames + self.future_frames
        self.step_len = self.tokens_per_frame + self.action_dims
        self.prompt_len = self.context_frames * (self.context_tokens_per_frame + self.action_dims) + 1
        self.response_len = self.future_frames * self.step_len
        self._frame_pos = (torch.arange(self.response_len) % self.step_len) < self.tokens_per_frame  # [R]

    def build_prompt(self, context_tokens, action_bins) -> torch.Tensor:
        """context_tokens [B, n, Fc] (context codes), action_bins [B, >= n, A] (the first n are used)
        -> prompt [B, prompt_len] int64."""
        n, a = self.context_frames, self.action_dims
        ctx = _ids("context_tokens", context_tokens, (None, n, self.context_tokens_per_frame),
                   self.context_codebook_size)
        acts = torch.as_tensor(action_bins)
        if acts.dim() == 3 and acts.shape[1] >= n:
            acts = acts[:, :n]
        acts = _ids("action_bins", acts, (ctx.shape[0], n, a), self.action_bins)
        bos = torch.full((ctx.shape[0], 1), self.bos_id, dtype=torch.int64, device=ctx.device)
        return torch.cat([_interleave(ctx + self.context_offset, acts + self.action_offset), bos], dim=1)

    def forced(self, action_bins) -> tuple[torch.Tensor, torch.Tensor]:
        """action_bins [B, n + S, A] -> (forced_tokens [B, response_len] int64, forced_mask [response_len] bool):
        the response's action ids where forced_mask is True (0 elsewhere), for ``rollout.generate``."""
        acts = _ids("action_bins", action_bins, (None, self.num_actions, self.action_dims), self.action_bins)
        b = acts.shape[0]
        future = acts[:, self.context_frames:] + self.action_offset                   # [B, S, A]
        blank = torch.zeros(b, self.future_frames, self.tokens_per_frame, dtype=torch.int64, device=acts.device)
        return _interleave(blank, future), (~self._frame_pos).to(acts.device)

    def build(self, frame_tokens, action_bins, *, context_tokens) -> LayoutBatch:
        """frame_tokens [B, S, F] dynamics codes of the future frames, action_bins [B, n + S, A],
        context_tokens [B, n, Fc] context codes.

        >>> lay = MultiStepLayout(tokens_per_frame=1, context_tokens_per_frame=2, context_frames=1,
        ...                       future_frames=2, action_dims=1, codebook_size=3, context_codebook_size=4,
        ...                       action_bins=2)
        >>> out = lay.build(torch.tensor([[[1], [2]]]), torch.tensor([[[0], [1], [0]]]),
        ...                 context_tokens=torch.tensor([[[0, 3]]]))
        >>> out.input_ids.tolist(), out.labels.tolist(), out.response_mask.tolist()
        ([[3, 6, 7, 9, 1, 8, 2, 7]], [[-100, -100, -100, -100, 1, -100, 2, -100]], [[True, False, True, False]])
        """
        s, f = self.future_frames, self.tokens_per_frame
        prompt = self.build_prompt(context_tokens, action_bins)
        frames = _ids("frame_tokens", frame_tokens, (prompt.shape[0], s, f), self.codebook_size)
        forced_tokens, forced_mask = self.forced(action_bins)
        frames = frames.to(prompt.device)
        response = _interleave(frames, forced_tokens.view(-1, s, self.step_len)[:, :, f:].to(prompt.device))
        input_ids = torch.cat([prompt, response], dim=1)                             # [B, P + R]
        mask = (~forced_mask).to(prompt.device).expand(prompt.shape[0], -1).clone()   # [B, R]
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        labels[:, self.prompt_len:] = torch.where(mask, response, IGNORE_INDEX)
        return LayoutBatch(input_ids, labels, self.prompt_len, self.response_len, mask)

    def response_frames(self, response: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """response [B, response_len] -> (dynamics codes [B, S, F] clamped into [0, K), valid [B] bool: every
        frame token is a dynamics code)."""
        self._check_response(response)
        frames = response.view(response.shape[0], self.future_frames, self.step_len)[:, :, : self.tokens_per_frame]
        valid = ((frames >= 0) & (frames < self.codebook_size)).flatten(1).all(dim=1)
        return frames.clamp(0, self.codebook_size - 1), valid
