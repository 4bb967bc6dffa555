"""heed.train from the command line: 2-process DDP on CPU (gloo) through `accelerate launch`, and resume."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def _records(run: Path) -> list[dict]:
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_process_ddp_pretrain(tmp_path):
    out = tmp_path / "ddp"
    cmd = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "heed.cli", "train", "pretrain-smoke",
           f"output_dir={out}", "eval_examples=0", "batch_size=4"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((out / "result.json").read_text())
    assert res["finished"] and res["steps_done"] == 4
    recs = _records(out)
    assert [x["step"] for x in recs] == [1, 2, 3, 4] and all(x["loss"] == x["loss"] for x in recs)
    assert (out / "model" / "config.json").is_file()
    # each process saved its own RNG state in the checkpoint
    assert sorted(p.name for p in (out / "checkpoint").glob("random_states_*")) == ["random_states_0.pkl", "random_states_1.pkl"]


def test_cli_interrupt_and_resume(tmp_path):
    out = tmp_path / "run"
    base = [str(BIN / "heed"), "train", "pretrain-smoke", f"output_dir={out}", "eval_examples=0"]
    r = subprocess.run(base + ["--max-steps", "2"], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout[r.stdout.index("{"):])["finished"] is False
    r = subprocess.run(base, capture_output=True, text=True, env=ENV)
    assert r.returncode == 1 and "pass resume=true" in r.stderr
    r = subprocess.run(base + ["resume=true", "lr=0.5"], capture_output=True, text=True, env=ENV)
    assert r.returncode != 0 and "lr: checkpoint has 0.002, config has 0.5" in r.stderr
    r = subprocess.run(base + ["resume=true"], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr[-2000:]
    assert [x["step"] for x in _records(out)] == [1, 2, 3, 4]
    assert (out / "model" / "aux_heads.pt").is_file()


def test_cli_runs_every_job_in_order(tmp_path):
    "The README's walkthrough at the smoke size: pretrain, align, distill (both weightings), sft — all from the CLI."
    t = tmp_path
    steps = [
        ["pretrain-smoke", f"output_dir={t}/teacher"],
        ["align-smoke", f"teacher={t}/teacher/model", f"output_dir={t}/align"],
        ["distill-smoke", f"teacher={t}/teacher/model", f"init={t}/align/model", f"output_dir={t}/d-heed", "weighting=heed"],
        ["distill-smoke", f"teacher={t}/teacher/model", f"init={t}/align/model", f"output_dir={t}/d-uni", "weighting=uniform"],
        ["sft-smoke", f"init={t}/d-heed/model", f"output_dir={t}/sft"],
    ]
    for args in steps:
        r = subprocess.run([str(BIN / "heed"), "train", *args, "eval_examples=0"], capture_output=True, text=True, env=ENV)
        assert r.returncode == 0, (args, r.stderr[-2000:])
        out = Path(next(a for a in args if a.startswith("output_dir=")).split("=", 1)[1])
        assert json.loads((out / "result.json").read_text())["finished"], args
    cfg = json.loads((t / "sft" / "model" / "config.json").read_text())
    assert cfg["text_config"]["mamba_layers"] == [0, 1, 2] and cfg["architectures"] == ["Qwen3VLHybridForConditionalGeneration"]
