"""benchmarks/bench_lang.py runs its three stages at the tiniest size on the CPU, gated, and writes its CSV rows."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH_DIR))  # the benchmarks import `_harness` as a top-level module
    for name in ("bench_lang", "_harness"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    import bench_lang

    return bench_lang


def test_tiny_run_on_cpu_is_gated_and_writes_every_row(bench, tmp_path):
    out = tmp_path / "lang.csv"
    rows = bench.main(["--device", "cpu", "--model", "lm-tiny", "--prompt-len", "16", "--answer-len", "8",
                       "--batch", "1", "--prompts", "1", "--reps", "1", "--warmup", "0", "--out", str(out)])
    with out.open(newline="") as f:
        written = list(csv.DictReader(f))
    assert len(written) == len(rows)
    assert [(r["stage"], r["impl"]) for r in written] == [
        ("sft", "fused"), ("sft", "full_logits"), ("rollout", "ours"), ("rollout", "hf"), ("grpo_update", "ours")]
    for r in written:
        assert set(bench.CSV_COLUMNS) <= set(r), "documented columns missing"
        assert r["status"] == "ok", r
        assert float(r["median_ms"]) > 0 and float(r["p20_ms"]) <= float(r["median_ms"]) <= float(r["p80_ms"])
        assert float(r["tok_per_s"]) > 0 and float(r["cold_s"]) > 0
        assert r["model"] == "lm-tiny" and r["dtype"] == "fp32" and r["Lp"] == "16" and r["N"] == "8"
        assert r["reps"] == "1" and r["warmup"] == "0"
        assert r["torch"] and r["git_sha"] and r["device"] and r["date"]
        assert r["mem_mib"] == ""  # CPU: no memory tracking
    by = {(r["stage"], r["impl"]): r for r in written}
    # the gates ran before timing and passed, each with its measured difference
    assert by["sft", "fused"]["check"].startswith("pass: |fused - CE| / CE")
    assert by["rollout", "ours"]["check"].startswith("pass: max|logp - token_logprobs|")
    assert by["rollout", "hf"]["check"].startswith("pass: max|logits - HF|")
    # SFT: B (Lp + N) tokens; rollouts: every one of P G rows ran to N (the EOS id is never sampled)
    assert by["sft", "fused"]["tokens"] == by["sft", "full_logits"]["tokens"] == "24"
    assert by["rollout", "ours"]["tokens"] == by["rollout", "hf"]["tokens"] == str(1 * 5 * 8)
    assert by["rollout", "ours"]["eos_id"] == by["rollout", "hf"]["eos_id"] != ""
    assert by["grpo_update", "ours"]["tokens"] == str(1 * 5 * (16 + 8))
    assert float(by["sft", "full_logits"]["x_base"]) == 1.0 and float(by["rollout", "hf"]["x_base"]) == 1.0
    assert float(by["sft", "fused"]["x_base"]) > 0 and float(by["rollout", "ours"]["x_base"]) > 0


def test_defaults_follow_model_and_device(bench):
    args = bench.parse_args(["--device", "cpu", "--model", "lm-tiny"])
    assert (args.prompt_len, args.answer_len, args.batch, args.prompts, args.reps) == (256, 48, 2, 2, 3)
    assert args.out.name == "lang_cpu.csv"
    args = bench.parse_args(["--device", "cpu"])
    assert (args.model, args.prompt_len, args.answer_len) == ("qwen2-1.5b", 1500, 200)
    with pytest.raises(SystemExit):
        bench.parse_args(["--device", "cpu", "--model", "lm-tiny", "--prompt-len", "2000", "--answer-len", "100"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--device", "cpu", "--reps", "0"])
