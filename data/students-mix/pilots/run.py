"""Item 6 pilot: uniform and HEED students from data/teacher-mix on a single-size world (55_three_arms' protocol), scored on
1,024 held-out examples of that size. Usage: OMP_NUM_THREADS=1 .venv/bin/python data/students-mix/pilots/run.py SIZE SEED
(s128/ here: run.py 128 0). Finished stages are reused (heed.students.run_stage)."""
import sys, json
from heed.env import home_dir, project_relative
from heed.students import as_overrides, run_stage, run_two_at_a_time, teacher_sha, test_set_key, write_scores
from heed.recipe import WORLD_V2
from heed.data import synth_splits
from heed.train import load_config
from heed.teacher import load_model
from heed.evaluate import evaluate
size, seed = int(sys.argv[1]), int(sys.argv[2])
teacher = home_dir() / "data" / "teacher-mix" / "model"
sha = teacher_sha(teacher)
data = {**WORLD_V2, "image_size": size, "n_train": 20000, "n_val": 8, "n_test": 1024}
root = home_dir() / "data" / "students-mix" / "pilots" / f"s{size}"
def ov(job, steps, w, init=None):
    o = {"teacher": project_relative(teacher), "steps": steps, "batch_size": 16, "weighting": w, "seed": seed, "eval_examples": 0,
         "log_every": max(1, steps // 20), "save_every": steps, "warmup_steps": max(1, steps // 10), "alignment": "global", "text_weight": 1.0}
    if init: o["init"] = project_relative(init)
    if job == "distill": o.update(lr=1e-3, align_weight=10.0)
    return as_overrides(o | {"data": data})
def chain(w):
    base = root / f"{w}-s{seed}-aw10.0"
    run_stage(base / "align", "align-small", ov("align", 200, w), sha)
    run_stage(base / "distill", "distill-small", ov("distill", 1000, w, base / "align" / "model"), sha)
run_two_at_a_time([lambda: chain("uniform"), lambda: chain("heed")])
test = synth_splits(load_config({"job": "sft", "data": {**data, "n_train": 0, "n_val": 0}}))["test"]
key = test_set_key(test)
t, tp = load_model(teacher)
res = {"teacher": evaluate(t, tp, test, limit=1024, batch_size=64).examples}
for w in ("uniform", "heed"):
    for st in ("align", "distill"):
        f = root / f"{w}-s{seed}-aw10.0" / st
        m, p = load_model(f / "model"); ex = evaluate(m, p, test, limit=1024, batch_size=64).examples
        write_scores(f, key, ex); res[f"{w} {st}"] = ex
tab = {k: (v.groupby("category")["exact_match"].mean() * 100).round(1).to_dict() | {"mean": round(float(v.groupby("category")["exact_match"].mean().mean() * 100), 1)} for k, v in res.items()}
print(json.dumps(tab, indent=1))
(root / "scores_summary.json").write_text(json.dumps(tab, indent=1) + "\n")
