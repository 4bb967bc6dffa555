"""Distilling your own checkpoint on your own data (issue 16), on a CPU, offline: a Qwen3-VL-shaped checkpoint folder and
small datasets in each format, built here; align and distill for 2 steps on each; resume; skipped examples; the README's
commands; 2-process DDP (gloo) and FSDP2 on CPU."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from heed.testing import write_llava_dataset, write_messages_dataset, write_tiny_checkpoint
from heed.train import load_config, train

BIN = Path(sys.executable).parent
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore", HF_HUB_OFFLINE="1")
FAST = dict(steps=2, batch_size=4, warmup_steps=1, log_every=1, save_every=2, heldout=2, eval_examples=2)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    "A checkpoint folder and one small dataset per format."
    t = tmp_path_factory.mktemp("own")
    ck = write_tiny_checkpoint(t / "Qwen3-VL-tiny")
    sets = {"llava-json": write_llava_dataset(t / "llava", n=24, broken=1),
            "llava-jsonl": write_llava_dataset(t / "llava-l", n=24, jsonl=True),
            "messages-parquet": write_messages_dataset(t / "mp", n=24, layout="parquet", broken=1),
            "messages-disk": write_messages_dataset(t / "md", n=24, layout="disk"),
            "messages-jsonl": write_messages_dataset(t / "mj", n=24, layout="jsonl")}
    return t, ck, sets


def _records(run: Path) -> list[dict]:
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("fmt", ["llava-json", "llava-jsonl", "messages-parquet", "messages-disk", "messages-jsonl"])
def test_align_then_distill_on_each_format(world, fmt):
    t, ck, sets = world
    a = train(load_config({**FAST, "job": "align", "teacher": str(ck), "dataset": str(sets[fmt]), "output_dir": str(t / fmt / "a")}),
              progress=False)
    assert a["finished"] and "align" in a["eval"] and a["eval"]["n"] == 2, a
    d = train(load_config({**FAST, "job": "distill", "teacher": str(ck), "init": str(t / fmt / "a" / "model"), "max_tokens": 256,
                           "dataset": str(sets[fmt]), "output_dir": str(t / fmt / "d")}), progress=False)
    assert d["finished"] and {"kd", "align", "exact_match"} <= set(d["eval"]), d
    recs = [r for r in _records(t / fmt / "d") if "loss" in r]
    assert [r["step"] for r in recs] == [1, 2] and all(r["kd"] == r["kd"] and r["align"] == r["align"] for r in recs)
    model = t / fmt / "d" / "model"
    assert json.loads((model / "config.json").read_text())["text_config"]["mamba_layers"] == [0, 1, 2]
    assert (model / "chat_template.jinja").read_text().startswith("{%- for message in messages")  # the template travels with it
    skipped = (t / fmt / "d" / "skipped.jsonl")
    if "broken" in json.dumps([json.loads(l) for l in skipped.read_text().splitlines()] if skipped.exists() else []):
        assert d["skipped"] >= 1


def test_resume_is_exact_and_workers_do_not_change_the_curve(world):
    t, ck, sets = world
    base = {**FAST, "job": "align", "teacher": str(ck), "dataset": str(sets["messages-parquet"]), "steps": 4, "max_tokens": 200,
            "eval_examples": 0}
    curve = lambda run: [(r["step"], r["loss"]) for r in _records(run) if "loss" in r]
    train(load_config({**base, "output_dir": str(t / "r-full")}), progress=False)
    train(load_config({**base, "output_dir": str(t / "r-part")}), max_steps=2, progress=False)
    train(load_config({**base, "output_dir": str(t / "r-part"), "resume": True}), progress=False)
    train(load_config({**base, "output_dir": str(t / "r-work"), "num_workers": 2}), progress=False)
    assert curve(t / "r-part") == curve(t / "r-full") == curve(t / "r-work")
    # the broken row is skipped, counted and named, once per time it is drawn, and the run goes on
    skipped = [json.loads(l) for l in (t / "r-full" / "skipped.jsonl").read_text().splitlines()]
    assert skipped and {s["id"] for s in skipped} == {"msg-24"} and "image could not be read" in skipped[0]["reason"]
    assert json.loads((t / "r-full" / "result.json").read_text())["skipped"] == len(skipped)


def test_streamed_data_resumes_exactly_with_workers(world):
    t, ck, sets = world
    stream = {"path": str(sets["llava-jsonl"]), "streaming": True}
    base = {**FAST, "job": "align", "teacher": str(ck), "dataset": stream, "steps": 4, "eval_examples": 0}
    curve = lambda run: [(r["step"], r["loss"]) for r in _records(run) if "loss" in r]
    train(load_config({**base, "output_dir": str(t / "s-full")}), progress=False)
    train(load_config({**base, "output_dir": str(t / "s-part"), "num_workers": 2}), max_steps=2, progress=False)
    train(load_config({**base, "output_dir": str(t / "s-part"), "num_workers": 2, "resume": True}), progress=False)
    assert curve(t / "s-part") == curve(t / "s-full") and len(curve(t / "s-full")) == 4


def test_an_evaluator_that_fails_does_not_cost_the_model(world):
    from heed.train import build_job
    t, ck, sets = world
    def broken_eval(cfg, device):
        job = build_job(cfg, device)
        job.evaluate = lambda m: 1 / 0
        return job
    cfg = load_config({**FAST, "job": "align", "teacher": str(ck), "dataset": str(sets["llava-json"]), "output_dir": str(t / "ev")})
    res = train(cfg, job_builder=broken_eval, progress=False)
    assert res["finished"] and res["eval_error"].startswith("ZeroDivisionError")
    assert (t / "ev" / "model" / "config.json").is_file()


def test_mixture_of_sources_with_weights_and_heed_synth(world):
    t, ck, sets = world
    mix = [{"path": str(sets["llava-json"]), "weight": 3}, {"path": str(sets["messages-jsonl"]), "weight": 1},
           {"path": "heed-synth", "weight": 1}]
    cfg = load_config({**FAST, "job": "align", "teacher": str(ck), "dataset": mix, "output_dir": str(t / "mix"),
                       "data": {"n_train": 24, "n_val": 4, "n_test": 4}})
    r = train(cfg, progress=False)
    assert r["finished"] and "exact_match" in r["eval"] and "aggregate" not in r["eval"]  # HEED-Synth categories only when all-synth
    assert cfg.dataset == mix  # kept as written (and fingerprinted with the run)
    only = load_config({**FAST, "job": "align", "teacher": str(ck), "dataset": "heed-synth", "output_dir": str(t / "syn"),
                        "data": {"n_train": 24, "n_val": 4, "n_test": 4}})
    assert "aggregate" in train(only, progress=False)["eval"]


def test_the_mask_covers_exactly_the_assistant_tokens(world):
    "On the BPE tokenizer and Qwen3-VL-style template of a hub-shaped checkpoint: every assistant token and its <|im_end|>, nothing else."
    from heed.data import load_data
    from heed.teacher import VLProcessor
    t, ck, sets = world
    proc = VLProcessor.from_pretrained(ck)
    data = load_data(str(sets["llava-json"]), heldout=0)
    im_end = proc.im_end_id
    for i in range(8):
        ex = data.train.parts[0][i]
        e = proc.encode_conversation(ex["messages"], ex["images"], ex["id"])
        # reference: render each assistant body separately and find it in the token stream by position of its header
        want = []
        for m in ex["messages"]:
            if m["role"] == "assistant":
                body = "".join(p["text"] for p in m["content"])
                want += proc.tokenizer(body, add_special_tokens=False).input_ids + [im_end]
        got = [tok for tok, lab in zip(e.input_ids, e.labels) if lab != -100]
        assert got == want, (ex["id"], proc.tokenizer.decode(got))
        assert all(lab in (-100, tok) for tok, lab in zip(e.input_ids, e.labels))


def test_transformers_processor_gives_the_same_ids(world):
    "Where transformers' Qwen3VLProcessor can be built (it needs torchvision), its input ids equal ours."
    try:
        import torchvision  # noqa: F401
        from transformers import Qwen3VLProcessor  # noqa: F401
    except Exception as e:
        pytest.skip(f"transformers' Qwen3VLProcessor cannot be built here: torchvision does not import ({type(e).__name__}: {e})")
    from PIL import Image
    from transformers import AutoProcessor
    from heed.teacher import VLProcessor
    t, ck, _ = world
    theirs, ours = AutoProcessor.from_pretrained(ck, local_files_only=True), VLProcessor.from_pretrained(ck)
    msgs = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is written?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "TOTAL"}]},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "And here?"}]}]
    imgs = [Image.new("RGB", (96, 64), "white"), Image.new("RGB", (40, 200), "red")]
    text = theirs.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    ref = theirs(text=[text], images=imgs, return_tensors="pt")
    e = ours.encode_conversation(msgs, imgs, "cmp", add_generation_prompt=True)
    assert ref["input_ids"][0].tolist() == e.input_ids
    assert torch.equal(ref["image_grid_thw"], e.image_grid_thw) and torch.allclose(ref["pixel_values"], e.pixel_values)


@pytest.mark.slow
def test_readme_commands_from_a_shell(world, tmp_path):
    "The README's 'Distil your own' walk-through: data inspect, plan, align, distill — as a new user types them."
    t, ck, sets = world
    heed = str(BIN / "heed")
    run = lambda *a: subprocess.run([heed, *a], capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=900)
    r = run("data", "inspect", "align-smoke", f"teacher={ck}", f"dataset={sets['llava-json']}", "--n", "2", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    recs = [json.loads(l) for l in r.stdout.splitlines()]
    assert len(recs) == 2 and all(set(x) == {"text", "loss_text", "image_tokens"} for x in recs)
    r = run("plan", "align-smoke", f"teacher={ck}", "max_tokens=1024", "--gpus", "8", "--gpu-mem", "80")
    assert r.returncode == 0 and "FITS" in r.stdout, r.stdout + r.stderr
    common = [f"teacher={ck}", f"dataset={sets['messages-parquet']}", "steps=2", "heldout=2", "eval_examples=2", "max_tokens=300"]
    r = run("train", "align-smoke", *common, f"output_dir={tmp_path}/align")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run("train", "distill-smoke", *common, f"init={tmp_path}/align/model", f"output_dir={tmp_path}/distill")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "distill" / "result.json").read_text())["finished"]


@pytest.mark.slow
def test_two_process_ddp_distill_on_your_data(world, tmp_path):
    t, ck, sets = world
    out = tmp_path / "ddp"
    cmd = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "heed.cli", "train", "align-smoke", f"teacher={ck}", f"dataset={sets['messages-parquet']}",
           f"output_dir={out}", "steps=3", "batch_size=4", "heldout=2", "eval_examples=2", "max_tokens=150", "num_workers=1"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((out / "result.json").read_text())
    assert res["finished"] and res["steps_done"] == 3
    assert sorted(p.name for p in (out / "checkpoint").glob("random_states_*")) == ["random_states_0.pkl", "random_states_1.pkl"]


FSDP_SCRIPT = r'''
import json, os, sys, torch, torch.distributed as dist
from heed.align import distillation_losses
from heed.data import ConversationEncoder, load_data
from heed.hybrid import hybridize
from heed.teacher import load_model
from heed.train import shard_frozen
from torch.distributed.fsdp import fully_shard
dist.init_process_group("gloo")
rank = dist.get_rank()
ck, data_path, out = sys.argv[1:4]
teacher, proc = load_model(ck)
torch.manual_seed(0)
student = hybridize(teacher)
teacher.requires_grad_(False)
data = load_data(data_path, heldout=0)
items, _ = ConversationEncoder(proc)([data.train[i] for i in range(4)])
batch = proc.collate(items[2 * rank: 2 * rank + 2])
inputs = {k: v for k, v in batch.items() if k != "labels"}
ref = distillation_losses(student, teacher, inputs, batch["labels"]).terms   # unsharded, this rank's batch
shard_frozen(teacher)
for layer in student.model.language_model.layers: fully_shard(layer)
fully_shard(student)
opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-4)
losses = []
for step in range(2):
    terms = distillation_losses(student, teacher, inputs, batch["labels"]).terms
    sum(terms.values()).backward(); opt.step(); opt.zero_grad()
    losses.append({k: float(v) for k, v in terms.items()})
dist.barrier()
if rank == 0: json.dump(dict(ref={k: float(v) for k, v in ref.items()}, losses=losses), open(out, "w"))
dist.barrier()
dist.destroy_process_group()
'''


@pytest.mark.slow
def test_fsdp2_on_cpu_teacher_sharded_beside_the_student(world, tmp_path):
    "FSDP2 (fully_shard) with gloo on CPU: the sharded teacher and student give the unsharded losses, and two steps train."
    t, ck, sets = world
    script = tmp_path / "fsdp.py"
    script.write_text(FSDP_SCRIPT)
    out = tmp_path / "fsdp.json"
    r = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node", "2", str(script), str(ck), str(sets["messages-disk"]), str(out)],
                       capture_output=True, text=True, env=ENV, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    for k, v in res["ref"].items(): assert abs(res["losses"][0][k] - v) <= 1e-4 * max(1.0, abs(v)), (k, res)
    assert res["losses"][1]["align"] != res["losses"][0]["align"]  # the optimizer step moved the sharded student

