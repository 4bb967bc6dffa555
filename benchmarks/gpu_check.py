"""One GPU check, under 8 minutes on one H200: heed's scan against mamba-ssm's, and teacher vs student decoding.

1. The SSD scan: heed's chunked torch scan (`heed.ssd.ssd_chunked`) against mamba-ssm's Triton kernel
   (`mamba_chunk_scan_combined`) at 4k and 16k tokens, in the shape of a converted Qwen3-VL-2B layer (16 heads of 128,
   d_state 128, one B/C group per head, chunk 64, bf16 inputs): relative difference of the outputs, the final state
   and the input gradients, and forward+backward time of each (median of the timed repeats, CUDA events).
   Skipped with one line saying so when mamba-ssm is not installed.
2. Decoding: a random Qwen3-VL-2B-shaped teacher (bf16) and its `hybridize` student, greedy steps after a synthetic
   context of 8k to 64k tokens (`heed.hybrid.measure_decode`, both with the same cache kind): tokens/s and the peak
   GPU memory of the step (weights + cache + activations).

CI never runs this; results go to benchmarks/RESULTS.md by hand. On a machine without a GPU:
    .venv/bin/python benchmarks/gpu_check.py --dry-run      # parse, import, print the plan
    .venv/bin/python benchmarks/gpu_check.py --smoke        # every code path at toy sizes on the CPU (no Triton)
On the GPU:
    python benchmarks/gpu_check.py [--contexts 8192 16384 32768 65536] [--scan-lengths 4096 16384] [--json out.json]
"""
import argparse
import json
import platform
import statistics
import time


def timed(fn, repeats, device):
    "Median seconds of fn() over `repeats` calls after one warm-up (CUDA events on a GPU)."
    import torch
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(); fn(); end.record(); torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter(); fn(); times.append(time.perf_counter() - t0)
    return statistics.median(times)


def scan_check(lengths, heads, head_dim, d_state, repeats, device, dtype, log):
    "heed's torch scan vs mamba-ssm's Triton scan: agreement and fwd+bwd time at each length."
    import torch
    from heed.env import mamba_ssm_status
    from heed.ssd import ssd_chunked, ssd_scan
    status = mamba_ssm_status()
    triton = device.type == "cuda" and status.get("importable", False)
    if not triton:
        log(f"scan: mamba-ssm's Triton scan SKIPPED ({'no CUDA device' if device.type != 'cuda' else 'mamba-ssm not importable: ' + str(status)}); "
            "timing heed's torch scan alone")
    rows = []
    for L in lengths:
        g = torch.Generator(device=device).manual_seed(L)
        def rnd(*shape, scale=1.0): return (torch.randn(*shape, generator=g, device=device) * scale).to(dtype)
        x, B, C = rnd(1, L, heads, head_dim), rnd(1, L, heads, d_state, scale=d_state ** -0.5), rnd(1, L, heads, d_state, scale=d_state ** -0.5)
        dt = torch.nn.functional.softplus(torch.randn(1, L, heads, generator=g, device=device) - 3)
        A = -torch.rand(heads, generator=g, device=device) * 4 - 0.5
        D = torch.ones(heads, device=device)
        out = {}
        for name in (["torch", "triton"] if triton else ["torch"]):
            leaves = [t.detach().clone().requires_grad_(True) for t in (x, B, C)]
            def run(leaves=leaves, name=name):
                for t in leaves: t.grad = None
                y, s = ssd_scan(leaves[0], dt, A, leaves[1], leaves[2], 64, D=D, backend=name)
                (y.float().square().mean() + s.float().square().mean()).backward()
                return y, s
            y, s = run()
            grads = [t.grad.float().clone() for t in leaves]
            if device.type == "cuda": torch.cuda.reset_peak_memory_stats(device)
            sec = timed(run, repeats, device)
            peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
            out[name] = dict(y=y.float(), state=s.float(), grads=grads, seconds=sec, peak=peak)
        row = dict(length=L, torch_fwd_bwd_s=out["torch"]["seconds"], torch_peak_bytes=out["torch"]["peak"])
        if "triton" in out:
            rel = lambda a, b: float((a - b).norm() / b.norm().clamp_min(1e-30))
            row.update(triton_fwd_bwd_s=out["triton"]["seconds"], triton_peak_bytes=out["triton"]["peak"],
                       rel_diff_y=rel(out["torch"]["y"], out["triton"]["y"]),
                       rel_diff_state=rel(out["torch"]["state"], out["triton"]["state"]),
                       rel_diff_grads=max(rel(a, b) for a, b in zip(out["torch"]["grads"], out["triton"]["grads"])),
                       speed_ratio_torch_over_triton=out["torch"]["seconds"] / out["triton"]["seconds"])
        rows.append(row)
        log("scan " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    return rows


def decode_check(size, contexts, new_tokens, cache, device, dtype, log, shape=None):
    "Random teacher of a Qwen3-VL shape and its student: decode tokens/s and peak memory at each context."
    import torch
    from transformers import Qwen3VLForConditionalGeneration
    from heed.efficiency import qwen3_vl_config
    from heed.hybrid import hybridize, measure_decode, tiny_qwen3vl_config
    cfg = tiny_qwen3vl_config(**shape) if shape else qwen3_vl_config(size)
    torch.manual_seed(0)
    with torch.device(device):
        teacher = Qwen3VLForConditionalGeneration._from_config(cfg, dtype=dtype).eval()
    student = hybridize(teacher).eval()
    n_t, n_s = (sum(p.numel() for p in m.parameters()) for m in (teacher, student))
    log(f"decode: {'toy' if shape else 'Qwen3-VL-' + size} shape, teacher {n_t / 1e9:.3f} B, student {n_s / 1e9:.3f} B parameters, {dtype}, {cache} cache")
    rows = []
    for ctx in contexts:
        row = dict(context=ctx)
        for name, model in (("teacher", teacher), ("student", student)):
            if device.type == "cuda": torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats(device)
            try:
                m = measure_decode(model, ctx, new_tokens=new_tokens, warmup=2, cache=cache)
                row[f"{name}_tok_s"] = m["tokens_per_s"]
                row[f"{name}_cache_bytes"] = m["cache_bytes"]
            except torch.OutOfMemoryError:
                row[f"{name}_tok_s"] = None
                log(f"decode: {name} out of memory at {ctx}")
            if device.type == "cuda": row[f"{name}_peak_bytes"] = torch.cuda.max_memory_allocated(device)
        if row.get("teacher_tok_s") and row.get("student_tok_s"): row["speedup"] = row["student_tok_s"] / row["teacher_tok_s"]
        rows.append(row)
        log("decode " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scan-lengths", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--contexts", type=int, nargs="+", default=[8192, 16384, 32768, 65536])
    ap.add_argument("--size", default="2B", choices=["2B", "4B", "8B"], help="the Qwen3-VL shape of the decode check")
    ap.add_argument("--cache", default="growing", choices=["dynamic", "growing"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--json", default=None)
    ap.add_argument("--dry-run", action="store_true", help="parse, import and print the plan; run nothing")
    ap.add_argument("--smoke", action="store_true", help="every code path at toy sizes, on the CPU when there is no GPU")
    a = ap.parse_args(argv)
    import torch
    import heed.hybrid, heed.ssd, heed.efficiency  # noqa: F401  (the imports are part of the check)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    plan = (f"device {device} ({torch.cuda.get_device_name(0) if device.type == 'cuda' else platform.processor() or platform.machine()}), "
            f"torch {torch.__version__}; scan at {a.scan_lengths}; decode of a Qwen3-VL-{a.size} teacher vs student at {a.contexts} "
            f"({a.cache} cache, {a.new_tokens} steps)")
    print(("smoke: " if a.smoke else "") + plan, flush=True)
    if a.dry_run: return 0
    if device.type != "cuda" and not a.smoke:
        print("no CUDA device: nothing measured (use --smoke to exercise the code paths on the CPU)")
        return 0
    t0 = time.time()
    log = lambda s: print(f"[{time.time() - t0:6.1f} s] {s}", flush=True)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if a.smoke:
        scan = scan_check([128], 2, 16, 16, 1, device, dtype, log)
        dec = decode_check(a.size, [64, 128], 2, a.cache, device, dtype, log,
                           shape=dict(num_layers=4, hidden=64, heads=4, kv_heads=2, head_dim=16, vocab=128))
    else:
        scan = scan_check(a.scan_lengths, 16, 128, 128, a.repeats, device, dtype, log)
        dec = decode_check(a.size, a.contexts, a.new_tokens, a.cache, device, dtype, log)
    log("done")
    if a.json:
        with open(a.json, "w") as f: json.dump(dict(plan=plan, scan=scan, decode=dec), f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
