"""rlvr-train grpo (rlvr_world.train.grpo): smoke run with its report, exact resume, the log-prob contract,
accumulation invariance, skipped non-finite updates, Ctrl-C, 2 gloo ranks = 1 rank, errors, CLI wiring.

Assets: tiny episodes of moving coloured squares (16x16, 2-dim actions), a random ``tiny`` frame tokenizer
(125 codes, 4x4 tokens per frame) and a world model pre-trained for a few steps by ``rlvr-train pretrain``
(so that its run directory has the ``model/`` + ``layout.json`` the GRPO recipe starts from). The reward is
``neg_mae`` unless a test says otherwise (no LPIPS weights needed).
"""

import json
import os
import signal
import socket

import pytest
import torch
import torch.multiprocessing as mp

from rlvr_world import cli
from rlvr_world import config as C
from rlvr_world.models.transformer import Transformer
from rlvr_world.train import checkpoint, loop, pretrain
from rlvr_world.train import grpo as recipe
from rlvr_world.train.logging import read_metrics

from .test_pretrain_recipe import _one_thread, assets  # noqa: F401 - fixtures: one thread, squares + tokenizer


def _pretrained(assets, out, *overrides):  # noqa: F811
    root, tok = assets
    cfg = C.load_config("pretrain", overrides=[
        f"data.root={root}", f"tokenizer.checkpoint={tok}", f"train.out_dir={out}", "data.context_frames=2",
        "data.clip_stride=1", "model.name=vwm-tiny", "model.overrides={dim: 32, n_layers: 2, intermediate_size: 64}",
        "train.batch_size=4", "train.steps=6", "train.lr=3e-3", "train.eval_every=0", "train.eval_batches=1",
        "train.checkpoint_every=0", "progress=false", *overrides])
    pretrain.run(cfg)
    return out


@pytest.fixture(scope="module")
def pretrained(assets, tmp_path_factory):  # noqa: F811
    return _pretrained(assets, tmp_path_factory.mktemp("pretrained"))


def _cfg(assets, pretrained, out_dir, *overrides):  # noqa: F811
    root, _ = assets
    return C.load_config("grpo", overrides=[
        f"data.root={root}", f"model.init_from={pretrained}", f"train.out_dir={out_dir}", "data.context_frames=2",
        "data.clip_stride=1", "grpo.reward=neg_mae", "grpo.group_size=4", "grpo.prompts_per_step=4",
        "grpo.mini_batch_prompts=2", "grpo.micro_batch_size=4", "grpo.eval_prompts=4", "grpo.eval_samples=2",
        "train.steps=3", "train.lr=1e-3", "train.eval_every=2", "train.checkpoint_every=2", "train.log_every=1",
        "train.precision=fp32", "progress=false", *overrides])


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_smoke_run_writes_model_metrics_and_report(assets, pretrained, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)  # a relative out_dir, as the quick start uses: the report links stay relative to it
    result = recipe.run(_cfg(assets, pretrained, "run"))
    out = tmp_path / "run"
    assert result["step"] == 3
    train = read_metrics(out, "train")
    assert [r["step"] for r in train] == [1, 2, 3]
    for key in ("reward_mean", "reward_std", "mae", "kl_mean", "clip_frac_low", "grad_norm", "tokens_per_sec",
                "time_rollout", "time_decode", "time_reward", "time_reference", "time_update"):
        assert train[-1][key] is not None, key
    assert [r["step"] for r in read_metrics(out, "eval")] == [0, 2, 3]
    assert result["before"]["reward"] == read_metrics(out, "eval")[0]["reward"]
    report = (out / "report.md").read_text()
    assert "validation reward" in report and "| reward (higher is better) |" in report
    assert "Paired over the clips" in report and len(result["after"]["clip_rewards"]) == 4
    for png in ("curves_train.png", "curves_eval.png", "samples.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({png})" in report
    model = Transformer.from_pretrained(out / "model")
    assert json.loads((out / "model" / "layout.json").read_text())["layout"] == "single_step"
    assert not all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                      Transformer.from_pretrained(pretrained / "model").state_dict().values()))


def test_resume_is_bit_exact(assets, pretrained, tmp_path):  # noqa: F811
    straight = recipe.run(_cfg(assets, pretrained, tmp_path / "a", "train.steps=4"))
    recipe.run(_cfg(assets, pretrained, tmp_path / "b", "train.steps=2"))
    resumed = recipe.run(_cfg(assets, pretrained, tmp_path / "b", "train.steps=4", "train.resume=true"))
    assert resumed["step"] == straight["step"] == 4
    a, b = (Transformer.from_pretrained(tmp_path / r / "model").state_dict() for r in ("a", "b"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ma, mb = read_metrics(tmp_path / "a", "train"), read_metrics(tmp_path / "b", "train")
    assert [r["reward_mean"] for r in ma] == [r["reward_mean"] for r in mb]
    assert resumed["before"] == straight["before"]  # the step-0 evaluation travels in the checkpoint


def test_sampler_logprobs_equal_the_trainers_recompute(assets, pretrained, tmp_path):  # noqa: F811
    s = recipe.setup(_cfg(assets, pretrained, tmp_path / "run", "grpo.micro_batch_size=16"))
    b = recipe.reference_logprobs(s, recipe.advantages(s, recipe.score(s, recipe.decode(s, recipe.rollout(s, recipe.prompts(s))))))
    check = recipe._logprob_check(s, b)
    assert check["logprob_max_abs_diff"] < 1e-5 and check["logprob_frac_off"] == 0.0
    # before any update the reference policy is the policy: k3 KL of every token is 0
    assert torch.allclose(b.ref_logp[b.rollout.mask], b.rollout.logprobs[b.rollout.mask], atol=1e-5)
    s.logger.close()


def _one_update(assets, pretrained, out_dir, *overrides):  # noqa: F811
    s = recipe.setup(_cfg(assets, pretrained, out_dir, *overrides))
    b = recipe.reference_logprobs(s, recipe.advantages(s, recipe.score(s, recipe.decode(s, recipe.rollout(s, recipe.prompts(s))))))
    stats = recipe.update(s, b)
    s.logger.close()
    return s, stats


def test_micro_batching_does_not_change_the_update(assets, pretrained, tmp_path):  # noqa: F811
    s1, st1 = _one_update(assets, pretrained, tmp_path / "a", "grpo.micro_batch_size=1", "grpo.mini_batch_prompts=4")
    s8, st8 = _one_update(assets, pretrained, tmp_path / "b", "grpo.micro_batch_size=16", "grpo.mini_batch_prompts=4")
    assert st1["updates"] == st8["updates"] == 1
    assert abs(st1["loss"] - st8["loss"]) < 1e-6 and abs(st1["grad_norm"] - st8["grad_norm"]) < 1e-5
    p1, p8 = _params(s1.model), _params(s8.model)
    assert max((p1[k] - p8[k]).abs().max().item() for k in p1) < 1e-6


def test_a_non_finite_gradient_skips_the_optimizer_step(assets, pretrained, tmp_path):  # noqa: F811
    s = recipe.setup(_cfg(assets, pretrained, tmp_path / "run"))
    b = recipe.reference_logprobs(s, recipe.advantages(s, recipe.score(s, recipe.decode(s, recipe.rollout(s, recipe.prompts(s))))))
    b.advantages[:] = float("nan")
    before = _params(s.model)
    stats = recipe.update(s, b)
    s.logger.close()
    assert stats["skipped_updates"] == stats["updates"] == 2  # both mini-batches
    after = _params(s.model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_ctrl_c_finishes_the_step_and_checkpoints(assets, pretrained, tmp_path, monkeypatch):  # noqa: F811
    real = recipe.train_step

    def interrupted_step(s, *a):
        metrics = real(s, *a)
        if s.step == 1:  # the second step: Ctrl-C arrives in the middle of it
            os.kill(os.getpid(), signal.SIGINT)
        return metrics

    monkeypatch.setattr(recipe, "train_step", interrupted_step)
    cfg = _cfg(assets, pretrained, tmp_path / "run", "train.steps=4", "train.checkpoint_every=0")
    with pytest.raises(loop.Interrupted) as info:
        recipe.run(cfg)
    assert info.value.step == 2 and checkpoint.latest(tmp_path / "run").name == "step_0000002"
    monkeypatch.setattr(recipe, "train_step", real)
    assert recipe.run(_cfg(assets, pretrained, tmp_path / "run", "train.steps=3", "train.resume=true"))["step"] == 3


@pytest.mark.parametrize(("overrides", "match"), [
    (["model.init_from=null"], "model.init_from is required"),
    (["data.context_frames=3"], "data.context_frames=3 does not match the pre-trained model's context_frames=2"),
    (["grpo.prompts_per_step=4", "grpo.mini_batch_prompts=3"], "mini_batch_prompts must divide"),
    (["grpo.reward=bleu"], "grpo.reward must be one of"),
])
def test_bad_configs_fail_before_any_work(assets, pretrained, tmp_path, overrides, match):  # noqa: F811
    with pytest.raises(ValueError, match=match):
        recipe.run(_cfg(assets, pretrained, tmp_path / "run", *overrides))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_every_rank_holds_its_block_of_every_mini_batch():
    from rlvr_world.train.distributed import DistInfo

    assert recipe.local_prompts(8, 4, DistInfo()) == list(range(8))
    ranks = [recipe.local_prompts(8, 4, DistInfo(rank=r, world_size=2)) for r in range(2)]
    assert ranks == [[0, 1, 4, 5], [2, 3, 6, 7]]  # mini-batch 0 = prompts 0-3, mini-batch 1 = prompts 4-7
    with pytest.raises(ValueError, match="grpo.mini_batch_prompts=3 must be a multiple of the world size 2"):
        recipe.local_prompts(6, 3, DistInfo(rank=0, world_size=2))


def test_paired_change_statistics():
    from rlvr_world.train.grpo_report import paired_change

    p = paired_change([0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, -2.0])
    assert p["mean"] == 1.0 and p["improved"] == 3 and p["clips"] == 4
    assert abs(p["sem"] - (14 / 3 / 4) ** 0.5) < 1e-12 and abs(p["z"] - 1.0 / (14 / 3 / 4) ** 0.5) < 1e-12
    assert paired_change([0.0, 1.0], [0.0]) is None and paired_change(None, [1.0, 2.0]) is None


def test_truncated_training_samples_are_refused():
    with pytest.raises(ValueError, match="grpo.top_k must be 0"):
        C.load_config("grpo", overrides=["grpo.top_k=50"])


def test_an_lpips_reward_without_weights_is_a_clear_error(assets, pretrained, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(recipe, "build_lpips", lambda device, net: (None, "skipped: no ImageNet VGG16 LPIPS weights"))
    with pytest.raises(ValueError, match="needs LPIPS"):
        recipe.run(_cfg(assets, pretrained, tmp_path / "run", "grpo.reward=neg_mae_lpips"))


def test_existing_checkpoints_need_resume(assets, pretrained, tmp_path):  # noqa: F811
    recipe.run(_cfg(assets, pretrained, tmp_path / "run", "train.steps=1"))
    with pytest.raises(ValueError, match="train.resume=true"):
        recipe.run(_cfg(assets, pretrained, tmp_path / "run", "train.steps=2"))


def test_cli_runs_grpo_and_prints_the_comparison(assets, pretrained, tmp_path, capsys):  # noqa: F811
    root, _ = assets
    args = ["grpo", f"data.root={root}", f"model.init_from={pretrained / 'model'}", f"train.out_dir={tmp_path / 'run'}",
            "data.context_frames=2", "data.clip_stride=1", "grpo.reward=neg_mae", "grpo.group_size=2",
            "grpo.prompts_per_step=2", "grpo.mini_batch_prompts=2", "grpo.eval_prompts=2", "train.steps=1",
            "progress=false"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "trained 1 GRPO steps" in out and "| reward (higher is better) |" in out


# ------------------------------------------------------------------------------------------- 2 gloo ranks
def _grads_of_one_update(cfg) -> dict[str, torch.Tensor]:
    """The gradients of the first optimizer step of ``cfg``'s first RL step (the step is not taken)."""
    s = recipe.setup(cfg)
    b = recipe.reference_logprobs(s, recipe.advantages(s, recipe.score(s, recipe.decode(s, recipe.rollout(s, recipe.prompts(s))))))
    grads = {}

    def capture():
        grads.update({n: p.grad.detach().clone() for n, p in s.model.named_parameters()})
        raise StopIteration

    s.optimizer.step = capture
    with pytest.raises(StopIteration):
        recipe.update(s, b)
    s.logger.close()
    del s.optimizer.step  # no cycle keeps the state (and a DDP reducer) alive
    return grads


def _rank_main(rank: int, world: int, port: int, cfg_dict: dict, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    cfg = C.from_dict("grpo", cfg_dict)
    try:
        grads = _grads_of_one_update(cfg)
        if rank == 0:
            torch.save(grads, out)
    finally:
        import gc

        from rlvr_world.train import distributed

        gc.collect()  # the state (and its DDP reducer) goes before the process group
        distributed.shutdown()


def test_two_gloo_ranks_give_the_gradient_of_one(assets, pretrained, tmp_path, monkeypatch):  # noqa: F811
    # the first of two mini-batches (prompts 0 and 1): each rank holds one prompt of it x 4 samples, in 2
    # micro-batches of 2 sequences; one process holds both, in 4
    cfg = _cfg(assets, pretrained, tmp_path / "one", "grpo.mini_batch_prompts=2", "grpo.micro_batch_size=2",
               "grpo.kl_coef=1e-3")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    single = _grads_of_one_update(cfg)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    two = C.to_dict(cfg)
    two["train"]["out_dir"] = str(tmp_path / "two")
    mp.spawn(_rank_main, args=(2, port, two, str(tmp_path / "grads.pt")), nprocs=2, join=True)
    double = torch.load(tmp_path / "grads.pt")
    worst = max((single[k] - double[k]).abs().max().item() for k in single)
    assert worst < 1e-5, worst
    assert max(g.abs().max().item() for g in single.values()) > 1e-4  # the comparison is not between zeros


def test_shipped_config_continues_the_shipped_pretraining():
    from pathlib import Path

    configs = Path(C.__file__).parent / "configs"
    path = configs / "grpo_sim64.yaml"
    assert path.read_text().splitlines()[0] == f"# rlvr-train grpo --config rlvr_world/configs/{path.name}"
    cfg, pre = C.load_config("grpo", path), C.load_config("pretrain", configs / "pretrain_sim64.yaml")
    assert cfg.model.init_from == pre.train.out_dir and cfg.data.root == pre.data.root
    assert (cfg.data.context_frames, cfg.data.clip_stride) == (pre.data.context_frames, pre.data.clip_stride)


# ------------------------------------------------------------------------------------------- multi-step
@pytest.fixture(scope="module")
def pretrained_multistep(assets, tmp_path_factory):  # noqa: F811
    return _pretrained(assets, tmp_path_factory.mktemp("pretrained_multistep"), "data.future_frames=3", "train.steps=4")


def test_multistep_grpo_samples_frames_and_injects_the_actions(assets, pretrained_multistep, tmp_path):  # noqa: F811
    cfg = _cfg(assets, pretrained_multistep, tmp_path / "run", "data.future_frames=3", "grpo.repetition_penalty=0.5",
               "train.steps=2")
    s = recipe.setup(cfg)
    lay = s.layout
    assert lay.future_frames == 3 and lay.response_len == 3 * (lay.tokens_per_frame + lay.action_dims)
    b = recipe.reference_logprobs(s, recipe.advantages(s, recipe.score(s, recipe.decode(s, recipe.rollout(s, recipe.prompts(s))))))
    G = cfg.grpo.group_size
    forced_mask = lay.forced(torch.zeros(1, lay.num_actions, lay.action_dims, dtype=torch.long))[1]
    r = b.rollout
    assert r.tokens.shape == (4 * G, lay.response_len)
    assert not r.mask[:, forced_mask].any() and r.mask[:, ~forced_mask].all()
    assert (r.logprobs[:, forced_mask] == 0).all()
    # the injected tokens are the clips' true actions, the same for the G samples of a prompt
    assert torch.equal(r.tokens[:, forced_mask], b.forced.repeat_interleave(G, dim=0)[:, forced_mask])
    assert b.frames.shape[:2] == (4 * G, 3) and b.targets.shape[:2] == (4, 3)
    assert 0.0 <= b.metrics["repetition_rate"] <= 1.0
    check = recipe._logprob_check(s, b)
    assert check["logprob_max_abs_diff"] < 1e-5
    s.logger.close()
    result = recipe.run(_cfg(assets, pretrained_multistep, tmp_path / "full", "data.future_frames=3", "train.steps=2"))
    assert "repetition_rate" in result["after"] and (tmp_path / "full" / "report.md").is_file()
    assert json.loads((tmp_path / "full" / "model" / "layout.json").read_text())["layout"] == "multi_step"


def test_repetition_penalty_lowers_the_reward_of_repeated_frames(assets, pretrained_multistep, tmp_path):  # noqa: F811
    rewards = {}
    for coef in (0.0, 1.0):
        s = recipe.setup(_cfg(assets, pretrained_multistep, tmp_path / f"r{coef}", "data.future_frames=3",
                              f"grpo.repetition_penalty={coef}"))
        b = recipe.decode(s, recipe.rollout(s, recipe.prompts(s)))
        # every predicted frame repeats the one before (the first: the prompt's last context frame): rate 1
        b.codes[:] = b.context[:, -1].repeat_interleave(s.cfg.grpo.group_size, dim=0)[:, None]
        rewards[coef] = recipe.score(s, b).rewards
        s.logger.close()
    assert torch.allclose(rewards[1.0], rewards[0.0] - 1.0)


def test_repetition_penalty_needs_a_multistep_model(assets, pretrained, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match="multi-step models only"):
        recipe.run(_cfg(assets, pretrained, tmp_path / "run", "grpo.repetition_penalty=0.1"))


@pytest.fixture(scope="module", params=[2, 1], ids=["S2", "S1"])
def compressive_model(tmp_path_factory, request):
    """32x32 squares, a random ``tiny`` compressive tokenizer (8x8 context / 4x4 future tokens) and a random
    world model in its multi-step layout (written by hand: the recipe only reads layout.json + the model)."""
    import numpy as np

    from rlvr_world.data.episodes import compute_action_ranges, write_episode
    from rlvr_world.data.video_layout import MultiStepLayout
    from rlvr_world.models.compressive_tokenizer import CompressiveTokenizer
    from rlvr_world.models.transformer import ModelArgs

    root = tmp_path_factory.mktemp("squares32")
    rng = np.random.default_rng(1)
    for split, n in (("train", 4), ("val", 2)):
        for k in range(n):
            image = np.zeros((8, 32, 32, 3), np.uint8)
            for t in range(8):
                image[t, 4 + t:12 + t, 8:16] = (200, 50 + 10 * k, 30)
            write_episode(root / split / f"ep_{k:03d}", image, rng.normal(size=(8, 2)).astype(np.float32))
    compute_action_ranges(root)
    torch.manual_seed(0)
    tok = CompressiveTokenizer.from_name("tiny")
    tok.save_pretrained(root / "tokenizer")
    S = request.param  # future frames (the compressive layout is multi-step even for S = 1)
    lay = MultiStepLayout(tokens_per_frame=16, context_tokens_per_frame=64, context_frames=2, future_frames=S,
                          action_dims=2, codebook_size=tok.future_codebook_size,
                          context_codebook_size=tok.context_codebook_size, action_bins=256)
    model = Transformer(ModelArgs.from_name("vwm-tiny", dim=32, n_layers=2, intermediate_size=64,
                                            vocab_size=lay.vocab_size))
    model.save_pretrained(root / "run" / "model")
    info = {"layout": "multi_step", "tokenizer_kind": "compressive", "tokens_per_frame": 16,
            "context_tokens_per_frame": 64, "context_frames": 2, "future_frames": S, "action_dims": 2,
            "codebook_size": lay.codebook_size, "context_codebook_size": lay.context_codebook_size,
            "action_bins": 256, "bos_id": lay.bos_id, "eos_id": lay.eos_id, "vocab_size": lay.vocab_size,
            "clip_stride": 1, "token_grid": [4, 4], "tokenizer": str(root / "tokenizer")}
    (root / "run" / "model" / "layout.json").write_text(json.dumps(info))
    return root, tok, S


def _compressive_cfg(root, out_dir, S):
    return C.load_config("grpo", overrides=[
        f"data.root={root}", f"model.init_from={root / 'run'}", f"train.out_dir={out_dir}", "data.context_frames=2",
        f"data.future_frames={S}", "data.clip_stride=1", "grpo.reward=neg_mae", "grpo.group_size=2",
        "grpo.prompts_per_step=2", "grpo.mini_batch_prompts=2", "grpo.eval_prompts=2", "grpo.eval_samples=2",
        "train.steps=1", "progress=false"])


def test_compressive_multistep_grpo_decodes_against_the_prompts_context(compressive_model, tmp_path):
    root, tok, S = compressive_model
    s = recipe.setup(_compressive_cfg(root, tmp_path / "run", S))
    b = recipe.score(s, recipe.decode(s, recipe.rollout(s, recipe.prompts(s))))
    frames = b.frames                                                               # [4, S, 3, 32, 32]
    assert b.rollout.tokens.shape == (4, S * (16 + 2)) and frames.shape == (4, S, 3, 32, 32)
    # sample 3 belongs to prompt 1: decoding it alone against prompt 1's context gives the same frames
    ctx = tok.context_from_tokens(b.context[1:2].view(1, 2, 8, 8))
    alone = tok.decode_future(b.codes[3:4].view(1, S, 4, 4), ctx)
    assert torch.allclose(alone, frames[3:4], atol=1e-6)
    s.logger.close()
    result = recipe.run(_compressive_cfg(root, tmp_path / "full", S))
    assert result["step"] == 1 and ("repetition_rate" in result["after"]) == (S > 1)


@pytest.mark.cuda
def test_bf16_on_a_gpu_trains_and_reports_the_logprob_mismatch(assets, pretrained, tmp_path):  # noqa: F811
    """On a GPU with bf16 autocast: the run completes, and the sampler-vs-trainer mismatch is measured (the
    sampler runs the fp32 weights, the trainer's recompute bf16 autocast): the share of tokens off by more
    than 1e-3 in probability ratio is reported, not asserted to be 0."""
    result = recipe.run(_cfg(assets, pretrained, tmp_path / "run", "train.precision=bf16",
                             "grpo.logprob_check_every=1"))
    rows = read_metrics(tmp_path / "run", "train")
    assert result["step"] == 3 and all(r["logprob_frac_off"] is not None for r in rows)
    assert all(0.0 <= r["logprob_frac_off"] <= 1.0 and r["logprob_max_abs_diff"] < 1.0 for r in rows)
    assert rows[-1]["skipped_updates"] == 0
