"""Run configuration of the language world models: ``rlvr-train sft``, ``rlvr-train grpo`` (text) and ``mpc``.

Same rules as ``rlvr_world.config`` (dataclasses, presets, YAML + dotted overrides, every error a
ValueError naming the dotted key), which registers these roots and presets. The text GRPO root shares the
``grpo`` subcommand with the video one: it is chosen by a text preset (``--preset textgame-small``) or by
``kind: text`` at the top of a YAML file, and ``to_yaml`` writes that line.

Defaults follow the paper's language-model settings where they apply (G = 5 samples per prompt, LoRA rank
32 when LoRA is on, reward: binary exact match for text games, F1 for web pages); the sizes of the
``*-small`` presets are for this CPU (a few minutes per stage).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from .config import RunConfig, TrainConfig, _non_negative, _positive, check_grpo_common

__all__ = [
    "TEXT_PRESETS",
    "LMConfig",
    "MPCConfig",
    "MPCRun",
    "SFTRun",
    "TextDataConfig",
    "TextGRPOConfig",
    "TextGRPORun",
]

DEFAULT_ROOTS = {"textgame": "data/textgame/scienceworld", "web": "data/web/miniwob"}


@dataclass
class TextDataConfig:
    """Transitions of a text domain: ``root/{train,val,test}.jsonl``, collected first when missing."""

    domain: Literal["textgame", "web"] = "textgame"
    root: str = DEFAULT_ROOTS["textgame"]
    # what makes a missing root: the built-in simulator of the domain ("builtin": ScienceWorld / MiniWoB++),
    # or "none" (the files must exist, e.g. converted from ByteSized32 with rlvr_world.data.textgame)
    source: Literal["builtin", "none"] = "builtin"
    collect: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the domain's collector
    max_prompt_tokens: int = 1024  # longer transitions are dropped (counted in the log)
    max_answer_tokens: int = 256  # gold answers longer than this are dropped; also the rollout length
    train_limit: int = 0  # use at most this many training transitions (0: all)
    eval_split: Literal["val", "test"] = "test"  # held-out split of the evaluations and the report
    eval_limit: int = 200  # held-out transitions per evaluation (a fixed seeded subset; 0: all)

    def check(self, where: str = "data") -> None:
        _positive(where, max_prompt_tokens=self.max_prompt_tokens, max_answer_tokens=self.max_answer_tokens)
        _non_negative(where, train_limit=self.train_limit, eval_limit=self.eval_limit)


@dataclass
class LMConfig:
    """The language model: a local HF directory (``init_from``) or a ``transformer`` preset trained from scratch."""

    name: str = "lm-tiny"  # rlvr_world.models.transformer preset when training from scratch
    overrides: dict[str, Any] = field(default_factory=dict)  # ModelArgs fields (vocab_size comes from the tokenizer)
    init_from: str | None = None  # HF Qwen2/LLaMA directory, or an sft run (its model/), to start from
    tokenizer: str | None = None  # HF tokenizer directory; None: init_from's, else a BPE trained on the data
    bpe_vocab_size: int = 2048
    lora_rank: int = 0  # > 0: LoRA adapters (peft) on the attention and MLP projections; 0: full fine-tuning
    lora_alpha: float = 64.0
    lora_dropout: float = 0.0

    def check(self, where: str = "model") -> None:
        from .models.transformer import PRESETS, ModelArgs

        if self.init_from is None:
            if self.name not in PRESETS:
                raise ValueError(f"{where}.name must be one of {sorted(PRESETS)}, got {self.name!r}")
            unknown = sorted(set(self.overrides) - set(ModelArgs.__dataclass_fields__))
            if unknown:
                raise ValueError(f"{where}.overrides has unknown ModelArgs field(s) {unknown}")
        _positive(where, bpe_vocab_size=self.bpe_vocab_size)
        _non_negative(where, lora_rank=self.lora_rank)
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"{where}.lora_dropout must be in [0, 1), got {self.lora_dropout!r}")


@dataclass
class TextGRPOConfig:
    """GRPO on text answers (loss semantics in DESIGN §5; the rollouts stop at the end-of-turn token)."""

    group_size: int = 5  # the paper's G for language world models
    prompts_per_step: int = 16
    mini_batch_prompts: int = 8  # must divide prompts_per_step
    ppo_epochs: int = 1
    clip_low: float = 0.2
    clip_high: float = 0.2
    clip_c: float = 3.0
    kl_coef: float = 1e-3
    advantage_scale: Literal["std", "none"] = "std"
    reward: Literal["default", "binary", "task_specific", "f1"] = "default"  # default: binary / f1 by domain
    temperature: float = 1.0
    micro_batch_size: int = 8  # sequences per forward/backward
    # rollouts: our engine, or vLLM for large models (installed separately; the policy's weights are loaded into it
    # before every rollout; evaluation stays on our engine)
    backend: Literal["engine", "vllm"] = "engine"

    def check(self, where: str = "grpo") -> None:
        check_grpo_common(self, where)


@dataclass
class SFTRun(RunConfig):
    recipe: ClassVar[str] = "sft"
    summary: ClassVar[str] = "supervised fine-tuning of a language world model (text game / web page)"

    data: TextDataConfig = field(default_factory=TextDataConfig)
    model: LMConfig = field(default_factory=LMConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        lr=1e-3, warmup_steps=50, schedule="cosine", min_lr_ratio=0.1, weight_decay=0.01, batch_size=16,
        steps=2000, eval_every=500, checkpoint_every=500, keep_checkpoints=1, out_dir="runs/sft"))
    progress: bool = True


@dataclass
class TextGRPORun(RunConfig):
    recipe: ClassVar[str] = "grpo"
    kind: ClassVar[str] = "text"
    summary: ClassVar[str] = "post-train a language world model with GRPO on a verifiable reward"

    data: TextDataConfig = field(default_factory=TextDataConfig)
    model: LMConfig = field(default_factory=lambda: LMConfig(init_from="runs/sft"))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        lr=1e-5, warmup_steps=0, schedule="constant", weight_decay=0.0, steps=200, eval_every=50,
        checkpoint_every=50, keep_checkpoints=1, out_dir="runs/grpo_text"))
    grpo: TextGRPOConfig = field(default_factory=TextGRPOConfig)
    progress: bool = True


@dataclass
class MPCConfig:
    """Model-predictive control of a MiniWoB++ agent with web world models (``rlvr_world.eval.mpc``)."""

    tasks: list[str] = field(default_factory=list)  # MiniWoB++ task names; [] = the collector's default tasks
    # episode seeds per task, held out: the web collector's data uses seeds 0-149
    seeds: list[int] = field(default_factory=lambda: list(range(1000, 1010)))
    max_steps: int = 8  # actions per episode
    candidates: int = 8  # proposals scored per step
    # world models to compare, name -> HF model directory (an sft / grpo run's model/); the agent is also run
    # with no world model (the proposal policy alone) and with the true next page (the upper bound)
    world_models: dict[str, str] = field(default_factory=dict)
    max_new_tokens: int = 256  # longest predicted changes text
    proposal_seed: int = 0  # seeds the proposal policy's shuffle of the valid actions
    oracle: bool = True  # also run the true-next-page arm
    out_dir: str = "runs/mpc"

    def check(self, where: str = "mpc") -> None:
        _positive(where, max_steps=self.max_steps, candidates=self.candidates, max_new_tokens=self.max_new_tokens)
        if not self.seeds:
            raise ValueError(f"{where}.seeds must list at least one seed, got []")
        reserved = sorted(set(self.world_models) & {"proposal", "oracle"})
        if reserved:
            raise ValueError(f"{where}.world_models names {reserved} are reserved for the baseline arms")


@dataclass
class MPCRun(RunConfig):
    recipe: ClassVar[str] = "mpc"
    summary: ClassVar[str] = "MPC web agent on MiniWoB++: success with no / base / RLVR / true world model"

    mpc: MPCConfig = field(default_factory=MPCConfig)
    progress: bool = True  # tqdm progress bar


# ---------------------------------------------------------------------------------------------------------
# presets (CPU size: minutes per stage)

SMALL = {
    "textgame": {"root": "runs/lang/data/textgame", "sft_steps": 800, "sft_batch": 8, "grpo_steps": 40,
                 "max_prompt": 768, "max_answer": 256},
    "web": {"root": "runs/lang/data/web", "sft_steps": 600, "sft_batch": 16, "grpo_steps": 40, "max_prompt": 512,
            "max_answer": 160},
}
COLLECT = {"textgame": {"scope": "focus", "workers": 2}, "web": {"seeds": [0, 150], "workers": 2}}
SMOKE_COLLECT = {"textgame": {"tasks": ["find-living-thing"], "variations_per_task": [1, 1, 1],
                              "max_steps_per_episode": 8, "scope": "focus"},
                 "web": {"tasks": ["enter-text", "click-checkboxes"], "episodes_per_task": 10}}


def _data(domain: str, size: str) -> TextDataConfig:
    q = SMALL[domain]
    if size == "smoke":
        return TextDataConfig(domain=domain, root=f"runs/smoke/data/{domain}", collect=dict(SMOKE_COLLECT[domain]),
                              max_prompt_tokens=2048, max_answer_tokens=64, eval_limit=4)
    return TextDataConfig(domain=domain, root=q["root"], collect=dict(COLLECT[domain]), max_prompt_tokens=q["max_prompt"],
                          max_answer_tokens=q["max_answer"], eval_limit=200)


def _sft(domain: str, size: str) -> SFTRun:
    steps = 20 if size == "smoke" else SMALL[domain]["sft_steps"]
    return SFTRun(data=_data(domain, size), model=LMConfig(name="lm-tiny", bpe_vocab_size=512 if size == "smoke" else 2048),
                  train=TrainConfig(lr=2e-3, warmup_steps=min(100, steps // 10), schedule="cosine", min_lr_ratio=0.05,
                                    weight_decay=0.01, batch_size=4 if size == "smoke" else SMALL[domain]["sft_batch"],
                                    steps=steps, eval_every=0,
                                    checkpoint_every=250, keep_checkpoints=1, log_every=10,
                                    out_dir=f"runs/{'smoke' if size == 'smoke' else 'lang'}/sft_{domain}", resume=True))


def _grpo(domain: str, size: str) -> TextGRPORun:
    base = "smoke" if size == "smoke" else "lang"
    steps = 3 if size == "smoke" else SMALL[domain]["grpo_steps"]
    return TextGRPORun(
        data=_data(domain, size), model=LMConfig(init_from=f"runs/{base}/sft_{domain}"),
        train=TrainConfig(lr=1e-4, schedule="constant", betas=[0.9, 0.999],
                          steps=steps, eval_every=0, checkpoint_every=20, keep_checkpoints=1, log_every=1,
                          out_dir=f"runs/{base}/grpo_{domain}", resume=True),
        grpo=TextGRPOConfig(group_size=5, prompts_per_step=2 if size == "smoke" else 16,
                            mini_batch_prompts=1 if size == "smoke" else 8, kl_coef=1e-3, micro_batch_size=10))


def _mpc(size: str) -> MPCRun:
    """The MPC table of ``make lang``: no / SFT / RLVR / true world model on the web collector's tasks."""
    base = "smoke" if size == "smoke" else "lang"
    return MPCRun(mpc=MPCConfig(
        tasks=["enter-text", "click-checkboxes"] if size == "smoke" else [],
        seeds=list(range(1000, 1002 if size == "smoke" else 1005)), max_new_tokens=160,
        world_models={"sft": f"runs/{base}/sft_web/model", "rlvr": f"runs/{base}/grpo_web/model"},
        out_dir=f"runs/{base}/mpc"))


TEXT_PRESETS = {
    "mpc-small": lambda: _mpc("small"),
    "mpc-smoke": lambda: _mpc("smoke"),
    **{f"sft-{domain}-{size}": (lambda d=domain, s=size: _sft(d, s)) for domain in SMALL for size in ("small", "smoke")},
    **{f"grpo-{domain}-{size}": (lambda d=domain, s=size: _grpo(d, s)) for domain in SMALL for size in ("small", "smoke")},
}
