"""Optional vLLM backend of ``rollout.generate`` for large language models (``backend="vllm"``).

Our engine (``engine.generate``) stays the default; this module is the glue to a ``vllm.LLM`` when one is
installed (``pip install vllm``, NVIDIA GPU needed). vLLM is imported lazily, only by ``make_llm`` and
``generate_vllm``; everything else here (the conversion code) is plain Python and torch, unit-tested
without vLLM.

Supported vLLM versions: **0.6.3** (the reference's; V0 engine) **to the current V1 releases**. The API
used, and where it was checked (vllm-project/vllm sources and docs):

* ``vllm.SamplingParams(n, temperature, top_k, top_p, seed, max_tokens, min_tokens, logprobs,
  stop_token_ids, ignore_eos, detokenize)``: all present from 0.6.3 (docs.vllm.ai/en/v0.6.3.post1
  /dev/sampling_params.html) to today (``vllm/sampling_params.py``).
  - ``top_k`` off is **-1**: vLLM <= 0.8 rejects 0 ("top_k must be -1 (disable), or at least 1"); newer
    releases default to 0 and "quietly accept -1 as disabled". So -1 is the one value every version takes.
  - ``temperature`` 0 is greedy, and vLLM rejects ``n > 1`` with it ("n must be 1 when using greedy
    sampling" in current releases; "best_of must be 1" in V0): greedy requests ask for n=1 and the one
    output is repeated G times (identical rows, as our engine gives). 0 < temperature < 0.01 is silently
    clamped to 0.01 by current vLLM (``_MAX_TEMP``), which would change the distribution, so it is refused
    here; current vLLM also refuses temperature > 2.
  - ``logprobs=0`` returns the log-prob of the sampled token only (OpenAI semantics: "the API will always
    return the log probability of the sampled token, so there may be up to logprobs+1 elements").
  - ``ignore_eos=True`` always: it only disables the *tokenizer's / generation config's* EOS (with it,
    ``update_from_generation_config`` adds no extra stop ids); ``stop_token_ids=[eos_id]`` is checked
    independently of ``ignore_eos`` in both engines (V0 ``StopChecker``, V1 ``check_stop``), and the stop
    token stays in ``token_ids``. So fixed-length mode (``eos_id=None``) gives exactly ``max_tokens`` tokens
    and EOS mode stops at ``eos_id`` only, as our engine does, whatever the checkpoint's own EOS is.
  - ``seed``: a per-request ``torch.Generator``; with ``n > 1`` V1 gives child g the seed ``seed + g``
    (``vllm/v1/engine/parallel_sampling.py``), V0 draws the n samples from one generator. We send one
    ``SamplingParams`` per prompt with a seed derived from (seed, sequence id), so a prompt's samples do not
    depend on the batch composition (they are NOT the tokens our engine draws: different RNG).
* ``LLM.generate(prompts, sampling_params, use_tqdm=False)`` with ``prompts = [{"prompt_token_ids": [...]}]``
  (the ``TokensPrompt`` TypedDict) and a list of SamplingParams, one per prompt; it returns one
  ``RequestOutput`` per prompt in input order, ``.outputs`` a list of ``CompletionOutput(index, token_ids,
  cumulative_logprob, logprobs: list[dict[token_id, Logprob(logprob, rank, decoded_token)]],
  finish_reason, stop_reason)``.
* Weights: the model inside vLLM has ``load_weights(iterable of (HF name, tensor))`` (it handles the
  q/k/v and gate/up fusion and TP sharding). Reached in process at
  ``llm.llm_engine.model_executor.driver_worker.model_runner.model`` (V0, as verl / OpenRLHF used with
  0.6.3) or ``...driver_worker.worker.model_runner.model`` (V1 with ``VLLM_ENABLE_V1_MULTIPROCESSING=0``),
  else through ``llm.apply_model(fn)`` (V0 >= 0.8 and V1; V1's multiprocess engine needs
  ``VLLM_ALLOW_INSECURE_SERIALIZATION=1`` to ship the function, and every worker gets a copy of the
  tensors, so keep it for small models or set ``VLLM_ENABLE_V1_MULTIPROCESSING=0``).

**Which distribution vLLM's log-probs are of** (what ``Rollout.logprobs`` must be: the distribution sampled
from, after temperature, top-k, top-p -- DESIGN §5):

* V0 engine (0.6.3 .. 0.10 with ``VLLM_USE_V1=0``): the sampler divides the logits by the temperature,
  applies top-k / top-p (masking to -inf), then takes ``log_softmax`` of those -> **processed** log-probs,
  the sampled distribution (``vllm/model_executor/layers/sampler.py``; vllm-project/vllm#9453 "Logprob
  values are affected by sampling parameters"). Exception: with ``VLLM_USE_FLASHINFER_SAMPLER=1`` the
  truncation happens inside FlashInfer, so the log-probs are after temperature but before top-k/top-p.
* V1 engine (default from 0.8): **raw** log-probs, ``log_softmax`` of the model's logits before temperature
  and truncation ("This is different from the V0 sampler", ``vllm/v1/sample/sampler.py``). From **0.10.0**
  (vllm-project/vllm#21398) ``LLM(..., logprobs_mode="processed_logprobs")`` returns the log-probs after
  temperature and top-k/top-p (the native top-k/top-p path is then used instead of FlashInfer's).
  ``make_llm`` sets it; ``generate_vllm`` checks the engine's mode (``logprobs_mode_of``) and refuses raw
  log-probs unless the sampling distribution is the raw one (temperature 1, no truncation) or
  ``allow_raw_logprobs=True`` -- then the trainer must recompute the old log-probs itself
  (``ops.token_logprobs`` with the temperature, and ``ops.reference.sampling_mask`` for truncation).
* Greedy (temperature 0): vLLM returns the untempered log-softmax; we return 0, as our engine does.
* vLLM's top-k keeps ties like ours; its top-p keeps the token that crosses p like ours; boundaries can
  differ by rounding, and in bf16 the logits differ anyway: the trainer's recomputation is the reference
  (the log-prob contract of issue 6 item 6 holds for our engine, not for vLLM).

Not supported: forced tokens (``forced_tokens`` / ``forced_mask`` / ``forced_fn``: multi-step video with
injected actions) -- a ValueError says to use the default engine.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import warnings
from collections.abc import Iterator, Sequence

import torch

from rlvr_world.models.hf_format import ours_to_hf
from rlvr_world.rl.types import Rollout

__all__ = ["MIN_VLLM_VERSION", "PROCESSED_LOGPROBS_MODES", "generate_vllm", "hf_state_dict_items", "load_weights",
           "logprobs_mode_of", "make_llm", "prompt_seed", "sampling_params", "to_rollout"]

#: the oldest vLLM this backend was written against (the reference's)
MIN_VLLM_VERSION = (0, 6, 3)
#: vLLM ``logprobs_mode`` values whose log-probs are of the distribution sampled from
PROCESSED_LOGPROBS_MODES = ("processed_logprobs",)

_MAX_TEMP = 0.01  # vLLM clamps 0 < temperature < this up to it
_SEED_MOD = 2**62  # per-prompt seeds stay far below int64 even after vLLM adds the sample index

_MISSING = ("the vLLM backend (backend=\"vllm\") needs the optional package vllm, which is not installed: "
            "`pip install vllm` (>= 0.6.3; it needs an NVIDIA GPU with CUDA). Our own engine "
            "(rlvr_world.rollout.generate, the default backend=\"engine\") needs no extra package.")


# ---------------------------------------------------------------------------------------------------- import
def _import_vllm():
    """``import vllm`` or an ImportError that says what to do."""
    try:
        import vllm
    except ImportError as err:
        raise ImportError(_MISSING) from err
    version = _version_tuple(getattr(vllm, "__version__", ""))
    if version is not None and version < MIN_VLLM_VERSION:
        raise ImportError(f"the vLLM backend needs vllm >= {'.'.join(map(str, MIN_VLLM_VERSION))}, "
                          f"got {vllm.__version__}: `pip install -U vllm`")
    return vllm


def _version_tuple(text: str) -> tuple[int, ...] | None:
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", str(text))
    return None if m is None else tuple(int(g or 0) for g in m.groups())


# ---------------------------------------------------------------------------------------------------- checks
def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_common(group_size, max_new_tokens, eos_id) -> None:
    if not _is_int(group_size) or group_size <= 0:
        raise ValueError(f"group_size must be an int > 0, got {group_size!r}")
    if not _is_int(max_new_tokens) or max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be an int > 0, got {max_new_tokens!r}")
    if eos_id is not None and (not _is_int(eos_id) or eos_id < 0):
        raise ValueError(f"eos_id must be None (fixed length) or an int >= 0, got {eos_id!r}")


def _check_forced(forced_tokens, forced_mask, forced_fn) -> None:
    forced = forced_tokens is not None or forced_fn is not None or (
        isinstance(forced_mask, torch.Tensor) and bool(forced_mask.any())) or (
        forced_mask is not None and not isinstance(forced_mask, torch.Tensor))
    if forced:
        raise ValueError("forced_tokens (with forced_mask / forced_fn) are not supported by the vLLM backend: "
                         "vLLM cannot inject tokens into a running sequence without re-prefilling it. Use the "
                         "default engine (backend=\"engine\"), which appends forced runs into its KV cache.")


# ---------------------------------------------------------------------------------------------------- params
def sampling_params(group_size: int, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
                    top_p: float = 1.0, seed: int | None = 0, eos_id: int | None = None) -> dict:
    """The keyword arguments of ``vllm.SamplingParams`` for one prompt of ``engine.generate``'s arguments.

    ========================  ====================================================================
    ours                      vLLM
    ========================  ====================================================================
    group_size G              ``n=G`` (``n=1`` when temperature == 0: vLLM refuses n > 1 for greedy;
                              ``to_rollout(greedy=True)`` repeats the one output G times)
    temperature               ``temperature`` (0 = greedy; 0 < T < 0.01 refused: vLLM would clamp it)
    top_k (0 = off)           ``top_k`` (-1 = off: the value every vLLM version accepts)
    top_p (1 = off)           ``top_p``
    seed                      ``seed`` (per request; ``generate_vllm`` passes ``prompt_seed(...)``)
    max_new_tokens N          ``max_tokens=N``, ``min_tokens=0``
    eos_id None (fixed N)     ``ignore_eos=True``, ``stop_token_ids=[]``: exactly N tokens
    eos_id (EOS mode)         ``ignore_eos=True``, ``stop_token_ids=[eos_id]``: stops at eos_id only
                              (the checkpoint's own EOS is ignored, as our engine ignores it)
    (log-probs)               ``logprobs=0``: the sampled token's log-prob at every position
    (no text)                 ``detokenize=False``
    ========================  ====================================================================
    """
    _check_common(group_size, max_new_tokens, eos_id)
    if not _is_num(temperature) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if 0 < temperature < _MAX_TEMP:
        raise ValueError(f"temperature must be 0 (greedy) or >= {_MAX_TEMP} with the vLLM backend (vLLM clamps "
                         f"smaller ones up to {_MAX_TEMP}, which changes the distribution), got {temperature!r}")
    if not _is_int(top_k) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0 (0 = off), got {top_k!r}")
    if not _is_num(top_p) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must be a number in (0, 1] (1 = off), got {top_p!r}")
    if seed is not None and (not _is_int(seed) or not 0 <= seed < 2**63 - group_size):
        raise ValueError(f"seed must be None or an int in [0, 2^63 - group_size) (vLLM gives sample g the seed "
                         f"seed + g), got {seed!r}")
    greedy = temperature == 0
    return {
        "n": 1 if greedy else group_size,
        "temperature": float(temperature),
        "top_k": -1 if greedy or top_k == 0 else top_k,
        "top_p": 1.0 if greedy else float(top_p),
        "seed": seed,
        "max_tokens": max_new_tokens,
        "min_tokens": 0,
        "logprobs": 0,
        "ignore_eos": True,
        "stop_token_ids": [] if eos_id is None else [eos_id],
        "detokenize": False,
    }


def _mix64(x: int) -> int:
    """SplitMix64's finaliser: decorrelates nearby seeds."""
    x = (x + 0x9E3779B97F4A7C15) % 2**64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) % 2**64
    return x ^ (x >> 31)


def prompt_seed(seed: int, sequence_id: int, group_size: int) -> int:
    """The vLLM seed of prompt ``sequence_id``: ``(mix64(seed) + sequence_id * G) mod 2^62``; V1 gives its
    sample g the seed ``prompt_seed + g``, so every (prompt id, sample) of one seed has its own stream (our
    engine's ``offset = (sequence_id * G + g) << 32`` keying, by other means)."""
    return (_mix64(int(seed)) + int(sequence_id) * group_size) % _SEED_MOD


# ---------------------------------------------------------------------------------------------------- outputs
def _logprob_value(entry, token: int, row: int, t: int) -> float:
    """The sampled token's log-prob from one position's ``{token_id: Logprob}`` (or a float)."""
    try:
        value = entry[token]
    except (KeyError, IndexError, TypeError):
        keys = list(entry.keys()) if hasattr(entry, "keys") else type(entry).__name__
        raise ValueError(f"vLLM output row {row} position {t}: no log-prob for the sampled token {token} "
                         f"(got entries for {keys}); SamplingParams needs logprobs=0 or more") from None
    value = float(getattr(value, "logprob", value))
    if not math.isfinite(value):
        raise ValueError(f"vLLM output row {row} position {t}: the sampled token {token} has log-prob {value}; "
                         "the log-probs are not of the distribution sampled from (check logprobs_mode)")
    return value


def to_rollout(request_outputs: Sequence, group_size: int, max_new_tokens: int, eos_id: int | None, *,
               greedy: bool = False) -> Rollout:
    """vLLM ``RequestOutput``s (one per prompt, in prompt order) -> ``Rollout`` on the CPU.

    Rows p*G .. p*G+G-1 are prompt p's ``outputs`` in ``index`` order. ``tokens`` [P*G, N] int64: the sampled
    tokens, then ``eos_id`` as padding after EOS (EOS mode: a row ends at its first ``eos_id``, which keeps
    mask True; a row shorter than N must end with ``eos_id``). ``logprobs`` [P*G, N] fp32: the sampled
    token's log-prob as vLLM returned it (0 where mask is False; 0 everywhere when ``greedy``, as our
    engine returns). ``mask`` [P*G, N] bool: True on sampled tokens. Fixed-length mode (``eos_id=None``):
    every row must have exactly N tokens. ``greedy``: a prompt may have one output (n=1), repeated G times.
    """
    _check_common(group_size, max_new_tokens, eos_id)
    G, N = group_size, max_new_tokens
    if len(request_outputs) == 0:
        raise ValueError("request_outputs must hold one RequestOutput per prompt, got none")
    P = len(request_outputs)
    tokens = torch.full((P * G, N), 0 if eos_id is None else eos_id, dtype=torch.int64)
    logprobs = torch.zeros((P * G, N), dtype=torch.float32)
    mask = torch.zeros((P * G, N), dtype=torch.bool)
    for p, request in enumerate(request_outputs):
        outs = list(request.outputs)
        if all(hasattr(o, "index") for o in outs):
            outs.sort(key=lambda o: o.index)
        if greedy and len(outs) == 1:
            outs = outs * G
        if len(outs) != G:
            raise ValueError(f"prompt {p} has {len(outs)} outputs, expected group_size={G}"
                             + (" (or 1 when greedy)" if greedy else ""))
        for g, out in enumerate(outs):
            row = p * G + g
            ids = [int(i) for i in out.token_ids]
            if eos_id is not None and eos_id in ids:
                ids = ids[:ids.index(eos_id) + 1]  # the first EOS ends the row
            n = len(ids)
            if n > N or (eos_id is None and n != N):
                raise ValueError(f"prompt {p} sample {g} has {n} tokens, expected "
                                 f"{'exactly' if eos_id is None else 'at most'} max_new_tokens={N}")
            if eos_id is not None and n < N and (n == 0 or ids[-1] != eos_id):
                reason = getattr(out, "finish_reason", None)
                raise ValueError(f"prompt {p} sample {g} stopped after {n} < max_new_tokens={N} tokens without "
                                 f"eos_id={eos_id} (finish_reason={reason!r}); was the prompt + max_new_tokens "
                                 "longer than the engine's max_model_len, or another stop condition set?")
            if n:
                tokens[row, :n] = torch.tensor(ids, dtype=torch.int64)
                mask[row, :n] = True
            if greedy or n == 0:
                continue
            lps = out.logprobs
            if lps is None or len(lps) < n:
                raise ValueError(f"prompt {p} sample {g} carries {0 if lps is None else len(lps)} log-prob entries "
                                 f"for {n} tokens; SamplingParams needs logprobs=0 (the sampled token's log-prob)")
            logprobs[row, :n] = torch.tensor([_logprob_value(lps[t], ids[t], row, t) for t in range(n)],
                                             dtype=torch.float32)
    return Rollout(tokens=tokens, logprobs=logprobs, mask=mask)


# ---------------------------------------------------------------------------------------------------- weights
def hf_state_dict_items(model, *, dtype: torch.dtype | None = None,
                        include_tied_head: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor) of every parameter of our ``Transformer`` (``hf_format.HF_NAMES``), for vLLM's
    ``model.load_weights``: the names of transformers' LlamaForCausalLM / Qwen2ForCausalLM. With tied
    embeddings ``lm_head.weight`` is left out (as in an HF checkpoint; vLLM skips it anyway) unless
    ``include_tied_head``. Tensors are detached, on the model's device, cast to ``dtype`` if given."""
    tied = bool(getattr(model.args, "tie_embeddings", False))
    for name, tensor in model.state_dict().items():
        if tied and name == "output.weight" and not include_tied_head:
            continue
        hf_name = ours_to_hf(name)
        if hf_name is None:
            raise ValueError(f"parameter {name!r} has no HF name in hf_format.HF_NAMES")
        tensor = tensor.detach()
        yield hf_name, tensor if dtype is None else tensor.to(dtype)


def _attr_path(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


_INPROC_MODEL_PATHS = (
    "llm_engine.model_executor.driver_worker.model_runner.model",         # V0 (0.6.3 ..)
    "llm_engine.model_executor.driver_worker.worker.model_runner.model",  # V1, VLLM_ENABLE_V1_MULTIPROCESSING=0
)


def _tensor_parallel_size(llm) -> int:
    for path in ("llm_engine.vllm_config.parallel_config.tensor_parallel_size",
                 "llm_engine.parallel_config.tensor_parallel_size"):
        size = _attr_path(llm, path)
        if _is_int(size):
            return size
    return 1


def _load_into(weights: list, model) -> None:  # module level: picklable for apply_model
    model.load_weights(weights)


def load_weights(llm, model, *, dtype: torch.dtype | None = None) -> int:
    """Hand our ``Transformer``'s weights to a ``vllm.LLM`` built from a checkpoint of the same config.

    In process (V0; V1 with ``VLLM_ENABLE_V1_MULTIPROCESSING=0``; tensor parallel size 1) the vLLM model's
    ``load_weights`` gets the tensors directly (no copy for same-device, same-dtype tensors); otherwise
    ``llm.apply_model`` runs it in every worker (each shards for its TP rank). Returns the tensor count."""
    items = list(hf_state_dict_items(model, dtype=dtype))
    target = None if _tensor_parallel_size(llm) > 1 else next(
        (m for m in (_attr_path(llm, p) for p in _INPROC_MODEL_PATHS) if hasattr(m, "load_weights")), None)
    if target is not None:
        target.load_weights(items)
    elif callable(getattr(llm, "apply_model", None)):
        llm.apply_model(functools.partial(_load_into, [(n, t.cpu()) for n, t in items]))
    else:
        raise RuntimeError("cannot reach the model inside this vllm.LLM: none of "
                           f"{[f'llm.{p}' for p in _INPROC_MODEL_PATHS]} exists and llm.apply_model is missing "
                           "(vLLM >= 0.6.3 with VLLM_ENABLE_V1_MULTIPROCESSING=0, or a vLLM with LLM.apply_model)")
    return len(items)


# ---------------------------------------------------------------------------------------------------- LLM
def _engine_arg_names(vllm) -> set[str]:
    engine_args = getattr(vllm, "EngineArgs", None)
    if engine_args is None or not dataclasses.is_dataclass(engine_args):
        return set()
    return {f.name for f in dataclasses.fields(engine_args)}


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def make_llm(model_dir: str | os.PathLike, **kwargs):
    """A ``vllm.LLM`` for an HF LLaMA / Qwen2 directory (e.g. ``Transformer.save_pretrained``'s).

    Defaults (each overridable by ``kwargs``, passed to ``vllm.LLM``): ``logprobs_mode="processed_logprobs"``
    where the installed vLLM has it (>= 0.10), so returned log-probs are of the sampled distribution;
    ``skip_tokenizer_init=True`` when the directory has no tokenizer files (token ids in, token ids out).
    Raises an ImportError with install instructions when vLLM is missing."""
    vllm = _import_vllm()
    path = os.fspath(model_dir)
    names = _engine_arg_names(vllm)
    options = {}
    if "logprobs_mode" in names:
        options["logprobs_mode"] = "processed_logprobs"
    if os.path.isdir(path) and not any(os.path.exists(os.path.join(path, f)) for f in _TOKENIZER_FILES):
        options["skip_tokenizer_init"] = True
    options.update(kwargs)
    return vllm.LLM(model=path, **options)


def logprobs_mode_of(llm) -> str:
    """What this ``vllm.LLM`` returns as log-probs: its ``logprobs_mode`` (V1 >= 0.10: "raw_logprobs" by
    default, "processed_logprobs" when asked); "processed_logprobs" for the V0 engine (its sampler takes
    log_softmax after temperature and truncation); "raw_logprobs" for V1 before 0.10."""
    mode = _attr_path(llm, "llm_engine.model_config.logprobs_mode")
    if isinstance(mode, str):
        return mode
    engine = getattr(llm, "llm_engine", None)
    module = type(engine).__module__ if engine is not None else ""
    return "raw_logprobs" if module.startswith("vllm.v1") else "processed_logprobs"


def generate_vllm(llm, prompts: torch.Tensor, *, group_size: int, max_new_tokens: int, temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0, seed: int = 0, eos_id: int | None = None,
                  sequence_ids: torch.Tensor | None = None, forced_tokens: torch.Tensor | None = None,
                  forced_mask: torch.Tensor | None = None, forced_fn=None,
                  allow_raw_logprobs: bool = False) -> Rollout:
    """``engine.generate``'s sampling with a ``vllm.LLM`` (``make_llm``): G samples per prompt, rows p*G ..
    p*G+G-1 for prompt p, on the CPU. Same arguments and output contract as ``engine.generate`` except:
    forced tokens are not supported (ValueError); the tokens are not those our engine draws (vLLM's RNG;
    ``prompt_seed`` keys each prompt's requests on (seed, sequence id)); the log-probs are vLLM's, which
    must be of the sampled distribution (``logprobs_mode_of(llm)`` processed) -- raw log-probs are refused
    when temperature != 1 or top-k/top-p truncate, unless ``allow_raw_logprobs`` (then the trainer must
    recompute them). Iterables and Sequences of prompts are not accepted: ``prompts`` is [P, Lp] int64.
    """
    _check_forced(forced_tokens, forced_mask, forced_fn)
    if not isinstance(prompts, torch.Tensor) or prompts.dim() != 2 or prompts.dtype != torch.int64:
        got = f"{tuple(prompts.shape)} {prompts.dtype}" if isinstance(prompts, torch.Tensor) else type(prompts).__name__
        raise ValueError(f"prompts must be a 2-D int64 tensor [P, Lp], got {got}")
    P, Lp = prompts.shape
    if P < 1 or Lp < 1:
        raise ValueError(f"prompts must hold at least one prompt of at least one token, got shape {(P, Lp)}")
    if not _is_int(seed) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an int in [0, 2^64), got {seed!r}")
    if sequence_ids is None:
        ids = list(range(P))
    else:
        if not isinstance(sequence_ids, torch.Tensor) or sequence_ids.shape != (P,) \
                or sequence_ids.dtype.is_floating_point or sequence_ids.dtype == torch.bool:
            raise ValueError(f"sequence_ids must be an integer tensor of shape ({P},) (one id per prompt), got "
                             f"{tuple(sequence_ids.shape) if isinstance(sequence_ids, torch.Tensor) else sequence_ids!r}")
        ids = [int(i) for i in sequence_ids.tolist()]
        if min(ids) < 0:
            raise ValueError(f"sequence_ids must be >= 0, got {min(ids)}")
    # validates the sampling arguments before vLLM is imported
    base = sampling_params(group_size, max_new_tokens, temperature, top_k, top_p, 0, eos_id)
    greedy = temperature == 0
    untouched = temperature == 1 and top_k == 0 and top_p == 1
    vllm = _import_vllm()
    mode = logprobs_mode_of(llm)
    if not greedy and not untouched and mode not in PROCESSED_LOGPROBS_MODES:
        message = (f"this vllm.LLM returns {mode!r} log-probs (before temperature / top-k / top-p), not those of "
                   f"the distribution sampled from (temperature={temperature}, top_k={top_k}, top_p={top_p}); "
                   "build it with make_llm (logprobs_mode=\"processed_logprobs\", vLLM >= 0.10) or use the V0 engine")
        if not allow_raw_logprobs:
            raise ValueError(message + ", or pass allow_raw_logprobs=True and recompute the old log-probs in the "
                             "trainer (ops.token_logprobs with the temperature and the truncation mask)")
        warnings.warn(message + "; the trainer must recompute the old log-probs", stacklevel=2)
    params = [vllm.SamplingParams(**{**base, "seed": prompt_seed(seed, i, group_size)}) for i in ids]
    inputs = [{"prompt_token_ids": row} for row in prompts.tolist()]
    outputs = llm.generate(inputs, params, use_tqdm=False)
    if len(outputs) != P:
        raise ValueError(f"vLLM returned {len(outputs)} request outputs for {P} prompts")
    return to_rollout(outputs, group_size, max_new_tokens, eos_id, greedy=greedy)

