"""Which gate should `hybridize` default to? Align-stage loss and held-out accuracy after a fixed budget, several seeds.

For each student variant (gate, x/B layout) and seed: build the student from the committed world-v1 toy teacher with
`hybridize(teacher, gate=..., xb=...)` (the seed draws its fresh parameters), measure the alignment loss on held-out
examples, run the align stage (`heed train`'s align job: only the Mamba mixers learn, density-weighted residual
alignment) for a fixed number of steps, then measure the held-out alignment loss again and greedy answer accuracy on
held-out examples. The held-out loss is the align job's own loss function on validation batches (no second copy).
Variants share seeds, so seed s of every variant sees the same batches in the same order.

Runs are checkpointed per (variant, seed): a finished one is read back, so an interrupted ablation resumes.
One torch thread (a shared 2-core machine).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ablate_gate.py [--steps 200] [--batch 16] [--eval 512] [--seeds 0 1 2]
        [--variants from_attention:kv new:kv none:kv from_attention:kv_preconv new:query] [--out runs/gate_ablation]
"""
import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import torch

from heed.env import data_dir, home_dir, write_text_atomic
from heed.hybrid import hybridize
from heed.teacher import load_model
from heed.train import align_job, load_config, train

VARIANTS = ("from_attention:kv", "new:kv", "none:kv", "from_attention:kv_preconv", "new:query")


def held_out_align_loss(cfg, n: int, batch: int = 32) -> float:
    "Mean align loss of `cfg`'s job (its init student against its teacher) over the first n validation examples."
    job = align_job(cfg, torch.device("cpu"))
    job.module.eval()
    from heed.data import synth_splits
    val = synth_splits(cfg)["validation"]
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, min(n, len(val)), batch):
            rows = [val[j] for j in range(i, min(i + batch, n, len(val)))]
            terms = job.loss(job.module, job.collate(rows))
            total += float(sum(terms.values())) * len(rows); count += len(rows)
    return total / count


def run_one(variant: str, seed: int, args, teacher_dir: Path, data: dict) -> dict:
    out = Path(args.out) / f"{variant.replace(':', '-')}-s{seed}"
    done = out / "ablation.json"
    if done.is_file(): return json.loads(done.read_text())
    gate, xb = variant.split(":")
    t0 = time.perf_counter()
    init = out / "init"
    if not (init / "config.json").is_file():
        teacher, processor = load_model(teacher_dir)
        torch.manual_seed(seed)
        student = hybridize(teacher, gate=gate, xb=xb)
        tmp = out / "init.tmp"
        if tmp.exists(): shutil.rmtree(tmp)
        student.save_pretrained(tmp); processor.save_pretrained(tmp)
        if init.exists(): shutil.rmtree(init)
        tmp.rename(init)
    n_params = sum(p.numel() for p in load_model(init)[0].parameters())
    common = [f"teacher={teacher_dir}", f"seed={seed}", f"batch_size={args.batch}", f"steps={args.steps}",
              f"warmup_steps={max(1, args.steps // 10)}", "log_every=1", f"save_every={args.steps}",
              "data=" + json.dumps(data)]
    before = held_out_align_loss(load_config("align-small", common + [f"init={init}", "output_dir=unused"]), args.loss_examples)
    cfg = load_config("align-small", common + [f"init={init}", f"output_dir={out / 'align'}", f"eval_examples={args.eval}",
                                                "resume=" + str((out / "align" / "checkpoint").is_dir()).lower()])
    result = train(cfg, progress=False)
    log = [json.loads(l) for l in (out / "align" / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["align"] for r in log if "align" in r]
    after = held_out_align_loss(load_config("align-small", common + [f"init={out / 'align' / 'model'}", "output_dir=unused"]),
                                args.loss_examples)
    rec = dict(variant=variant, gate=gate, xb=xb, seed=seed, params=n_params, steps=args.steps, batch=args.batch,
               held_out_align_before=before, held_out_align_after=after,
               train_align_last20=statistics.mean(train_losses[-20:]), accuracy=result["eval"].get("aggregate"),
               eval=result["eval"], seconds=round(time.perf_counter() - t0, 1))
    write_text_atomic(done, json.dumps(rec, indent=2))
    return rec


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--eval", type=int, default=512, help="held-out examples for the accuracy")
    ap.add_argument("--loss-examples", type=int, default=128, help="held-out examples for the alignment loss")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), help="gate:xb pairs")
    ap.add_argument("--out", default=str(home_dir() / "runs" / "gate_ablation"))
    ap.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    args = ap.parse_args()
    torch.set_num_threads(1)
    teacher_dir = data_dir() / "teacher-v1" / "model"
    if not (teacher_dir / "config.json").is_file():
        raise SystemExit(f"no teacher at {teacher_dir}: it is committed with the repository (data/teacher-v1/model)")
    tcfg = load_config(str(data_dir() / "teacher-v1" / "config.yaml"), ["resume=false"])
    data = {**tcfg.data, "n_train": max(4000, args.steps * args.batch), "n_val": max(args.eval, args.loss_examples), "n_test": 8}
    print(f"variants {args.variants}, seeds {args.seeds}, align {args.steps} steps x batch {args.batch}, "
          f"held-out: accuracy on {args.eval}, align loss on {args.loss_examples}; out {args.out}", flush=True)
    if args.dry_run: return
    rows = []
    for seed in args.seeds:              # seed-major: every variant of a seed before the next seed, so a partial run is paired
        for v in args.variants:
            r = run_one(v, seed, args, teacher_dir, data)
            rows.append(r)
            print(f"{v:>26} s{seed}: params {r['params']:,}  held-out align {r['held_out_align_before']:.4f} -> "
                  f"{r['held_out_align_after']:.4f}  train align (last 20) {r['train_align_last20']:.4f}  "
                  f"accuracy {r['accuracy']:.3f}  ({r['seconds']:.0f} s)", flush=True)
    summary = {}
    for v in args.variants:
        rs = [r for r in rows if r["variant"] == v]
        summary[v] = {k: (statistics.mean(r[k] for r in rs), min(r[k] for r in rs), max(r[k] for r in rs))
                      for k in ("held_out_align_before", "held_out_align_after", "train_align_last20", "accuracy")}
        summary[v]["params"] = rs[0]["params"]
    write_text_atomic(Path(args.out) / "summary.json", json.dumps(dict(rows=rows, summary=summary), indent=2))
    print("\nmean [min, max] over seeds", args.seeds)
    for v, s in summary.items():
        print(f"{v:>26}: params {s['params']:,}  " + "  ".join(f"{k} {s[k][0]:.4f} [{s[k][1]:.4f}, {s[k][2]:.4f}]" for k in s if k != "params"))


if __name__ == "__main__":
    main()
