"""Decode speed and cache memory vs context: a CPU-sized Qwen3-VL teacher against its 3:1 hybrid student (issue 3).

Random weights (speed does not depend on them). The cache is filled synthetically to each context length
(heed.hybrid.fill_cache): a decode step's cost depends on the cache's shapes, not its values, and an O(L^2)
teacher prefill at 32k tokens is out of reach on a 2-core CPU. Teacher and student are measured alternately at
each context so that load from other processes hits both alike; the statistic is the median over repeats.
One torch thread by default: on a shared 2-core machine two threads oversubscribe the cores and a step's time swings
tenfold with the neighbours' load; one thread gives stable, comparable numbers (the ratio is what we report).

    .venv/bin/python benchmarks/bench_decode.py [--contexts 1024 2048 ...] [--repeats 3] [--new-tokens 8] [--threads 1] [--json out.json]
"""
import argparse
import json
import platform
import statistics
import time

import torch
from transformers import Qwen3VLForConditionalGeneration

from heed.hybrid import hybridize, measure_decode, tiny_qwen3vl_config

# Attention-heavy at long context, as the 8B is (36 layers, 32 q / 8 kv heads of 128): here 8 layers, 16 q / 8 kv heads
# of 64, hidden 512, a small vocabulary so that lm_head does not dominate a step.
SHAPE = dict(num_layers=8, hidden=512, heads=16, kv_heads=8, head_dim=64, vocab=2048, intermediate=1024)


def build(shape, seed=0):
    torch.manual_seed(seed)
    teacher = Qwen3VLForConditionalGeneration(tiny_qwen3vl_config(**shape)).eval()
    student = hybridize(teacher).eval()   # default layout: attention at layers 3 and 7
    return teacher, student


def run(contexts, repeats, new_tokens, shape=SHAPE, log=print):
    teacher, student = build(shape)
    rows = []
    for ctx in contexts:
        res = {"teacher": [], "student": []}
        for r in range(repeats):
            for name, model in (("teacher", teacher), ("student", student)):
                res[name].append(measure_decode(model, ctx, new_tokens=new_tokens, warmup=2, seed=r))
        row = dict(context=ctx)
        for name in res:
            tps = [m["tokens_per_s"] for m in res[name]]
            row[f"{name}_tok_s"] = statistics.median(tps)
            row[f"{name}_tok_s_min"], row[f"{name}_tok_s_max"] = min(tps), max(tps)
            row[f"{name}_cache_bytes"] = res[name][0]["cache_bytes"]
        ratios = [s["tokens_per_s"] / t["tokens_per_s"] for t, s in zip(res["teacher"], res["student"])]
        row["speedup"] = statistics.median(ratios)
        row["speedup_min"], row["speedup_max"] = min(ratios), max(ratios)
        row["cache_fraction"] = row["student_cache_bytes"] / row["teacher_cache_bytes"]
        rows.append(row)
        log(f"{ctx:>6}  teacher {row['teacher_tok_s']:7.1f} tok/s  student {row['student_tok_s']:7.1f} tok/s  "
            f"speedup {row['speedup']:.2f}x [{row['speedup_min']:.2f}, {row['speedup_max']:.2f}]  "
            f"cache {row['teacher_cache_bytes'] / 2**20:8.1f} MiB vs {row['student_cache_bytes'] / 2**20:7.1f} MiB ({row['cache_fraction']:.1%})")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.time()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, shape {SHAPE}")
    rows = run(a.contexts, a.repeats, a.new_tokens)
    at16 = [r for r in rows if r["context"] == 16384]
    if at16:
        r = at16[0]
        print(f"at 16k: speedup {r['speedup']:.2f}x (target >= 3x: {'met' if r['speedup'] >= 3 else 'NOT met'}), "
              f"cache {r['cache_fraction']:.1%} of the teacher's (target <= 30%: {'met' if r['cache_fraction'] <= 0.30 else 'NOT met'})")
    print(f"total {time.time() - t0:.0f} s")
    if a.json:
        with open(a.json, "w") as f: json.dump(dict(shape=SHAPE, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
