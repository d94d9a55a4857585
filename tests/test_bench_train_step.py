"""benchmarks/bench_train_step.py runs one tiny GRPO step end to end on the CPU and writes its CSV rows."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH_DIR))  # the benchmarks import `_harness` as a top-level module
    for name in ("bench_train_step", "bench_video_stack", "_harness"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    import bench_train_step

    return bench_train_step


def test_tiny_step_on_cpu_writes_one_row_per_stage(bench, tmp_path):
    out = tmp_path / "x.csv"
    rows = bench.main(["--device", "cpu", "--tiny", "--reps", "1", "--warmup", "0", "--prompts", "2",
                       "--csv", str(out)])
    with out.open(newline="") as f:
        written = list(csv.DictReader(f))
    stages = [name for name, _ in bench.STAGES]
    assert [r["stage"] for r in written] == stages + ["step"]
    assert len(rows) == len(written)
    for r in written:
        assert set(bench.CSV_COLUMNS) <= set(r), "documented columns missing"
        assert float(r["median_s"]) > 0 and float(r["p20_s"]) > 0 and float(r["p80_s"]) > 0
        assert r["P"] == r["P_requested"] == "2" and r["G"] == "4" and r["rollouts"] == "8"
        assert r["oom_halvings"] == "0" and r["status"] == "ok"
        assert r["set"] == "tiny" and r["reps"] == "1" and r["warmup"] == "0"
        assert r["torch"] and r["git_sha"] and r["device"]
        assert r["mfu"] == "" and r["mem_mib"] == ""  # CPU: no MFU, no memory tracking
    by_stage = {r["stage"]: r for r in written}
    assert float(by_stage["rollout"]["tok_per_s"]) > 0
    assert float(by_stage["update"]["update_tflop"]) > 0 and float(by_stage["update"]["tflops"]) > 0
    step = float(by_stage["step"]["median_s"])
    assert step == pytest.approx(sum(float(by_stage[s]["median_s"]) for s in stages), rel=1e-9)
    assert by_stage["step"]["target_s"] == ""  # 8 rollouts: not the 2,048-rollout target


def test_flags_are_checked(bench):
    with pytest.raises(SystemExit):
        bench.parse_args(["--device", "cpu", "--tiny", "--group-size", "1"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--device", "cpu", "--tiny", "--warmup", "-1"])
    args = bench.parse_args(["--device", "cpu", "--tiny"])
    assert (args.model, args.tokenizer, args.group_size, args.prompts) == ("vwm-tiny", "tiny", 4, 2)
    args = bench.parse_args(["--device", "cpu"])
    assert (args.model, args.tokenizer, args.group_size) == ("vwm-s", "rt1", 16)


def test_out_of_memory_halves_prompts_and_says_so(bench, tmp_path, monkeypatch):
    real_step = bench.one_step

    def step(state, inputs, device):
        if inputs["prompts"].shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_step(state, inputs, device)

    monkeypatch.setattr(bench, "one_step", step)
    out = tmp_path / "x.csv"
    bench.main(["--device", "cpu", "--tiny", "--reps", "1", "--warmup", "0", "--prompts", "2", "--csv", str(out)])
    with out.open(newline="") as f:
        written = list(csv.DictReader(f))
    assert len(written) == len(bench.STAGES) + 1
    for r in written:
        assert (r["P_requested"], r["P"], r["rollouts"], r["oom_halvings"]) == ("2", "1", "4", "1")
        assert r["status"].startswith("ok: P halved 1x from 2")
