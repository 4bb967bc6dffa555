"""Mamba-2 mixer forward+backward: heed.mamba2.Mamba2Mixer (chunked torch SSD scan of heed.ssd) against transformers'
Mamba2Mixer on its pure-torch path, at equal shapes, weights copied (issue 3). Also the scan alone, and on CUDA with
mamba-ssm, the Triton scan against the torch scan (speed and agreement); a CPU-only run says so and skips that part.

Shapes: hidden 768, 24 heads x 64 (d_inner 1536), state 128, 1 group, conv 4, batch 1 — transformers' Mamba2 at the
130M scale. transformers runs with its default chunk (256), ours with its default (64). The two implementations are
measured alternately within each repeat, so load from other processes hits both alike; we report the median of the
per-repeat time ratios. One torch thread by default (see bench_decode.py for why).

    .venv/bin/python benchmarks/bench_ssd.py [--lengths 1024 4096] [--repeats 5] [--threads 1]
"""
import argparse
import platform
import statistics
import time

import torch

from heed.env import ssd_backend
from heed.mamba2 import Mamba2Mixer
from heed.ssd import ssd_scan

SHAPE = dict(hidden=768, heads=24, head_dim=64, d_state=128, groups=1, d_conv=4)


def build(shape=SHAPE, seed=0):
    from transformers import Mamba2Config
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer as HFMixer
    torch.manual_seed(seed)
    s = shape
    cfg = Mamba2Config(hidden_size=s["hidden"], num_heads=s["heads"], head_dim=s["head_dim"], state_size=s["d_state"],
                       n_groups=s["groups"], expand=s["heads"] * s["head_dim"] // s["hidden"], conv_kernel=s["d_conv"],
                       use_bias=False, use_conv_bias=True, num_hidden_layers=1)
    hf = HFMixer(cfg, layer_idx=0).train()
    ours = Mamba2Mixer(s["hidden"], s["heads"], s["head_dim"], s["d_state"], n_groups=s["groups"], d_conv=s["d_conv"],
                       norm_eps=cfg.layer_norm_epsilon, norm_group_size=s["heads"] * s["head_dim"] // s["groups"]).train()  # transformers normalises per group
    with torch.no_grad():
        for a, b in [("in_proj.weight", "in_proj.weight"), ("conv1d.weight", "conv1d.weight"), ("conv1d.bias", "conv1d.bias"),
                     ("dt_bias", "dt_bias"), ("A_log", "A_log"), ("D", "D"), ("norm_weight", "norm.weight"), ("out_proj.weight", "out_proj.weight")]:
            ours.get_parameter(a).copy_(hf.get_parameter(b))
    return ours, hf, cfg.chunk_size


def fwd_bwd(fn, u):
    u = u.detach().requires_grad_()
    t0 = time.perf_counter()
    y = fn(u)
    y.float().square().mean().backward()
    return time.perf_counter() - t0, y.detach()


def bench_mixers(lengths, repeats, log=print):
    ours, hf, hf_chunk = build()
    rows = []
    for L in lengths:
        u = torch.randn(1, L, SHAPE["hidden"], generator=torch.Generator().manual_seed(L))
        fwd_bwd(lambda x: ours.mix(x)[0], u); fwd_bwd(hf, u)          # warm-up
        t_ours, t_hf, ratio = [], [], []
        for _ in range(repeats):
            a, ya = fwd_bwd(lambda x: ours.mix(x)[0], u)
            b, yb = fwd_bwd(hf, u)
            t_ours.append(a); t_hf.append(b); ratio.append(b / a)
        err = ((ya - yb).norm() / yb.norm()).item()
        row = dict(L=L, ours_s=statistics.median(t_ours), hf_s=statistics.median(t_hf), speedup=statistics.median(ratio),
                   speedup_min=min(ratio), speedup_max=max(ratio), rel_diff=err)
        rows.append(row)
        log(f"mixer fwd+bwd L={L:>5}: ours {row['ours_s'] * 1e3:7.1f} ms (chunk {ours.chunk_size})  transformers {row['hf_s'] * 1e3:7.1f} ms "
            f"(chunk {hf_chunk})  speedup {row['speedup']:.2f}x [{row['speedup_min']:.2f}, {row['speedup_max']:.2f}]  "
            f"outputs agree to {err:.1e} (relative)  target >= 1.5x: {'met' if row['speedup'] >= 1.5 else 'NOT met'}")
    return rows


def bench_scans(lengths, repeats, log=print):
    from transformers.models.mamba2.modeling_mamba2 import mamba2_chunk_scan
    h, p, n, g = SHAPE["heads"], SHAPE["head_dim"], SHAPE["d_state"], SHAPE["groups"]
    for L in lengths:
        gen = torch.Generator().manual_seed(L)
        args = [torch.randn(1, L, h, p, generator=gen), torch.rand(1, L, h, generator=gen) * 0.1, -torch.rand(h, generator=gen) - 0.5,
                torch.randn(1, L, g, n, generator=gen) / n**0.5, torch.randn(1, L, g, n, generator=gen) / n**0.5]
        D = torch.ones(h)
        def run(f):
            leaves = [a.clone().requires_grad_() for a in args]
            t0 = time.perf_counter(); y = f(*leaves); y.square().mean().backward(); return time.perf_counter() - t0
        ours = lambda *a: ssd_scan(*a, chunk_size=64, D=D, backend="torch")[0]
        theirs = lambda *a: mamba2_chunk_scan(*a, chunk_size=256, D=D)
        run(ours); run(theirs)
        ratio = []
        for _ in range(repeats):
            ratio.append(run(theirs) / run(ours))
        log(f"scan only fwd+bwd L={L:>5}: speedup {statistics.median(ratio):.2f}x [{min(ratio):.2f}, {max(ratio):.2f}]")


def bench_cuda(log=print):
    if not torch.cuda.is_available():
        log("CUDA: no CUDA device on this machine; Triton vs torch comparison skipped (CPU-only run)."); return
    if ssd_backend("cuda") != "triton":
        log("CUDA: device present but mamba-ssm's Triton scan is not importable; comparison skipped."); return
    h, p, n, g = SHAPE["heads"], SHAPE["head_dim"], SHAPE["d_state"], SHAPE["groups"]
    for L in (1024, 4096, 16384):
        gen = torch.Generator(device="cuda").manual_seed(L)
        x = torch.randn(1, L, h, p, device="cuda", generator=gen); dt = torch.rand(1, L, h, device="cuda", generator=gen) * 0.1
        A = -torch.rand(h, device="cuda", generator=gen) - 0.5
        B = torch.randn(1, L, g, n, device="cuda", generator=gen) / n**0.5; C = torch.randn(1, L, g, n, device="cuda", generator=gen) / n**0.5
        out = {}
        for be in ("torch", "triton"):
            ssd_scan(x, dt, A, B, C, 64, backend=be); torch.cuda.synchronize()
            ts = []
            for _ in range(10):
                t0 = time.perf_counter(); y, s = ssd_scan(x, dt, A, B, C, 64, backend=be); torch.cuda.synchronize(); ts.append(time.perf_counter() - t0)
            out[be] = (statistics.median(ts), y, s)
        err = ((out["triton"][1] - out["torch"][1]).norm() / out["torch"][1].norm()).item()
        log(f"CUDA scan fwd L={L:>6}: torch {out['torch'][0] * 1e3:.2f} ms  triton {out['triton'][0] * 1e3:.2f} ms  "
            f"speedup {out['torch'][0] / out['triton'][0]:.1f}x  relative difference {err:.1e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, shape {SHAPE}")
    t0 = time.time()
    bench_mixers(a.lengths, a.repeats)
    bench_scans(a.lengths, a.repeats)
    bench_cuda()
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
