"""Issue 5 costs: HEED-Synth generation, one toy-teacher training step, and generation-based evaluation.

Usage: .venv/bin/python benchmarks/bench_synth_teacher.py [--repeats 3] [--threads 1 2]
Prints medians and spreads (min..max) over repeats, and the machine's load average before and after.
"""
import argparse
import os
import statistics
import time

import torch


def spread(xs):
    return f"median {statistics.median(xs):.1f} (min {min(xs):.1f}, max {max(xs):.1f}, n={len(xs)})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--synth-n", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    from heed.evaluate import evaluate
    from heed.synth import SynthConfig, generate_split, make_synth
    from heed.teacher import AnswerCollator, build_toy_teacher

    print(f"load average before: {os.getloadavg()}")
    # 1. synth: examples per second, including PNG encoding into a datasets.Dataset
    rates = []
    for r in range(args.repeats):
        t = time.perf_counter()
        generate_split("train", args.synth_n, r, SynthConfig())
        rates.append(args.synth_n / (time.perf_counter() - t))
    print(f"synth generation (examples/s, n={args.synth_n}, 1 process): {spread(rates)}")

    world = make_synth(256, 0, 128, seed=0, cache=False)
    rows = [world["train"][i] for i in range(256)]
    for threads in args.threads:
        torch.set_num_threads(threads)
        # 2. one training step: collate 32 rows, forward + backward + AdamW
        model, proc = build_toy_teacher(seed=0)
        collate = AnswerCollator(proc)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        model.train()
        step_ms, collate_ms = [], []
        for r in range(args.repeats):
            times, ctimes = [], []
            for s in range(args.steps + 3):
                t0 = time.perf_counter()
                b = collate(rows[(s * 32) % 224:(s * 32) % 224 + 32])
                t1 = time.perf_counter()
                loss = model(**b).loss
                opt.zero_grad(); loss.backward(); opt.step()
                t2 = time.perf_counter()
                if s >= 3: times.append((t2 - t1) * 1e3); ctimes.append((t1 - t0) * 1e3)
            step_ms.append(statistics.median(times)); collate_ms.append(statistics.median(ctimes))
        print(f"[{threads} thread(s)] toy teacher step, batch 32, fwd+bwd+AdamW (ms): {spread(step_ms)}")
        print(f"[{threads} thread(s)] collate 32 rows (ms): {spread(collate_ms)}")
        # 3. evaluation: batched greedy generation + scoring
        ev = []
        for r in range(args.repeats):
            t = time.perf_counter()
            evaluate(model, proc, world["test"], batch_size=32, max_new_tokens=8)
            ev.append(len(world["test"]) / (time.perf_counter() - t))
        print(f"[{threads} thread(s)] evaluate, 128 examples, batch 32, <=8 new tokens (examples/s): {spread(ev)}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
