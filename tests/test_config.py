"""rlvr_world.config: defaults, presets, YAML application, dotted overrides and their error messages."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from rlvr_world import config as C

CONFIGS = Path(C.__file__).parent / "configs"


def test_defaults_are_the_papers():
    g = C.GRPOConfig()
    assert (g.group_size, g.prompts_per_step, g.mini_batch_prompts, g.ppo_epochs) == (16, 128, 32, 1)
    assert (g.clip_low, g.clip_high, g.clip_c, g.kl_coef) == (0.2, 0.2, 3.0, 1e-3)
    assert g.reward == "neg_mae_lpips"
    t = C.TrainConfig()
    assert t.schedule == "cosine" and t.precision == "auto"
    assert list(C.TokenizerConfig().args().levels) == [7, 5, 5, 5, 5]


@pytest.mark.parametrize("recipe", list(C.RECIPES))
def test_every_recipe_default_is_valid_and_round_trips(recipe, tmp_path):
    cfg = C.load_config(recipe)
    assert type(cfg) is C.RECIPES[recipe] and cfg.recipe == recipe
    path = tmp_path / "c.yaml"
    C.to_yaml(cfg, path)
    assert C.load_config(recipe, path) == cfg
    assert C.from_dict(recipe, C.to_dict(cfg)) == cfg


def test_override_parsing_and_types():
    cfg = C.load_config("grpo", overrides=[
        "grpo.group_size=8", "grpo.prompts_per_step=64", "grpo.kl_coef=0", "train.lr=1e-6",
        "train.resume=true", "data.tasks=[reach, push]", "data.split_fractions=[1, 0, 0]",
        "train.out_dir=2024", "model.overrides.vocab_size=9008", "model.init_from=null",
        "data.grades.expert=1", "train.precision=bf16",
    ])
    assert cfg.grpo.group_size == 8 and isinstance(cfg.grpo.group_size, int)
    assert cfg.grpo.kl_coef == 0.0 and isinstance(cfg.grpo.kl_coef, float)  # int widened to float
    assert cfg.train.lr == 1e-6 and cfg.train.resume is True
    assert cfg.data.tasks == ["reach", "push"]
    assert cfg.data.split_fractions == [1.0, 0.0, 0.0] and all(isinstance(x, float) for x in cfg.data.split_fractions)
    assert cfg.train.out_dir == "2024"  # str fields take the text as written
    assert cfg.model.overrides == {"vocab_size": 9008}
    assert cfg.model.args().vocab_size == 9008
    assert cfg.model.init_from is None
    assert cfg.data.grades == {"expert": 1.0}
    assert cfg.train.precision == "bf16"


def test_section_override_with_a_mapping_merges():
    cfg = C.load_config("collect", overrides=["data={image_size: 32, workers: 2}"])
    assert (cfg.data.image_size, cfg.data.workers, cfg.data.max_steps) == (32, 2, C.DataConfig().max_steps)


def test_later_overrides_win():
    cfg = C.load_config("collect", overrides=["data.seed=1", "data.seed=7"])
    assert cfg.data.seed == 7


def test_yaml_file_sets_values_and_overrides_come_after(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("recipe: grpo\ngrpo:\n  group_size: 4\n  prompts_per_step: 8\n  mini_batch_prompts: 4\n"
                    "train:\n  lr: 2.0e-5\nmodel:\n  name: vwm-tiny\n")
    cfg = C.load_config("grpo", path, ["grpo.group_size=2"])
    assert cfg.grpo.group_size == 2 and cfg.grpo.prompts_per_step == 8 and cfg.train.lr == 2e-5
    assert cfg.model.name == "vwm-tiny"
    assert cfg.grpo.clip_c == 3.0  # untouched keys keep their defaults
    assert cfg.train.out_dir == "runs/grpo"  # the recipe's own default


def test_yaml_of_another_recipe_or_not_a_mapping_is_rejected(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("recipe: grpo\n")
    with pytest.raises(ValueError, match="recipe 'grpo', not 'collect'"):
        C.load_config("collect", path)
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        C.load_config("collect", path)
    path.write_text("data: [1\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        C.load_config("collect", path)
    with pytest.raises(ValueError, match="cannot read"):
        C.load_config("collect", tmp_path / "missing.yaml")


def test_empty_yaml_and_empty_section_are_no_ops(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("")
    assert C.load_config("collect", path) == C.CollectRun()
    path.write_text("data:\n")
    assert C.load_config("collect", path) == C.CollectRun()


@pytest.mark.parametrize("override, words", [
    ("grpo.group_sise=4", ["grpo.group_sise", "did you mean 'group_size'", "allowed keys in grpo", "clip_c"]),
    ("grp.group_size=4", ["'grp'", "allowed keys in the top level", "grpo", "train"]),
    ("model.overrides.dimm=4", ["model.overrides.dimm", "n_layers"]),
])
def test_unknown_keys_name_the_key_and_the_allowed_ones(override, words):
    with pytest.raises(ValueError) as e:
        C.load_config("grpo", overrides=[override])
    for w in words:
        assert w in str(e.value)


def test_unknown_key_in_yaml(tmp_path):
    path = tmp_path / "u.yaml"
    path.write_text("train:\n  learning_rate: 1.0\n")
    with pytest.raises(ValueError, match=r"unknown key 'train.learning_rate'.*allowed keys in train: .*lr"):
        C.load_config("pretrain", path)


@pytest.mark.parametrize("override, words", [
    ("grpo.group_size=abc", ["grpo.group_size", "must be int", "'abc'"]),
    ("grpo.group_size=2.5", ["grpo.group_size", "must be int", "2.5"]),
    ("grpo.group_size=true", ["grpo.group_size", "must be int", "True"]),
    ("train.lr=fast", ["train.lr", "must be float", "'fast'"]),
    ("train.resume=3", ["train.resume", "must be bool", "3"]),
    ("data.tasks=reach", ["data.tasks", "list[str]", "'reach'"]),
    ("data.tasks=[reach, 3]", ["data.tasks[1]", "must be str", "3"]),
    ("data.root=null", ["data.root", "must be str", "None"]),
    ("grpo=3", ["grpo", "mapping"]),
    ("grpo.group_size.x=3", ["grpo.group_size", "no key 'x'"]),
])
def test_wrong_types_name_key_type_and_value(override, words):
    with pytest.raises(ValueError) as e:
        C.load_config("grpo", overrides=[override])
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize("override, allowed", [
    ("train.schedule=linear", "['cosine', 'constant']"),
    ("train.precision=fp16", "['auto', 'fp32', 'bf16']"),
    ("grpo.advantage_scale=rank", "['std', 'none']"),
    ("tokenizer.kind=vqgan", "['frame', 'compressive']"),
])
def test_enumerated_fields_list_the_allowed_values(override, allowed):
    key, _, value = override.partition("=")
    with pytest.raises(ValueError) as e:
        C.load_config("grpo", overrides=[override])
    assert key in str(e.value) and allowed in str(e.value) and value in str(e.value)


@pytest.mark.parametrize("override, match", [
    ("grpo.group_size=1", "grpo.group_size must be >= 2"),
    ("grpo.mini_batch_prompts=48", "must divide grpo.prompts_per_step=128"),
    ("grpo.clip_low=1.5", r"grpo.clip_low must be in \[0, 1\)"),
    ("grpo.top_p=0", r"grpo.top_p must be in \(0, 1\]"),
    ("train.lr=0", "train.lr must be > 0"),
    ("data.frame_skip=200", "data.frame_skip must be <= data.max_steps=100"),
    ("data.clip_stride=0", "data.clip_stride must be >= 1"),
    ("train.token_noise=1", r"train.token_noise must be in \[0, 1\)"),
    ("data.split_fractions=[1, 0]", "data.split_fractions must be 3"),
    ("data.grades={best: 1}", r"unknown grade\(s\) \['best'\]"),
    ("model.name=gpt9", "model.name must be one of"),
    ("model.overrides.dim=100", "model: dim must be divisible by n_heads"),
    ("tokenizer.name=vqgan", "tokenizer.name must be one of"),
    ("tokenizer.overrides.num_down=1", "tokenizer: channel_mult must have num_down"),
    ("tokenizer.overrides.patch=8", "unknown key 'tokenizer.overrides.patch'"),
])
def test_range_checks(override, match):
    with pytest.raises(ValueError, match=match):
        C.load_config("grpo", overrides=[override])


def test_malformed_override_and_unknown_recipe():
    with pytest.raises(ValueError, match="key=value"):
        C.load_config("collect", overrides=["data.seed"])
    with pytest.raises(ValueError, match="cannot parse"):
        C.load_config("collect", overrides=["data.seed=[1"])
    with pytest.raises(ValueError, match="unknown recipe 'train'; recipes: collect, tokenizer"):
        C.load_config("train")


def test_presets():
    cfg = C.load_config("collect", preset="collect-sim-64")
    assert cfg == C.PRESETS["collect-sim-64"]()
    assert cfg.data.image_size == 64 and cfg.data.tasks == ["drawer-open", "drawer-close"]
    smoke = C.load_config("collect", preset="smoke", overrides=["data.episodes_per_task=2"])  # = collect-smoke
    assert smoke.data.episodes_per_task == 2 and smoke.data.root == "runs/smoke/data"
    assert C.PRESETS["collect-smoke"]().data.episodes_per_task == C.QUICK["smoke"]["episodes"]  # a fresh object
    assert C.load_config("grpo", preset="smoke") == C.PRESETS["grpo-smoke"]()  # the recipe's own short name
    assert "collect-sim-64" in C.presets_for("collect")
    assert C.presets_for("grpo") == ["grpo-quickstart", "grpo-rt1", "grpo-rt1-multistep", "grpo-smoke",
                                     "grpo-textgame-small", "grpo-textgame-smoke", "grpo-web-small", "grpo-web-smoke"]
    for name, make in C.PRESETS.items():
        cfg = make()
        cfg.check()
        assert C.load_config(cfg.recipe, preset=name) == cfg
    with pytest.raises(ValueError, match="unknown preset 'nope'; presets of collect: collect-quickstart, collect-sim-64"):
        C.load_config("collect", preset="nope")
    with pytest.raises(ValueError, match="preset 'collect-smoke' is a 'collect' config, not 'grpo'"):
        C.load_config("grpo", preset="collect-smoke")


def test_the_paper_rt1_grpo_preset():
    cfg = C.PRESETS["grpo-rt1"]()
    g, t = cfg.grpo, cfg.train
    assert (g.group_size, g.prompts_per_step, g.mini_batch_prompts, g.ppo_epochs) == (16, 128, 32, 1)
    assert (g.clip_low, g.clip_high, g.clip_c, g.kl_coef, g.reward) == (0.2, 0.2, 3.0, 1e-3, "neg_mae_lpips")
    assert (t.lr, t.schedule, t.weight_decay, t.grad_clip) == (5e-5, "constant", 0.01, 1.0)
    assert cfg.data.context_frames == 4 and g.eval_top_k == 100
    multi = C.PRESETS["grpo-rt1-multistep"]()
    assert multi.data.future_frames == 7 and multi.tokenizer.kind == "compressive" and multi.grpo == cfg.grpo


def test_defaults_are_not_shared_between_instances():
    a, b = C.load_config("collect"), C.load_config("collect")
    a.data.tasks.append("reach")
    assert b.data.tasks == ["drawer-open", "drawer-close"] == C.DataConfig().tasks


def test_to_yaml_is_plain_yaml_headed_by_the_recipe():
    cfg = C.load_config("grpo", overrides=["data.grades={expert: 1, noisy: 2}"])
    text = C.to_yaml(cfg)
    values = yaml.safe_load(text)
    assert next(iter(values)) == "recipe" and values["recipe"] == "grpo"
    assert values["grpo"]["group_size"] == 16 and values["data"]["grades"] == {"expert": 1.0, "noisy": 2.0}
    assert set(values) == {"recipe"} | {f.name for f in dataclasses.fields(C.GRPORun)}


def test_shipped_configs_load_and_are_headed_by_their_command():
    files = sorted(CONFIGS.glob("*.yaml"))
    assert files, "no shipped configs"
    for path in files:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# rlvr-train "), f"{path.name} must open with the command that runs it"
        recipe = first.split()[2]
        assert f"--config rlvr_world/configs/{path.name}" in first
        C.load_config(recipe, path)


def test_collect_sim64_is_cpu_sized():
    # about 3 minutes with 2 workers: 400 episodes of 50 frames at 64x64
    cfg = C.load_config("collect", CONFIGS / "collect_sim64.yaml")
    assert cfg.data.image_size == 64 and cfg.data.episodes_per_task * len(cfg.data.tasks) <= 400
    assert cfg.data.max_steps // cfg.data.frame_skip == 50
