"""Step time of `align` and `distill` against one teacher forward on the same batch (toy world, CPU).

    .venv/bin/python benchmarks/bench_train.py [--batch 32] [--repeats 7] [--threads 1]

A step = the job's loss (one teacher forward under no_grad + one student forward with residual
capture, + density weights for HEED) + backward + AdamW step. Reported: median and IQR over repeats.
The teacher is a freshly initialised toy teacher: step time does not depend on what it learned.
"""
import argparse
import json
import statistics
import tempfile
import time

import torch


def timeit(fn, repeats):
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
    ts.sort()
    return dict(median_ms=1e3 * statistics.median(ts), q1_ms=1e3 * ts[len(ts) // 4], q3_ms=1e3 * ts[(3 * len(ts)) // 4])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from heed.teacher import build_toy_teacher, save_teacher
    from heed.data import synth_splits
    from heed.train import build_job, load_config
    from heed.teacher import model_inputs
    out = {}
    with tempfile.TemporaryDirectory() as t:
        teacher = build_toy_teacher(seed=0)
        save_teacher(teacher.model, teacher.processor, f"{t}/teacher")
        data = [f"data.n_train={args.batch}", "data.n_val=8", "data.n_test=8", "eval_examples=0", f"teacher={t}/teacher"]
        cfg = load_config("align-smoke", data + [f"output_dir={t}/x"])
        rows = synth_splits(cfg)["train"]
        for job_name, weighting in [("align", "uniform"), ("align", "heed"), ("distill", "uniform"), ("distill", "heed")]:
            cfg = load_config(f"{job_name}-smoke", data + [f"output_dir={t}/{job_name}", f"weighting={weighting}"])
            job = build_job(cfg, "cpu")
            batch = job.collate([rows[i] for i in range(args.batch)])
            opt = torch.optim.AdamW(job.params, lr=1e-4)
            def step():
                terms = job.loss(job.module, batch)
                sum(terms.values()).backward(); opt.step(); opt.zero_grad(set_to_none=True)
            out[f"{job_name}/{weighting} step"] = timeit(step, args.repeats)
        tm = teacher.model.eval()
        inputs = model_inputs(batch)
        with torch.no_grad():
            out["teacher forward"] = timeit(lambda: tm(**inputs), args.repeats)
    base = out["teacher forward"]["median_ms"]
    print(f"batch {args.batch}, threads {args.threads}, repeats {args.repeats}")
    for k, v in out.items():
        print(f"{k:<22} {v['median_ms']:8.1f} ms (IQR {v['q1_ms']:.1f}-{v['q3_ms']:.1f})   {v['median_ms'] / base:5.2f}x teacher forward")
    print(json.dumps({k: round(v["median_ms"], 2) for k, v in out.items()}))


if __name__ == "__main__":
    main()
