"""The mixed-canvas teacher at each canvas size: held-out accuracy and premise gate 1 (null-mixer error, visual / text).

Usage: OMP_NUM_THREADS=1 .venv/bin/python data/teacher-mix/check.py MODEL_DIR N_ACCURACY N_GATE
(the numbers in README.md here: data/teacher-mix/model 256 64; under 3 minutes on one thread)."""
import sys, json, torch
torch.set_num_threads(1)
from heed.teacher import load_model, AnswerCollator, model_inputs
from heed.data import synth_splits
from heed.train import load_config
from heed.recipe import WORLD_V2
from heed.evaluate import evaluate
from heed.premise import mixer_ablation
from heed.hybrid import resolve_layout
from heed.synth import make_synth
path, n_acc, n_gate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
model, proc = load_model(path)
_, replaced = resolve_layout(model.config.text_config.num_hidden_layers)
out = {}
for S in (128, 256, 384):
    data = {**WORLD_V2, "image_size": S, "n_train": 0, "n_val": 0, "n_test": n_acc}
    test = synth_splits(load_config({"job": "sft", "data": data}))["test"]
    r = evaluate(model, proc, test, limit=n_acc, batch_size=32)
    acc = {k: round(100 * v, 1) for k, v in r.by_category()["exact_match"].items()}
    knobs = {k: v for k, v in WORLD_V2.items()} | {"image_size": S}
    probe = make_synth(0, 0, n_gate, seed=1, **knobs)["test"]
    coll = AnswerCollator(proc); errs, vis = [], []
    for s in range(0, len(probe), 16):
        batch = model_inputs(coll([probe[i] for i in range(s, min(s + 16, len(probe)))]))
        res = mixer_ablation(model, batch, replaced); keep = res["valid"]
        errs.append(res["null_error"][keep]); vis.append(res["visual"][keep])
    e, v = torch.cat(errs), torch.cat(vis)
    out[S] = dict(accuracy=acc, gate1=round(float(e[v].mean() / e[~v].mean()), 3), visual_err=round(float(e[v].mean()), 3), text_err=round(float(e[~v].mean()), 3))
    print(S, json.dumps(out[S]), flush=True)
