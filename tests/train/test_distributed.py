"""rlvr_world.train.distributed: single-process no-ops, sharding, env checks, and 2 gloo ranks == 1 rank.

The 2-rank test spawns one pair of processes for everything (DDP GRPO step with both loss impls,
all_gather_cat, all_reduce_mean, broadcast_object, barrier). It must fail, never skip, when gloo cannot start.
"""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rlvr_world.models.transformer import ModelArgs, Transformer
from rlvr_world.ops.grpo_loss import grpo_loss
from rlvr_world.rl import grpo_advantages
from rlvr_world.train import distributed as D

P, G, S, R = 4, 2, 12, 5  # prompts, samples per prompt, tokens per row, response length (last R positions)
WORLD = 2
KL_COEF = 1e-3
IMPLS = ("reference", "auto")
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _model() -> Transformer:
    torch.manual_seed(1234)
    args = ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, intermediate_size=64,
                     max_seq_len=64)
    return Transformer(args).float()


def _policy_inputs(model, input_ids):
    """Hidden states at positions predicting the response tokens: hidden [B, R, H] -> tokens [B, R]."""
    hidden = model(input_ids) if not isinstance(model, Transformer) else model.hidden_states(input_ids)
    return hidden[:, S - R - 1:S - 1], input_ids[:, S - R:]


def _batch() -> dict:
    g = torch.Generator().manual_seed(7)
    n = P * G
    input_ids = torch.randint(0, 64, (n, S), generator=g)
    mask = torch.ones(n, R, dtype=torch.bool)
    mask[1, -2:] = False  # rank 0, micro-batch 0
    mask[2, -1] = False  # rank 0, micro-batch 1
    mask[5, -3:] = False  # rank 1, micro-batch 0
    model = _model()
    with torch.no_grad():
        hidden, tokens = _policy_inputs(model, input_ids)
        logp = torch.log_softmax(hidden @ model.lm_head_weight.T, -1).gather(-1, tokens[..., None])[..., 0]
    old_logp = logp + 0.1 * torch.randn(n, R, generator=g)
    ref_logp = logp + 0.05 * torch.randn(n, R, generator=g)
    rewards = torch.rand(n, generator=g)
    advantages = grpo_advantages(rewards, G)[:, None].expand(n, R).contiguous()
    return {"input_ids": input_ids, "mask": mask, "old_logp": old_logp, "ref_logp": ref_logp,
            "advantages": advantages}


def _loss(policy, head_weight, b: dict, rows: slice, num_tokens, impl: str):
    hidden, tokens = _policy_inputs(policy, b["input_ids"][rows])
    loss, _ = grpo_loss(hidden.reshape(-1, hidden.shape[-1]), head_weight, tokens.reshape(-1),
                        b["old_logp"][rows].reshape(-1), b["advantages"][rows].reshape(-1),
                        b["mask"][rows].reshape(-1), b["ref_logp"][rows].reshape(-1), kl_coef=KL_COEF,
                        num_tokens=num_tokens, impl=impl)
    return loss


def _worker(rank: int, port: int, out_dir: str, batch: dict) -> None:
    torch.set_num_threads(1)
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(WORLD), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    info = D.init(device="cpu")
    assert dist.is_initialized() and dist.get_backend() == "gloo"
    assert info == D.init(device="cpu")  # an existing group is reused
    assert (info.rank, info.world_size, info.distributed, info.is_main) == (rank, WORLD, True, rank == 0)
    result = {}

    # collectives
    result["gathered"] = D.all_gather_cat(torch.full((2, 3), float(rank)) + torch.arange(3.0), info)
    result["mean"] = D.all_reduce_mean({"a": float(rank), "b": 10.0 * (rank + 1)}, info)
    result["broadcast"] = D.broadcast_object({"from": rank}, info)
    D.barrier(info)

    # one GRPO step: this rank's prompts, 2 micro-batches (one prompt each), accumulation under no_sync
    prompts = D.shard(P, info)
    rows = slice(prompts.start * G, prompts.stop * G)
    local_tokens = batch["mask"][rows].sum()
    num_tokens = D.all_reduce_sum(local_tokens.clone(), info)
    result["num_tokens"] = int(num_tokens)
    micro = [slice(rows.start + i * G, rows.start + (i + 1) * G) for i in range(prompts.stop - prompts.start)]
    for impl in IMPLS:
        model = _model()
        policy = D.wrap_ddp(D.HiddenStates(model), info)
        assert D.unwrap(policy).model is model
        loss_sum = torch.zeros((), dtype=torch.float64)
        for i, mb in enumerate(micro):
            with D.no_sync(policy, enabled=i < len(micro) - 1):
                loss = _loss(policy, D.unwrap(policy).model.lm_head_weight, batch, mb, num_tokens, impl)
                (loss * info.world_size).backward()
            loss_sum += loss.detach().double()
        result[impl] = {"loss": float(D.all_reduce_sum(loss_sum, info)),
                        "grads": {n: p.grad.clone() for n, p in model.named_parameters()}}
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    D.barrier(info)
    D.shutdown()
    assert not dist.is_initialized()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_torchrun_env(monkeypatch):
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# ---------------------------------------------------------------- single process


def test_init_without_env_is_single_process(no_torchrun_env):
    info = D.init(device="cpu")
    assert info == D.DistInfo()
    assert (info.rank, info.world_size, info.local_rank, info.device) == (0, 1, 0, torch.device("cpu"))
    assert info.is_main and not info.distributed
    assert not dist.is_initialized()
    D.shutdown()  # nothing was created: a no-op
    no_torchrun_env.setenv("WORLD_SIZE", "1")
    no_torchrun_env.setenv("RANK", "0")
    assert D.init(device="cpu") == D.DistInfo()
    assert not dist.is_initialized()


@pytest.mark.parametrize(("env", "words"), [
    ({"WORLD_SIZE": "two"}, ["WORLD_SIZE", "'two'"]),
    ({"WORLD_SIZE": "2", "RANK": "x1"}, ["RANK", "'x1'"]),
    ({"WORLD_SIZE": "2", "RANK": "2"}, ["RANK", "2", "WORLD_SIZE=2"]),
    ({"WORLD_SIZE": "4", "RANK": "-1"}, ["RANK", "-1"]),
    ({"WORLD_SIZE": "0"}, ["WORLD_SIZE", "0"]),
    ({"WORLD_SIZE": "1", "LOCAL_RANK": "abc"}, ["LOCAL_RANK", "'abc'"]),
])
def test_init_rejects_bad_env(no_torchrun_env, env, words):
    for k, v in env.items():
        no_torchrun_env.setenv(k, v)
    with pytest.raises(ValueError) as e:
        D.init(device="cpu")
    for w in words:
        assert w in str(e.value)
    assert not dist.is_initialized()


def test_shard_contiguous_blocks_cover_all_prompts():
    blocks = [D.shard(8, D.DistInfo(rank=r, world_size=4)) for r in range(4)]
    assert blocks == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8)]
    assert D.shard(6, D.DistInfo()) == slice(0, 6)
    # rows of a GRPO group stay on one rank
    rows = [list(range(G * 8))[b.start * G:b.stop * G] for b in blocks]
    assert [i for r in rows for i in r] == list(range(G * 8))
    assert all(len(r) == 2 * G for r in rows)


def test_shard_rejects_uneven_split():
    with pytest.raises(ValueError, match=r"grpo\.prompts_per_step=6 must be a multiple of the world size 4"):
        D.shard(6, D.DistInfo(rank=1, world_size=4))
    with pytest.raises(ValueError, match=r"rollout\.prompts=3 must be a multiple of the world size 2"):
        D.shard(3, D.DistInfo(rank=0, world_size=2), name="rollout.prompts")
    with pytest.raises(ValueError, match="positive int"):
        D.shard(0, D.DistInfo())


def test_helpers_are_noops_single_process():
    info = D.DistInfo()
    t = torch.arange(4.0)
    assert D.all_reduce_sum(t, info) is t and t.tolist() == [0, 1, 2, 3]
    assert D.all_gather_cat(t, info) is t
    assert D.all_reduce_mean({"a": 1.5, "b": 2}, info) == {"a": 1.5, "b": 2.0}
    obj = {"x": [1]}
    assert D.broadcast_object(obj, info) is obj
    D.barrier(info)
    model = _model()
    assert D.wrap_ddp(model, info) is model
    assert D.unwrap(model) is model
    with D.no_sync(model, enabled=True):
        pass
    wrapped = D.HiddenStates(model)
    ids = torch.randint(0, 64, (2, 5))
    torch.testing.assert_close(wrapped(ids), model.hidden_states(ids), rtol=0, atol=0)
    assert wrapped.model.lm_head_weight is model.output.weight


# ---------------------------------------------------------------- 2 gloo ranks


def test_two_gloo_ranks_match_one_rank(tmp_path, no_torchrun_env):
    batch = _batch()
    mp.spawn(_worker, args=(_free_port(), str(tmp_path), batch), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    # collectives
    for res in results:
        expected = torch.cat([torch.full((2, 3), float(r)) + torch.arange(3.0) for r in range(WORLD)])
        torch.testing.assert_close(res["gathered"], expected, rtol=0, atol=0)
        assert res["mean"] == pytest.approx({"a": 0.5, "b": 15.0})
        assert res["broadcast"] == {"from": 0}
    num_tokens = int(batch["mask"].sum())
    assert num_tokens == P * G * R - 6
    assert all(res["num_tokens"] == num_tokens for res in results)

    worst = 0.0
    for impl in IMPLS:
        # one process, whole global batch, one call, the same global token count
        model = _model()
        loss = _loss(D.HiddenStates(model), model.lm_head_weight, batch, slice(None), num_tokens, impl)
        loss.backward()
        ref_grads = {n: p.grad for n, p in model.named_parameters()}
        for res in results:
            assert res[impl]["loss"] == pytest.approx(loss.item(), abs=1e-6, rel=1e-5), impl
            grads = res[impl]["grads"]
            assert grads.keys() == ref_grads.keys()
            diffs = {n: (grads[n] - g).abs().max().item() for n, g in ref_grads.items()}
            name = max(diffs, key=diffs.get)
            scale = max(g.abs().max().item() for g in ref_grads.values())
            assert scale > 1e-4, "gradients vanish: the comparison would be vacuous"
            assert diffs[name] <= 1e-5 * max(scale, 1.0), (
                f"impl={impl}: worst param {name} differs by {diffs[name]:.3e} (max |grad| {scale:.3e})")
            worst = max(worst, diffs[name])
        # DDP averaged: both ranks hold the same gradients
        for n in ref_grads:
            torch.testing.assert_close(results[0][impl]["grads"][n], results[1][impl]["grads"][n], rtol=0, atol=0)
    print(f"max |grad(2 ranks) - grad(1 rank)| = {worst:.3e}")
