"""Run configuration: dataclasses per concern, one root per recipe, named presets, YAML + dotted overrides.

A recipe's configuration is a root dataclass (``CollectRun``, ``PretrainRun``, ``GRPORun``, ...) whose
fields are sections, one dataclass per concern (``DataConfig``, ``ModelConfig``, ``TokenizerConfig``,
``TrainConfig``, ``GRPOConfig``, ``EvalConfig``). ``load_config`` resolves one in a fixed order:

1. the recipe's defaults, or a named preset (``PRESETS``, gpt-fast's ``ModelArgs.from_name`` style);
2. a YAML file, which only *sets values* of fields that exist (a YAML file cannot add keys or code);
3. dotted ``key=value`` overrides (``grpo.group_size=16``, ``data.tasks=[drawer-open,reach]``), each
   value parsed with ``yaml.safe_load`` (so ``3`` is an int, ``1e-3`` a float, ``true`` a bool, ``[a,b]`` a
   list, ``null`` None); for a ``str`` field the text is taken as is (``data.root=2024`` is the string
   ``"2024"``).

Everything is checked before any work starts, and every error is a ``ValueError`` naming the dotted key:
unknown keys list the keys allowed at that level (with a close match when there is one); wrong types
name the expected type and the value; enumerated fields (``typing.Literal``) list the allowed values;
range checks (positive sizes, probabilities in [0, 1], ...) run last, in each section's ``check``.

Choices: plain dataclasses + PyYAML, no OmegaConf/Hydra (no interpolation, no config groups: a preset
is a Python function, so it can be read and diffed). An int is accepted for a float field (``lr=1``), and so is
a string that spells a float (YAML 1.1 reads ``1e-6``, without a dot, as a string);
a bool is never accepted for an int. A YAML mapping given for a section merges into it key by key, a
mapping given for a ``dict`` field (``data.grades``, ``model.overrides``) replaces the whole dict, and a
dotted override may set one key of such a dict (``model.overrides.dim=256``). ``to_yaml`` writes the
resolved config, headed by its ``recipe``, so that the file loads back to an equal config
(``load_config(recipe, path)``) and can be kept beside the checkpoints.

The defaults of the RL sections are the paper's (RLVR-World, arXiv 2505.13934, video world model on
RT-1: G = 16 samples per prompt, 128 prompts per step, clip 0.2/0.2, dual clip 3.0, k3 KL 1e-3, reward
−(MAE + LPIPS)); the recipes that use the other sections refine their defaults as they are built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from ._typed_config import apply_overrides, apply_yaml, set_fields, unknown_key_message

__all__ = [
    "PRESETS",
    "RECIPES",
    "CollectRun",
    "DataConfig",
    "EvalConfig",
    "EvalRun",
    "GRPOConfig",
    "GRPORun",
    "ModelConfig",
    "PretrainRun",
    "Real2SimConfig",
    "Real2SimRun",
    "RunConfig",
    "TokenizerConfig",
    "TokenizerRun",
    "TrainConfig",
    "apply_overrides",
    "apply_yaml",
    "from_dict",
    "load_config",
    "to_dict",
    "to_yaml",
]


# ---------------------------------------------------------------------------------------------------------
# sections (one dataclass per concern)


def _positive(where: str, **values) -> None:
    for name, v in values.items():
        if v < 1:
            raise ValueError(f"{where}.{name} must be >= 1, got {v!r}")


def _non_negative(where: str, **values) -> None:
    for name, v in values.items():
        if v < 0:
            raise ValueError(f"{where}.{name} must be >= 0, got {v!r}")


@dataclass
class DataConfig:
    """Episode data: where it lives and, for the built-in simulator, how it is collected.

    The collection fields are the arguments of ``rlvr_world.data.sim.collect`` (Meta-World scripted
    experts with quality grades); the training recipes read ``root`` and the clip layout.
    """

    root: str = "data/metaworld64"  # dataset directory: root/{train,val,test}/*.npz + meta.json
    tasks: list[str] = field(default_factory=lambda: ["drawer-open", "drawer-close"])  # Meta-World tasks
    episodes_per_task: int = 100
    image_size: int = 64  # frames are image_size x image_size RGB
    max_steps: int = 100  # env steps per episode (fixed length)
    frame_skip: int = 2  # env steps per stored frame: T = max_steps // frame_skip frames
    split_fractions: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])  # train, val, test
    seed: int = 0  # episode k of task t is seeded by (seed, t, k): same data for any worker count
    workers: int = 1  # collection processes
    camera: str = "corner3"
    grades: dict[str, float] | None = None  # {grade: weight}; None: sim.DEFAULT_GRADE_WEIGHTS
    context_frames: int = 4  # clip layout of the world model: frames given as the prompt ...
    future_frames: int = 1  # ... and frames predicted (1: single-step; the paper's multi-step uses 7)
    clip_stride: int = 1  # stored frames between consecutive clip frames (collection's frame_skip is separate)

    def check(self, where: str = "data") -> None:
        _positive(where, episodes_per_task=self.episodes_per_task, image_size=self.image_size,
                  max_steps=self.max_steps, frame_skip=self.frame_skip, workers=self.workers,
                  context_frames=self.context_frames, future_frames=self.future_frames,
                  clip_stride=self.clip_stride)
        if not self.tasks:
            raise ValueError(f"{where}.tasks must name at least one task, got []")
        if self.frame_skip > self.max_steps:
            raise ValueError(f"{where}.frame_skip must be <= {where}.max_steps={self.max_steps}, "
                             f"got {self.frame_skip}")
        if len(self.split_fractions) != 3 or any(f < 0 for f in self.split_fractions) \
                or sum(self.split_fractions) <= 0:
            raise ValueError(f"{where}.split_fractions must be 3 non-negative numbers (train, val, test) with a "
                             f"positive sum, got {self.split_fractions!r}")
        if self.grades is not None:
            from .data.sim import GRADES  # numpy only; the simulator itself is imported lazily by collect

            unknown = sorted(set(self.grades) - set(GRADES))
            if unknown:
                raise ValueError(f"{where}.grades has unknown grade(s) {unknown}; allowed: {list(GRADES)}")
            if any(w < 0 for w in self.grades.values()) or sum(self.grades.values()) <= 0:
                raise ValueError(f"{where}.grades weights must be >= 0 with a positive sum, got {self.grades!r}")


def _check_preset(where: str, name: str, presets, args_cls, overrides: Mapping, build: Callable) -> None:
    """A preset name plus field overrides of a model's args dataclass: known name, known fields, and args that
    build (their own checks, reported under ``where``)."""
    if name not in presets:
        raise ValueError(f"{where}.name must be one of {sorted(presets)}, got {name!r}")
    allowed = [f.name for f in dataclasses.fields(args_cls)]
    for key in overrides:
        if key not in allowed:
            raise ValueError(unknown_key_message(f"{where}.overrides.{key}", key, allowed))
    try:
        build()
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None


@dataclass
class ModelConfig:
    """The world model: a ``rlvr_world.models.transformer`` preset name plus field overrides.

    ``args()`` gives ``ModelArgs.from_name(name, **overrides)``; ``vwm-s`` is the paper's RT-1 model size.
    """

    name: str = "vwm-s"  # one of rlvr_world.models.transformer.PRESETS
    overrides: dict[str, Any] = field(default_factory=dict)  # ModelArgs fields, e.g. {vocab_size: 9008}
    init_from: str | None = None  # checkpoint or HF-layout directory to start from (None: random init)

    def args(self):
        from .models.transformer import ModelArgs

        return ModelArgs.from_name(self.name, **self.overrides)

    def check(self, where: str = "model") -> None:
        from .models.transformer import PRESETS, ModelArgs

        _check_preset(where, self.name, PRESETS, ModelArgs, self.overrides, self.args)


@dataclass
class TokenizerConfig:
    """The visual tokenizer: frames -> FSQ token grids, and how ``rlvr-train tokenizer`` trains it.

    Like ``ModelConfig``: a preset name plus field overrides (``args()``). ``kind="frame"``: a
    ``rlvr_world.models.frame_tokenizer`` preset (``FrameTokenizerArgs``); ``sim-64`` turns 64x64 simulator
    frames into 8x8 tokens, ``rt1`` 256x320 RT-1 frames into 16x20 = 320 tokens (the paper's); both use the
    paper's FSQ levels [7, 5, 5, 5, 5]. ``kind="compressive"``: a ``rlvr_world.models.compressive_tokenizer``
    preset (``CompressiveTokenizerArgs``, iVideoGPT's context-conditioned tokenizer; ``sim-64``: 8x8 tokens
    per context frame, 4x4 per future frame), trained on clips of ``data.context_frames`` +
    ``data.future_frames`` frames, ``data.clip_stride`` apart.
    """

    kind: Literal["frame", "compressive"] = "frame"
    name: str = "sim-64"  # a preset of frame_tokenizer.PRESETS (kind=frame) or compressive_tokenizer.PRESETS
    overrides: dict[str, Any] = field(default_factory=dict)  # args fields of the kind, e.g. {levels: [8, 5, 5, 5]}
    checkpoint: str | None = None  # trained tokenizer directory (save_pretrained layout of the kind) to load
    # training (rlvr-train tokenizer): loss = L1 + lpips_weight * LPIPS-VGG; 0 drops the perceptual term
    lpips_weight: float = 1.0
    lpips_random_backbone: bool = False  # no ImageNet VGG weights: allow LPIPS's seeded random backbone (smoke runs)
    color_jitter: float = 0.0  # brightness = contrast = saturation jitter of training frames; 0 disables
    # adversarial term (VQ-GAN's PatchGAN + hinge loss, models.discriminator): + gan_weight x (adaptive weight)
    # x -mean D(recon), from step gan_start_step on. 0 disables it (no discriminator is built). VQ-GAN: 0.8
    gan_weight: float = 0.0
    gan_start_step: int = 0  # optimizer steps of reconstruction-only training before the GAN terms start (>= 0)
    adaptive_gan_weight: bool = True  # scale by ||grad L_rec|| / ||grad L_gan|| at the decoder's last layer
    disc_layers: int = 3  # PatchGAN stride-2 conv layers (1..6); frames need a side >= 3 * 2**disc_layers
    disc_channels: int = 64  # width of the discriminator's first layer (doubles per layer, at most 8x)
    disc_lr: float = 1e-4  # discriminator AdamW LR (constant, no weight decay; > 0)
    disc_betas: list[float] = field(default_factory=lambda: [0.5, 0.9])  # discriminator AdamW betas (VQ-GAN's)
    # EMA of the tokenizer's weights; 0 disables, else in [0, 1). When on, the EMA weights are what is
    # evaluated and saved as out_dir/tokenizer (the checkpoints hold both the live and the EMA weights)
    ema_decay: float = 0.0

    def _args_cls(self):
        if self.kind == "compressive":
            from .models import compressive_tokenizer as module

            return module.PRESETS, module.CompressiveTokenizerArgs
        from .models import frame_tokenizer as module

        return module.PRESETS, module.FrameTokenizerArgs

    def args(self):
        """``FrameTokenizerArgs`` (kind=frame) or ``CompressiveTokenizerArgs`` (kind=compressive) of name + overrides."""
        return self._args_cls()[1].from_name(self.name, **self.overrides)

    def check(self, where: str = "tokenizer") -> None:
        _non_negative(where, lpips_weight=self.lpips_weight, color_jitter=self.color_jitter,
                      gan_weight=self.gan_weight, gan_start_step=self.gan_start_step, ema_decay=self.ema_decay)
        _positive(where, disc_channels=self.disc_channels)
        if not 1 <= self.disc_layers <= 6:
            raise ValueError(f"{where}.disc_layers must be in [1, 6], got {self.disc_layers!r}")
        if not self.disc_lr > 0:
            raise ValueError(f"{where}.disc_lr must be > 0, got {self.disc_lr!r}")
        if len(self.disc_betas) != 2 or not all(0 <= b < 1 for b in self.disc_betas):
            raise ValueError(f"{where}.disc_betas must be 2 numbers in [0, 1), got {self.disc_betas!r}")
        if not self.ema_decay < 1:
            raise ValueError(f"{where}.ema_decay must be in [0, 1) (0 disables the EMA), got {self.ema_decay!r}")
        presets, args_cls = self._args_cls()
        _check_preset(where, self.name, presets, args_cls, self.overrides, self.args)

@dataclass
class TrainConfig:
    """Optimisation and run bookkeeping shared by every training recipe (AdamW)."""

    lr: float = 1e-4
    warmup_steps: int = 0
    schedule: Literal["cosine", "constant"] = "cosine"  # after warm-up; cosine decays to min_lr_ratio * lr
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    batch_size: int = 16  # samples per optimizer step per rank, before accumulation
    grad_accum: int = 1
    steps: int = 10_000
    eval_every: int = 500  # 0: never (the end of the run still evaluates)
    eval_batches: int = 8  # batches of batch_size held-out samples per evaluation
    checkpoint_every: int = 1000  # 0: only at the end
    keep_checkpoints: int = 3  # newest checkpoints kept in out_dir/checkpoints; 0 keeps all
    log_every: int = 10
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on a GPU that has it, else fp32
    seed: int = 0
    out_dir: str = "runs/default"  # checkpoints, the resolved config.yaml and logs
    resume: bool = False  # continue from the latest checkpoint in out_dir
    # world-model pre-training only: probability that each target-frame token *fed as input* is replaced by a
    # random frame code (labels unchanged), so the model learns to continue past its own mistakes; 0 disables
    token_noise: float = 0.0

    def check(self, where: str = "train") -> None:
        if not 0.0 <= self.token_noise < 1.0:
            raise ValueError(f"{where}.token_noise must be in [0, 1), got {self.token_noise!r}")
        _positive(where, batch_size=self.batch_size, grad_accum=self.grad_accum, steps=self.steps,
                  log_every=self.log_every, eval_batches=self.eval_batches)
        _non_negative(where, warmup_steps=self.warmup_steps, weight_decay=self.weight_decay,
                      keep_checkpoints=self.keep_checkpoints,
                      grad_clip=self.grad_clip, eval_every=self.eval_every,
                      checkpoint_every=self.checkpoint_every)
        if not self.lr > 0:
            raise ValueError(f"{where}.lr must be > 0, got {self.lr!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"{where}.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"{where}.betas must be two numbers in [0, 1), got {self.betas!r}")


def check_grpo_common(g, where: str) -> None:
    """The checks every GRPO section shares (video and text): group, batch split, clipping, KL, temperature."""
    _positive(where, group_size=g.group_size, prompts_per_step=g.prompts_per_step,
              mini_batch_prompts=g.mini_batch_prompts, ppo_epochs=g.ppo_epochs, micro_batch_size=g.micro_batch_size)
    if g.group_size < 2:
        raise ValueError(f"{where}.group_size must be >= 2 (advantages are relative within a group), "
                         f"got {g.group_size}")
    if g.prompts_per_step % g.mini_batch_prompts:
        raise ValueError(f"{where}.mini_batch_prompts must divide {where}.prompts_per_step="
                         f"{g.prompts_per_step}, got {g.mini_batch_prompts}")
    for name in ("clip_low", "clip_high"):
        if not 0.0 <= getattr(g, name) < 1.0:
            raise ValueError(f"{where}.{name} must be in [0, 1), got {getattr(g, name)!r}")
    if g.clip_c <= 1.0:
        raise ValueError(f"{where}.clip_c must be > 1, got {g.clip_c!r}")
    _non_negative(where, kl_coef=g.kl_coef)
    if not g.temperature > 0:
        raise ValueError(f"{where}.temperature must be > 0, got {g.temperature!r}")


@dataclass
class GRPOConfig:
    """GRPO (the paper's RL post-training; loss semantics in DESIGN §5 / ``rlvr_world.ops.grpo_loss``).

    Each step samples ``group_size`` responses for each of ``prompts_per_step`` prompts, scores them with
    ``reward`` (a key of ``rlvr_world.rewards.REWARDS``), normalises rewards within each group and updates
    the policy ``ppo_epochs`` times in mini-batches of ``mini_batch_prompts`` prompts (whole groups).
    """

    group_size: int = 16  # G samples per prompt
    prompts_per_step: int = 128  # P prompts per RL step (P * G rollouts)
    mini_batch_prompts: int = 32  # prompts per policy update (must divide prompts_per_step)
    ppo_epochs: int = 1
    clip_low: float = 0.2  # ratio clipped to [1 - clip_low, 1 + clip_high]
    clip_high: float = 0.2
    clip_c: float = 3.0  # dual clip for negative advantages
    kl_coef: float = 1e-3  # k3 ("low_var_kl") penalty to the reference policy; 0 drops the reference
    advantage_scale: Literal["std", "none"] = "std"  # "none": Dr. GRPO (r - mean)
    reward: str = "neg_mae_lpips"  # -(MAE + LPIPS), the paper's video reward
    lpips_net: Literal["vgg", "alex"] = "vgg"  # LPIPS backbone of the reward and the metrics (the paper: VGG16)
    # multi-step only: reward -= repetition_penalty x the share of predicted frames identical to the one before
    repetition_penalty: float = 0.0
    temperature: float = 1.0
    # training samples are drawn from the full distribution: the loss recomputes log-probs over the whole
    # vocabulary, so a truncated sampler would make old and new log-probs disagree (top_k 0 / top_p 1 only)
    top_k: int = 0
    top_p: float = 1.0
    micro_batch_size: int = 64  # sequences per forward/backward of the update (gradient accumulation)
    ref_precision: Literal["auto", "fp32", "bf16"] = "auto"  # frozen reference model: auto = bf16 on a GPU
    logprob_check_every: int = 10  # steps between sampler-vs-trainer log-prob comparisons; 0 never
    # validation on fixed held-out clips (every train.eval_every steps, at step 0 and at the end)
    eval_prompts: int = 64  # val clips
    eval_samples: int = 4  # samples per clip (metrics averaged; same random numbers at every evaluation)
    eval_top_k: int = 100  # the paper evaluates with top-k 100 sampling; 0 disables
    eval_temperature: float = 1.0

    def check(self, where: str = "grpo") -> None:
        _positive(where, group_size=self.group_size, prompts_per_step=self.prompts_per_step,
                  mini_batch_prompts=self.mini_batch_prompts, ppo_epochs=self.ppo_epochs,
                  micro_batch_size=self.micro_batch_size, eval_prompts=self.eval_prompts,
                  eval_samples=self.eval_samples)
        _non_negative(where, logprob_check_every=self.logprob_check_every, eval_top_k=self.eval_top_k,
                      repetition_penalty=self.repetition_penalty)
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"{where}.top_p must be in (0, 1], got {self.top_p!r}")
        if self.top_k != 0 or self.top_p != 1.0:
            raise ValueError(f"{where}.top_k must be 0 and {where}.top_p 1.0 for training samples (the loss "
                             f"recomputes log-probs over the full vocabulary), got top_k={self.top_k!r} "
                             f"top_p={self.top_p!r}; {where}.eval_top_k sets validation sampling")
        if not self.eval_temperature > 0:
            raise ValueError(f"{where}.eval_temperature must be > 0, got {self.eval_temperature!r}")
        check_grpo_common(self, where)
        _non_negative(where, top_k=self.top_k)
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"{where}.top_p must be in (0, 1], got {self.top_p!r}")


@dataclass
class EvalConfig:
    """Evaluation of a trained world model on held-out episodes (single- or multi-step prediction)."""

    checkpoint: str | None = None  # the run directory or checkpoint to evaluate
    split: Literal["train", "val", "test"] = "test"
    metrics: list[str] = field(default_factory=lambda: ["mse", "mae", "psnr", "ssim", "lpips"])
    num_samples: int = 1  # samples per prompt (metrics averaged)
    max_prompts: int = 0  # 0: all
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    save_videos: int = 8  # prediction grids written as GIF/PNG
    out_dir: str = "runs/eval"
    seed: int = 0

    def check(self, where: str = "eval") -> None:
        _positive(where, num_samples=self.num_samples)
        _non_negative(where, max_prompts=self.max_prompts, save_videos=self.save_videos, top_k=self.top_k)
        allowed = ["mse", "mae", "psnr", "ssim", "lpips"]
        bad = [m for m in self.metrics if m not in allowed]
        if bad:
            raise ValueError(f"{where}.metrics has unknown metric(s) {bad}; allowed: {allowed}")
        if not self.temperature > 0:
            raise ValueError(f"{where}.temperature must be > 0, got {self.temperature!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"{where}.top_p must be in (0, 1], got {self.top_p!r}")


@dataclass
class Real2SimConfig:
    """Real2sim policy evaluation: run policies in the simulator and in the world model, compare success."""

    checkpoint: str | None = None
    tasks: list[str] = field(default_factory=lambda: ["drawer-open", "drawer-close"])
    policies: list[str] = field(default_factory=lambda: ["expert", "noisy", "random_segments"])
    episodes_per_policy: int = 20
    horizon: int = 50  # world-model steps per rollout
    out_dir: str = "runs/real2sim"
    seed: int = 0

    def check(self, where: str = "real2sim") -> None:
        _positive(where, episodes_per_policy=self.episodes_per_policy, horizon=self.horizon)
        if not self.tasks or not self.policies:
            raise ValueError(f"{where}.tasks and {where}.policies must not be empty")


# ---------------------------------------------------------------------------------------------------------
# roots (one per recipe)


@dataclass
class RunConfig:
    """Base of the per-recipe roots; ``recipe`` names the ``rlvr-train`` subcommand that runs it."""

    recipe: ClassVar[str] = ""
    summary: ClassVar[str] = ""

    def check(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value) and hasattr(value, "check"):
                value.check(f.name)


@dataclass
class CollectRun(RunConfig):
    recipe: ClassVar[str] = "collect"
    summary: ClassVar[str] = "collect built-in Meta-World episodes (scripted experts, graded) into data.root"

    data: DataConfig = field(default_factory=DataConfig)
    progress: bool = True  # tqdm progress bar


@dataclass
class TokenizerRun(RunConfig):
    recipe: ClassVar[str] = "tokenizer"
    summary: ClassVar[str] = "train the FSQ visual tokenizer on episode frames"

    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir="runs/tokenizer"))
    progress: bool = True  # tqdm progress bar


@dataclass
class PretrainRun(RunConfig):
    recipe: ClassVar[str] = "pretrain"
    summary: ClassVar[str] = "pre-train the world model by next-token likelihood (MLE)"

    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir="runs/pretrain"))
    progress: bool = True  # tqdm progress bar


@dataclass
class GRPORun(RunConfig):
    recipe: ClassVar[str] = "grpo"
    summary: ClassVar[str] = "post-train the world model with GRPO on a verifiable reward"

    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        lr=1e-5, warmup_steps=0, schedule="constant", weight_decay=0.0, steps=1000, eval_every=50,
        checkpoint_every=100, out_dir="runs/grpo"))
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    progress: bool = True  # tqdm progress bar


@dataclass
class EvalRun(RunConfig):
    recipe: ClassVar[str] = "eval"
    summary: ClassVar[str] = "evaluate a world model: single/multi-step video metrics and prediction grids"

    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


@dataclass
class Real2SimRun(RunConfig):
    recipe: ClassVar[str] = "real2sim"
    summary: ClassVar[str] = "real2sim policy evaluation: predict policy success rates inside the world model"

    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    real2sim: Real2SimConfig = field(default_factory=Real2SimConfig)


RECIPES: dict[str, type[RunConfig]] = {
    cls.recipe: cls for cls in (CollectRun, TokenizerRun, PretrainRun, GRPORun, EvalRun, Real2SimRun)
}


# ---------------------------------------------------------------------------------------------------------
# presets


def _collect_sim_64() -> CollectRun:
    """Meta-World drawer-open/close at 64x64, 100 episodes per task (about 10 min on 2 CPU workers)."""
    return CollectRun(data=DataConfig(root="data/metaworld64", tasks=["drawer-open", "drawer-close"],
                                      episodes_per_task=100, image_size=64, max_steps=100, frame_skip=2,
                                      workers=2))


def _grpo_rt1() -> GRPORun:
    """The paper's RT-1 single-step GRPO: 4 context frames of 16x20 tokens, G 16, 128 prompts per step in
    mini-batches of 32, AdamW lr 5e-5 constant, weight decay 0.01, clip 0.2, dual clip 3, k3 KL 1e-3, grad clip
    1.0, one PPO epoch, reward -(MAE + LPIPS). ``model.init_from``: your pre-trained RT-1 world model."""
    return GRPORun(
        data=DataConfig(root="data/rt1", context_frames=4, future_frames=1, clip_stride=1),
        tokenizer=TokenizerConfig(kind="frame", name="rt1"),
        model=ModelConfig(name="vwm-s", init_from="runs/pretrain_rt1"),
        train=TrainConfig(lr=5e-5, warmup_steps=0, schedule="constant", weight_decay=0.01, betas=[0.9, 0.999],
                          grad_clip=1.0, steps=1000, eval_every=50, checkpoint_every=50, log_every=1,
                          out_dir="runs/grpo_rt1"),
        grpo=GRPOConfig(group_size=16, prompts_per_step=128, mini_batch_prompts=32, ppo_epochs=1, clip_low=0.2,
                        clip_high=0.2, clip_c=3.0, kl_coef=1e-3, reward="neg_mae_lpips", micro_batch_size=32,
                        eval_prompts=256, eval_samples=1, eval_top_k=100))


def _grpo_rt1_multistep() -> GRPORun:
    """The paper's RT-1 multi-step GRPO: the compressive tokenizer (320 tokens per context frame, 80 per future
    frame), 7 future frames each followed by its 13 injected action tokens (response 651 tokens, vocab 9,008),
    reward -(MAE + LPIPS) averaged over the 7 frames; optimisation as ``grpo-rt1``."""
    cfg = _grpo_rt1()
    cfg.data.future_frames = 7
    cfg.tokenizer = TokenizerConfig(kind="compressive", name="rt1")
    cfg.model.init_from = "runs/pretrain_rt1_multistep"
    cfg.train.out_dir = "runs/grpo_rt1_multistep"
    return cfg


# the quick start's sizes (train.quickstart): all four stages under runs/<size>/, 64x64 drawer episodes, the
# sim-64 tokenizer (8x8 tokens), vwm-tiny with 2 context frames 2 stored frames apart. Measured on 2 shared CPU
# cores with OMP_NUM_THREADS=1: quickstart collect ~50-85 s, tokenizer ~3 min, pretrain ~5 min, GRPO ~2-4 min;
# smoke ~10 + 45 + 45 s before GRPO.
QUICK = {
    "quickstart": {"episodes": 50, "max_steps": 100, "workers": 2, "tokenizer_steps": 400, "tokenizer_lr": 2e-3,
                   "pretrain_steps": 1000, "grpo_steps": 40, "prompts": 8, "mini_batch": 4, "group": 8,
                   "eval_prompts": 64, "eval_every": 20},
    "smoke": {"episodes": 6, "max_steps": 50, "workers": 1, "tokenizer_steps": 100, "tokenizer_lr": 1e-3,
              "pretrain_steps": 160, "grpo_steps": 10, "prompts": 4, "mini_batch": 2, "group": 8,
              "eval_prompts": 16, "eval_every": 5},
}


def _quick_data(size: str) -> DataConfig:
    q = QUICK[size]
    return DataConfig(root=f"runs/{size}/data", tasks=["drawer-open", "drawer-close"], episodes_per_task=q["episodes"],
                      image_size=64, max_steps=q["max_steps"], frame_skip=2, workers=q["workers"], context_frames=2,
                      clip_stride=2)


def _collect_quick(size: str) -> CollectRun:
    return CollectRun(data=_quick_data(size))


def _tokenizer_quick(size: str) -> TokenizerRun:
    steps = QUICK[size]["tokenizer_steps"]
    return TokenizerRun(
        data=_quick_data(size), tokenizer=TokenizerConfig(kind="frame", name="sim-64", lpips_weight=0.0),
        train=TrainConfig(lr=QUICK[size]["tokenizer_lr"], warmup_steps=min(50, steps // 5), schedule="cosine", min_lr_ratio=0.1,
                          betas=[0.9, 0.99], batch_size=8, steps=steps, eval_every=0, eval_batches=4,
                          checkpoint_every=100, keep_checkpoints=1, out_dir=f"runs/{size}/tokenizer", resume=True))


def _pretrain_quick(size: str) -> PretrainRun:
    steps = QUICK[size]["pretrain_steps"]
    return PretrainRun(
        data=_quick_data(size), tokenizer=TokenizerConfig(kind="frame", name="sim-64",
                                                          checkpoint=f"runs/{size}/tokenizer"),
        model=ModelConfig(name="vwm-tiny"),
        train=TrainConfig(lr=2e-3, warmup_steps=min(50, steps // 8), schedule="cosine", min_lr_ratio=0.1,
                          weight_decay=0.01, batch_size=16, steps=steps, eval_every=0, eval_batches=4,
                          checkpoint_every=200, keep_checkpoints=1, out_dir=f"runs/{size}/pretrain", resume=True,
                          token_noise=0.1))


def _grpo_quick(size: str) -> GRPORun:
    q = QUICK[size]
    return GRPORun(
        data=_quick_data(size), tokenizer=TokenizerConfig(kind="frame", name="sim-64"),
        model=ModelConfig(name="vwm-tiny", init_from=f"runs/{size}/pretrain"),
        train=TrainConfig(lr=1e-4, schedule="constant", betas=[0.9, 0.999], grad_clip=1.0, steps=q["grpo_steps"],
                          eval_every=q["eval_every"], checkpoint_every=10, keep_checkpoints=1,
                          log_every=1, out_dir=f"runs/{size}/grpo", resume=True),
        grpo=GRPOConfig(group_size=q["group"], prompts_per_step=q["prompts"], mini_batch_prompts=q["mini_batch"],
                        kl_coef=1e-3, reward="neg_mae_lpips", lpips_net="alex", micro_batch_size=64,
                        eval_prompts=q["eval_prompts"],
                        eval_samples=4, eval_top_k=100))


PRESETS: dict[str, Callable[[], RunConfig]] = {
    "collect-sim-64": _collect_sim_64,
    "grpo-rt1": _grpo_rt1,
    "grpo-rt1-multistep": _grpo_rt1_multistep,
    **{f"{stage}-{size}": (lambda make=make, size=size: make(size))
       for size in QUICK
       for stage, make in (("collect", _collect_quick), ("tokenizer", _tokenizer_quick),
                           ("pretrain", _pretrain_quick), ("grpo", _grpo_quick))},
}


# language world models (config_lang imports this module's sections: registered here, after them)
from .config_lang import TEXT_PRESETS, MPCRun, SFTRun, TextGRPORun

RECIPES.update({"sft": SFTRun, "mpc": MPCRun})
# roots that share a subcommand with RECIPES[recipe], chosen by a preset or a YAML file's top-level `kind:`
KINDS: dict[tuple[str, str], type[RunConfig]] = {("grpo", "text"): TextGRPORun}
PRESETS.update(TEXT_PRESETS)


def root_class(recipe: str, kind: str | None = None) -> type[RunConfig]:
    """The config root of ``recipe`` (``kind``: None / "video" for the default root, "text" for text GRPO)."""
    if kind in (None, getattr(RECIPES[recipe], "kind", "video")):
        return RECIPES[recipe]
    if (recipe, kind) not in KINDS:
        kinds = [getattr(RECIPES[recipe], "kind", "video")] + [k for r, k in KINDS if r == recipe]
        raise ValueError(f"kind of recipe {recipe!r} must be one of {kinds}, got {kind!r}")
    return KINDS[(recipe, kind)]


def _yaml_kind(path: str | Path) -> str | None:
    try:
        values = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return None  # apply_yaml reports it
    return values.get("kind") if isinstance(values, Mapping) else None


def presets_for(recipe: str) -> list[str]:
    """Names of the presets whose root runs under ``recipe``."""
    return sorted(name for name, make in PRESETS.items() if make().recipe == recipe)


def load_config(recipe: str, path: str | Path | None = None, overrides: Iterable[str] = (), *,
                preset: str | None = None) -> RunConfig:
    """The resolved, checked config of ``recipe``: defaults or ``preset``, then ``path``, then ``overrides``.

    >>> cfg = load_config("collect", overrides=["data.image_size=32", "data.tasks=[reach]"])
    >>> cfg.data.image_size, cfg.data.tasks
    (32, ['reach'])
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; recipes: {', '.join(RECIPES)}")
    cls = root_class(recipe, _yaml_kind(path) if path is not None and preset is None else None)
    if preset is None:
        config = cls()
    else:
        if preset not in PRESETS and f"{recipe}-{preset}" in PRESETS:
            preset = f"{recipe}-{preset}"  # the short name: --preset smoke on grpo is grpo-smoke
        if preset not in PRESETS:
            names = ", ".join(presets_for(recipe)) or "none"
            raise ValueError(f"unknown preset {preset!r}; presets of {recipe}: {names}")
        config = PRESETS[preset]()
        if config.recipe != recipe:
            raise ValueError(f"preset {preset!r} is a {config.recipe!r} config, not {recipe!r}; presets of "
                             f"{recipe}: {', '.join(presets_for(recipe)) or 'none'}")
    if path is not None:
        apply_yaml(config, path)
    apply_overrides(config, overrides)
    config.check()
    return config


# ---------------------------------------------------------------------------------------------------------
# output


def to_dict(config) -> dict:
    """Plain nested dict of a config (lists and dicts copied)."""
    return dataclasses.asdict(config)


def from_dict(recipe: str, values: Mapping) -> RunConfig:
    """A checked config of ``recipe`` from a nested dict (as ``to_dict`` gives)."""
    values = dict(values)
    config = root_class(recipe, values.pop("kind", None))()
    if values.pop("recipe", recipe) != recipe:
        raise ValueError(f"values are a config of another recipe, not {recipe!r}")
    set_fields(config, values, "")
    config.check()
    return config


def to_yaml(config: RunConfig, path: str | Path | None = None) -> str:
    """The resolved config as YAML headed by ``recipe:``; also written to ``path`` when given."""
    head = {"recipe": config.recipe, **({"kind": config.kind} if hasattr(config, "kind") else {})}
    text = yaml.safe_dump({**head, **to_dict(config)}, sort_keys=False,
                          default_flow_style=None)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return text
