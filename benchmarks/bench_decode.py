"""Decode speed and cache memory vs context: a CPU-sized Qwen3-VL teacher against its 3:1 hybrid student (issue 3).

Random weights (speed does not depend on them). The cache is filled synthetically to each context length
(heed.hybrid.fill_cache): a decode step's cost depends on the cache's shapes, not its values, and an O(L^2)
teacher prefill at 32k tokens is out of reach on a 2-core CPU. Teacher and student are measured alternately at
each context so that load from other processes hits both alike; the statistic is the median over repeats.
One torch thread by default: on a shared 2-core machine two threads oversubscribe the cores and a step's time swings
tenfold with the neighbours' load; one thread gives stable, comparable numbers (the ratio is what we report).

    .venv/bin/python benchmarks/bench_decode.py [--contexts 1024 2048 ...] [--repeats 3] [--new-tokens 8] [--threads 1]
        [--cache dynamic growing] [--gate new grouped] [--xb kv] [--breakdown] [--mix-path] [--paired-steps 64] [--json out.json]

--gate: one gate, or several: then every student (one per gate, the same teacher and layout) is timed in the same repeats as
the teacher, interleaved, and each one's ratio to the teacher and to the first student is reported from the same run.
--cache: transformers' DynamicCache (grows by torch.cat every step) and/or heed.hybrid.growing_cache (appends into a
reserve); teacher and student always get the same kind. --breakdown: where a step's time goes at the largest context,
by module kind (forward hooks; one extra measured pass per model). --mix-path: also time the same student with its Mamba
layers decoding through `Mamba2Mixer.mix` (the reference path, what decoding ran before `step_`), interleaved with the other
two in every repeat, so that a before/after comparison of the decode step runs under the same load. --paired-steps N: the
finer version of that comparison at the largest context: N student tokens, each decoded through `step_` and through `mix`
back to back (order alternating), the per-token ratio's median and quartiles; and one Mamba layer alone, N * 40 calls
each way, interleaved. For the glibc effect measured in the issue-8
section of RESULTS.md, run with MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1099511627776 in the environment.
"""
import argparse
import contextlib
import json
import os
import platform
import statistics
import time

import torch
from transformers import Qwen3VLForConditionalGeneration

import heed.mamba2
from heed.hybrid import fill_cache, hybridize, measure_decode, tiny_qwen3vl_config
from heed.mamba2 import Mamba2Mixer

# Attention-heavy at long context, as the 8B is (36 layers, 32 q / 8 kv heads of 128): here 8 layers, 16 q / 8 kv heads
# of 64, hidden 512, a small vocabulary so that lm_head does not dominate a step.
SHAPE = dict(num_layers=8, hidden=512, heads=16, kv_heads=8, head_dim=64, vocab=2048, intermediate=1024)


def build(shape, seed=0, **student):
    torch.manual_seed(seed)
    teacher = Qwen3VLForConditionalGeneration(tiny_qwen3vl_config(**shape)).eval()
    student = hybridize(teacher, **student).eval()   # default layout: attention at layers 3 and 7
    return teacher, student


@contextlib.contextmanager
def mix_path():
    "Inside: Mamba layers decode through `mix` (no cache slot is handed to `step_`)."
    keep = heed.mamba2._decode_state
    heed.mamba2._decode_state = lambda *args: None
    try: yield
    finally: heed.mamba2._decode_state = keep


def kind_of(name: str, module) -> str | None:
    "The part of a decoder a module is, for the breakdown (None: not timed on its own)."
    if isinstance(module, Mamba2Mixer): return "mamba mixer"
    if type(module).__name__.endswith("TextAttention"): return "attention"
    if type(module).__name__.endswith("TextMLP"): return "mlp"
    if name == "lm_head": return "lm_head"
    return None


@torch.no_grad()
def breakdown(model, ctx, steps=4, cache="dynamic"):
    "Seconds per step by module kind (forward pre/post hooks), the rest of the step as 'other', and the step itself."
    spent, t_in, hooks = {}, {}, []
    for name, m in model.named_modules():
        k = kind_of(name, m)
        if k is None: continue
        hooks.append(m.register_forward_pre_hook(lambda mod, args, n=name: t_in.__setitem__(n, time.perf_counter())))
        hooks.append(m.register_forward_hook(lambda mod, args, out, n=name, k=k: spent.__setitem__(k, spent.get(k, 0.0) + time.perf_counter() - t_in[n])))
    try:
        filled = fill_cache(model, ctx, cache=cache)
        model.model.rope_deltas = None
        tok = torch.zeros(1, 1, dtype=torch.long)
        for _ in range(2): model(input_ids=tok, cache=filled, use_cache=True)   # warm-up
        spent.clear()
        t0 = time.perf_counter()
        for _ in range(steps): model(input_ids=tok, cache=filled, use_cache=True)
        total = (time.perf_counter() - t0) / steps
    finally:
        for h in hooks: h.remove()
    out = {k: v / steps for k, v in spent.items()}
    out["other (embedding, norms, cache bookkeeping, Python)"] = total - sum(out.values())
    out["step"] = total
    return out


@torch.no_grad()
def paired_steps(student, ctx, n, cache="dynamic"):
    "Student decode steps at context ctx, through step_ and through mix alternately: medians (s) and the paired mix/step_ ratio."
    filled = fill_cache(student, ctx, cache=cache)
    student.model.rope_deltas = None
    tok = torch.zeros(1, 1, dtype=torch.long)
    t = {"step_": [], "mix": []}
    for i in range(n + 4):
        for name in (("step_", "mix") if i % 2 else ("mix", "step_")):
            with (mix_path() if name == "mix" else contextlib.nullcontext()):
                t0 = time.perf_counter(); student(input_ids=tok, cache=filled, use_cache=True); dt = time.perf_counter() - t0
            if i >= 4: t[name].append(dt)   # 4 warm-up pairs
    r = [m / s for m, s in zip(t["mix"], t["step_"])]
    q = statistics.quantiles(r, n=4)
    return dict(context=ctx, cache=cache, n=n, step_s=statistics.median(t["step_"]), mix_s=statistics.median(t["mix"]),
                mix_over_step=statistics.median(r), q1=q[0], q3=q[2])


@torch.no_grad()
def paired_mixer(student, calls):
    "One Mamba layer's decode call alone (small synthetic cache), through mix and through step_, interleaved; plus its two projections."
    i = student.mamba_layers[0]
    mx = student.model.language_model.layers[i].self_attn
    filled = fill_cache(student, 64)
    u = torch.randn(1, 1, mx.hidden_size)
    t = {"mix": [], "step_": [], "projections": []}
    for k in range(calls + calls // 10):
        with mix_path():
            t0 = time.perf_counter(); mx(hidden_states=u, attention_mask=None, cache=filled); dm = time.perf_counter() - t0
        t0 = time.perf_counter(); mx(hidden_states=u, attention_mask=None, cache=filled); ds = time.perf_counter() - t0
        t0 = time.perf_counter(); mx.out_proj(mx.in_proj(u)[..., :mx.d_inner]); dp = time.perf_counter() - t0
        if k >= calls // 10:
            t["mix"].append(dm); t["step_"].append(ds); t["projections"].append(dp)
    out = {f"{k}_s": statistics.median(v) for k, v in t.items()}
    out["mix_over_step"] = statistics.median([m / s for m, s in zip(t["mix"], t["step_"])])
    return out


def student_name(kw: dict) -> str:
    return "student " + ", ".join(f"{k}={v}" for k, v in kw.items())


def run(contexts, repeats, new_tokens, shape=SHAPE, log=print, cache="dynamic", student_kw=None, with_mix_path=False, more_students=()):
    """Teacher against `student_kw`'s student ('student') and, interleaved in the same repeats, one more student per entry
    of `more_students` (named by `student_name`; its ratio to the teacher and to 'student' in the row)."""
    teacher, student = build(shape, **(student_kw or {}))
    models = [("teacher", teacher, contextlib.nullcontext), ("student", student, contextlib.nullcontext)]
    for kw in more_students:
        models.append((student_name(kw), hybridize(teacher, **kw).eval(), contextlib.nullcontext))
    if with_mix_path: models.append(("student_mix", student, mix_path))
    rows = []
    for ctx in contexts:
        res = {name: [] for name, _, _ in models}
        for r in range(repeats):
            for name, model, path in models:
                with path(): res[name].append(measure_decode(model, ctx, new_tokens=new_tokens, warmup=2, seed=r, cache=cache))
        row = dict(context=ctx, cache=cache)
        for name in res:
            tps = [m["tokens_per_s"] for m in res[name]]
            row[f"{name}_tok_s"] = statistics.median(tps)
            row[f"{name}_tok_s_min"], row[f"{name}_tok_s_max"] = min(tps), max(tps)
            row[f"{name}_cache_bytes"] = res[name][0]["cache_bytes"]
        ratios = [s["tokens_per_s"] / t["tokens_per_s"] for t, s in zip(res["teacher"], res["student"])]
        row["speedup"] = statistics.median(ratios)
        row["speedup_min"], row["speedup_max"] = min(ratios), max(ratios)
        for kw in more_students:
            name = student_name(kw)
            ratios = [s["tokens_per_s"] / t["tokens_per_s"] for t, s in zip(res["teacher"], res[name])]
            row[f"speedup[{name}]"], row[f"speedup_min[{name}]"], row[f"speedup_max[{name}]"] = statistics.median(ratios), min(ratios), max(ratios)
            ratios = [o["tokens_per_s"] / s["tokens_per_s"] for s, o in zip(res["student"], res[name])]
            row[f"over_student[{name}]"], row[f"over_student_min[{name}]"], row[f"over_student_max[{name}]"] = statistics.median(ratios), min(ratios), max(ratios)
        if with_mix_path:
            ratios = [s["tokens_per_s"] / t["tokens_per_s"] for t, s in zip(res["teacher"], res["student_mix"])]
            row["speedup_mix"], row["speedup_mix_min"], row["speedup_mix_max"] = statistics.median(ratios), min(ratios), max(ratios)
            ratios = [s["tokens_per_s"] / m["tokens_per_s"] for m, s in zip(res["student_mix"], res["student"])]
            row["step_over_mix"], row["step_over_mix_min"], row["step_over_mix_max"] = statistics.median(ratios), min(ratios), max(ratios)
        row["cache_fraction"] = row["student_cache_bytes"] / row["teacher_cache_bytes"]
        rows.append(row)
        log(f"{cache:>8} {ctx:>6}  teacher {row['teacher_tok_s']:7.1f} tok/s  student {row['student_tok_s']:7.1f} tok/s  "
            f"speedup {row['speedup']:.2f}x [{row['speedup_min']:.2f}, {row['speedup_max']:.2f}]  "
            f"cache {row['teacher_cache_bytes'] / 2**20:8.1f} MiB vs {row['student_cache_bytes'] / 2**20:7.1f} MiB ({row['cache_fraction']:.1%})")
        for kw in more_students:
            name = student_name(kw)
            log(f"{cache:>8} {ctx:>6}  {name}: {row[f'{name}_tok_s']:7.1f} tok/s  speedup {row[f'speedup[{name}]']:.2f}x "
                f"[{row[f'speedup_min[{name}]']:.2f}, {row[f'speedup_max[{name}]']:.2f}]  over the first student "
                f"{row[f'over_student[{name}]']:.3f}x [{row[f'over_student_min[{name}]']:.3f}, {row[f'over_student_max[{name}]']:.3f}]  "
                f"cache {row[f'{name}_cache_bytes'] / 2**20:7.1f} MiB")
        if with_mix_path:
            log(f"{cache:>8} {ctx:>6}  student through mix {row['student_mix_tok_s']:7.1f} tok/s  speedup {row['speedup_mix']:.2f}x "
                f"[{row['speedup_mix_min']:.2f}, {row['speedup_mix_max']:.2f}]  step_ over mix {row['step_over_mix']:.2f}x "
                f"[{row['step_over_mix_min']:.2f}, {row['step_over_mix_max']:.2f}]")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", nargs="+", default=["dynamic"], choices=["dynamic", "growing"])
    ap.add_argument("--gate", nargs="+", default=None,
                    help="hybridize's gate (default: its default); several: one student per gate, all timed in the same run")
    ap.add_argument("--xb", default=None, help="hybridize's x/B layout (default: its default)")
    ap.add_argument("--breakdown", action="store_true", help="time per module kind at the largest context")
    ap.add_argument("--mix-path", action="store_true", help="also time the student decoding through Mamba2Mixer.mix (before/after step_)")
    ap.add_argument("--paired-steps", type=int, default=0, help="student tokens for the per-token step_ vs mix comparison (0: none)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.time()
    gates = a.gate or [None]
    kws = [{k: v for k, v in (("gate", g), ("xb", a.xb)) if v is not None} for g in gates]
    student_kw, more = kws[0], kws[1:]
    if more and (a.mix_path or a.breakdown or a.paired_steps):
        raise SystemExit("--gate with several gates times students side by side; --mix-path, --breakdown and --paired-steps take one")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, shape {SHAPE}, student {student_kw or 'default'}, "
          f"MALLOC_MMAP_MAX_={os.environ.get('MALLOC_MMAP_MAX_', 'unset')}" + (f", more students {more}" if more else ""))
    if more:   # what each converted layer holds: the weight bytes a decode step reads in place of the attention's
        teacher, _ = build(SHAPE)
        i = hybridize(teacher, **student_kw).mamba_layers[0]
        n_attn = sum(p.numel() for p in teacher.model.language_model.layers[i].self_attn.parameters())
        for kw in kws:
            n = sum(p.numel() for p in hybridize(teacher, **kw).model.language_model.layers[i].self_attn.parameters())
            print(f"{student_name(kw)}: a converted layer holds {n / 1e6:.3f} M parameters (the attention it replaces: {n_attn / 1e6:.3f} M)")
        del teacher
    rows = []
    for cache in a.cache:
        rows += run(a.contexts, a.repeats, a.new_tokens, cache=cache, student_kw=student_kw, with_mix_path=a.mix_path, more_students=more)
    for r in rows:
        if r["context"] == 16384:
            print(f"at 16k ({r['cache']} cache): speedup {r['speedup']:.2f}x [{r['speedup_min']:.2f}, {r['speedup_max']:.2f}] "
                  f"(target >= 3x: {'met' if r['speedup'] >= 3 else 'NOT met'}), cache {r['cache_fraction']:.1%} of the teacher's "
                  f"(target <= 30%: {'met' if r['cache_fraction'] <= 0.30 else 'NOT met'})")
            for kw in more:
                n = student_name(kw)
                print(f"at 16k ({r['cache']} cache), {n}: speedup {r[f'speedup[{n}]']:.2f}x [{r[f'speedup_min[{n}]']:.2f}, "
                      f"{r[f'speedup_max[{n}]']:.2f}] (target >= 3x: {'met' if r[f'speedup[{n}]'] >= 3 else 'NOT met'}); "
                      f"over {student_name(student_kw)} {r[f'over_student[{n}]']:.3f}x")
    parts = {}
    if a.breakdown:
        teacher, student = build(SHAPE, **student_kw)
        ctx = max(a.contexts)
        for cache in a.cache:
            models = [("teacher", teacher, contextlib.nullcontext), ("student", student, contextlib.nullcontext)]
            for name, model, path in models + ([("student through mix", student, mix_path)] if a.mix_path else []):
                with path(): parts[f"{name}, {cache}"] = b = breakdown(model, ctx, cache=cache)
                print(f"breakdown at {ctx}, {name}, {cache} cache: " + ", ".join(f"{k} {1e3 * v:.1f} ms" for k, v in b.items()))
    paired = []
    if a.paired_steps:
        teacher, student = build(SHAPE, **student_kw)
        del teacher
        m = paired_mixer(student, 40 * a.paired_steps)
        print(f"one Mamba layer's decode call: mix {1e3 * m['mix_s']:.3f} ms, step_ {1e3 * m['step__s']:.3f} ms (paired mix/step_ "
              f"{m['mix_over_step']:.2f}x), its two projections alone {1e3 * m['projections_s']:.3f} ms")
        for cache in a.cache:
            p = paired_steps(student, max(a.contexts), a.paired_steps, cache=cache)
            paired.append(p)
            print(f"student step at {p['context']}, {cache} cache: through mix {1e3 * p['mix_s']:.1f} ms, through step_ {1e3 * p['step_s']:.1f} ms, "
                  f"paired mix/step_ {p['mix_over_step']:.3f} [quartiles {p['q1']:.3f}, {p['q3']:.3f}] over {p['n']} tokens")
        paired.insert(0, m)
    print(f"total {time.time() - t0:.0f} s")
    if a.json:
        with open(a.json, "w") as f: json.dump(dict(shape=SHAPE, student=student_kw, more_students=list(more), rows=rows, breakdown=parts, paired=paired), f, indent=1)


if __name__ == "__main__":
    main()
