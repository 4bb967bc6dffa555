"""The byte model of heed.efficiency against measured CPU decode speed, with and without glibc's mmap for large blocks (issue 8).

heed.efficiency.predict_speedup gives the student/teacher decode speedup as a ratio of bytes moved per step, with no
fitted constant. This script measures the speedup of the CPU-sized Qwen3-VL of heed.hybrid's decode experiment and its
3:1 student (heed.hybrid.measure_decode, one torch thread, teacher and student alternating) at each context, twice:
with the default allocator, and in a child process with MALLOC_MMAP_MAX_=0 (no mmap: freed blocks are reused instead
of returned to the OS). transformers' DynamicCache grows by torch.cat, which allocates a fresh tensor every step; once a
layer's key tensor reaches glibc's largest mmap threshold (32 MiB on 64-bit) each such allocation is a new mapping whose
pages fault in on first touch, and that, not the bytes read, dominates a step.

    .venv/bin/python benchmarks/bench_efficiency.py [--contexts 1024 ... 16384] [--repeats 3] [--new-tokens 4]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SHAPE = dict(num_layers=8, hidden=512, heads=16, kv_heads=8, head_dim=64, vocab=2048, intermediate=1024)


def measure(contexts, repeats, new_tokens):
    import torch
    from transformers import Qwen3VLForConditionalGeneration
    from heed.hybrid import hybridize, measure_decode, tiny_qwen3vl_config
    torch.set_num_threads(1)
    torch.manual_seed(0)
    teacher = Qwen3VLForConditionalGeneration(tiny_qwen3vl_config(**SHAPE)).eval()
    student = hybridize(teacher).eval()
    rows = []
    for ctx in contexts:
        t, s = [], []
        for r in range(repeats):
            t.append(measure_decode(teacher, ctx, new_tokens=new_tokens, seed=r)["step_s_median"])
            s.append(measure_decode(student, ctx, new_tokens=new_tokens, seed=r)["step_s_median"])
        ratios = [a / b for a, b in zip(t, s)]
        rows.append(dict(context=ctx, teacher_ms=1e3 * statistics.median(t), student_ms=1e3 * statistics.median(s),
                         speedup=statistics.median(ratios), speedup_min=min(ratios), speedup_max=max(ratios)))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=4)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(measure(a.contexts, a.repeats, a.new_tokens)))
        return
    from heed.efficiency import predict_speedup
    from heed.hybrid import tiny_qwen3vl_config
    pred = dict(zip(a.contexts, predict_speedup(tiny_qwen3vl_config(**SHAPE), None, a.contexts, bytes_per_value=4)))
    t0 = time.time()
    print(f"load before: {os.getloadavg()}; shape {SHAPE}, fp32, one thread, {a.repeats} repeats, {a.new_tokens} timed steps")
    results = {}
    for name, extra in (("default malloc", {}), ("MALLOC_MMAP_MAX_=0", {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**40)})):
        env = {**os.environ, "OMP_NUM_THREADS": "1", **extra}
        cmd = [sys.executable, __file__, "--child", "--repeats", str(a.repeats), "--new-tokens", str(a.new_tokens), "--contexts", *map(str, a.contexts)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        results[name] = json.loads(out)
    print(f"| context | predicted | measured, default malloc [min, max] | teacher / student ms | measured, no mmap [min, max] | teacher / student ms |")
    print("|---|---|---|---|---|---|")
    for i, ctx in enumerate(a.contexts):
        d, n = results["default malloc"][i], results["MALLOC_MMAP_MAX_=0"][i]
        print(f"| {ctx} | {pred[ctx]:.2f}x | {d['speedup']:.2f}x [{d['speedup_min']:.2f}, {d['speedup_max']:.2f}] | {d['teacher_ms']:.0f} / {d['student_ms']:.0f} "
              f"| {n['speedup']:.2f}x [{n['speedup_min']:.2f}, {n['speedup_max']:.2f}] | {n['teacher_ms']:.0f} / {n['student_ms']:.0f} |")
    print(f"load after: {os.getloadavg()}; total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
