"""heed.lmms: the lmms-eval adapter driven the way lmms-eval's evaluator drives a model, on a tiny local model and tiny
local tasks. Uses lmms-eval's real `lmms`/`Instance`/`ModelRegistryV2` when importable, else the module's stand-ins
(lmms-eval is not installed in heed's venv; see nbs/13_lmms.ipynb). The tests marked `harness` need the real lmms-eval
and are skipped without it: `make lmms-test` runs this file in its own venv with lmms-eval 0.7.3 installed."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import datasets
import pytest
import torch

from heed.benchmarks import BENCHMARKS, Example, encode_examples, generate_replies, load_examples
from heed.testing import text_image, write_fixture
from heed.lmms import (LMMS_EVAL_AVAILABLE, HeedLMM, Instance, LMMBase, lmms_eval_manifest, local_task_name, loglikelihood_pairs,
                       parse_model_args, write_lmms_tasks)

datasets.disable_progress_bars()


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    from heed.teacher import build_toy_teacher, save_teacher
    d = tmp_path_factory.mktemp("lmms") / "teacher"
    t = build_toy_teacher(seed=0)
    save_teacher(t.model, t.processor, d)
    return d


@pytest.fixture(scope="module")
def student_dir(teacher_dir, tmp_path_factory):
    from heed.hybrid import hybridize
    from heed.teacher import load_teacher, save_teacher
    t = load_teacher(teacher_dir)
    d = tmp_path_factory.mktemp("lmms") / "student"
    save_teacher(hybridize(t.model), t.processor, d)
    return d


@pytest.fixture(scope="module")
def tiny_task():
    "A task as lmms-eval holds it: a DatasetDict per task in lm.task_dict, and the task's doc_to_* functions."
    docs = datasets.Dataset.from_dict(
        {"image": [text_image("STOP"), text_image("GO", (80, 48), seed=1), text_image("EXIT", seed=2)],
         "image_2": [None, text_image("2", seed=3), None],
         "question": ["What is written?", "Which word is on the sign?", "Read the text."],
         "answer": ["STOP", "GO", "EXIT"]},
        features=datasets.Features({"image": datasets.Image(), "image_2": datasets.Image(), "question": datasets.Value("string"),
                                    "answer": datasets.Value("string")}))
    return datasets.DatasetDict({"test": docs})


def to_visual(doc):
    return [im.convert("RGB") for im in (doc["image"], doc["image_2"]) if im is not None]


def to_text(doc):
    return doc["question"] + "\nAnswer the question using a single word or phrase."


def gen_request(task, split, doc_id, ctx, gen):
    "As ConfigurableTask.construct_requests builds a generate_until request."
    return Instance(request_type="generate_until", arguments=(ctx, dict(gen), to_visual, doc_id, task, split), idx=0,
                    metadata={"task": task, "doc_id": doc_id, "repeats": 1, "split": split})


def ll_request(task, split, doc_id, ctx, target):
    return Instance(request_type="loglikelihood", arguments=(ctx, target, to_visual, doc_id, task, split), idx=0,
                    metadata={"task": task, "doc_id": doc_id, "repeats": 1, "split": split})


def make_lm(model_dir, tiny_task, **args):
    batch_size = args.pop("batch_size", "1")  # lmms-eval passes its --batch_size (a string) in additional_config
    arg_string = ",".join(f"{k}={v}" for k, v in {"pretrained": model_dir, **args}.items())
    lm = HeedLMM.create_from_arg_string(arg_string, {"batch_size": batch_size, "max_batch_size": None, "device": "cpu"})
    lm.task_dict["tiny"] = tiny_task  # what lmms-eval's evaluator does before sending requests
    return lm


def test_it_is_an_lmms_model(teacher_dir, tiny_task):
    lm = make_lm(teacher_dir, tiny_task, max_new_tokens=5)
    assert isinstance(lm, LMMBase) and lm.is_simple and (lm.rank, lm.world_size) == (0, 1)
    assert lm.batch_size == 1 and lm.max_new_tokens == 5 and str(lm.device) == "cpu"
    if LMMS_EVAL_AVAILABLE:
        from lmms_eval.api.model import lmms
        assert isinstance(lm, lmms)


def test_unknown_model_args_are_refused(teacher_dir):
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['max_pixel'\]"):
        HeedLMM.create_from_arg_string(f"pretrained={teacher_dir},max_pixel=100")
    with pytest.raises(ValueError, match="batch_size='auto'"):
        HeedLMM.create_from_arg_string(f"pretrained={teacher_dir}", {"batch_size": "auto"})
    assert parse_model_args("a=1,b=x") == {"a": 1, "b": "x"}


@pytest.mark.parametrize("which", ["teacher", "student"])
def test_generate_until_matches_heed_eval_and_keeps_order(which, teacher_dir, student_dir, tiny_task):
    model_dir = teacher_dir if which == "teacher" else student_dir
    lm = make_lm(model_dir, tiny_task, batch_size=2)
    gen = {"max_new_tokens": 6, "temperature": 0, "do_sample": False}
    reqs = [gen_request("tiny", "test", i, to_text(tiny_task["test"][i]), gen) for i in (2, 0, 1)]  # out of order on purpose
    replies = lm.generate_until(reqs)
    assert len(replies) == 3 and all(isinstance(r, str) for r in replies)
    # the same prompts through heed eval's generation path, one by one: identical replies, in request order
    exs = [Example(str(i), to_visual(tiny_task["test"][i]), to_text(tiny_task["test"][i]), "", []) for i in (2, 0, 1)]
    ref = [generate_replies(lm.model, lm.processor, [e], max_new_tokens=6)[0] for e in exs]
    assert replies == ref
    assert lm.generate_until(reqs) == replies  # greedy: deterministic


def test_until_and_max_new_tokens(teacher_dir, tiny_task):
    lm = make_lm(teacher_dir, tiny_task)
    doc = tiny_task["test"][0]
    ctx = to_text(doc)
    ex = Example("0", to_visual(doc), ctx, "", [])
    ref = lambda n: generate_replies(lm.model, lm.processor, [ex], max_new_tokens=n)[0]
    full = lm.generate_until([gen_request("tiny", "test", 0, ctx, {"max_new_tokens": 12})])[0]
    short = lm.generate_until([gen_request("tiny", "test", 0, ctx, {"max_new_tokens": 3})])[0]
    assert (full, short) == (ref(12), ref(3)) and full.startswith(short) and len(short) < len(full)
    stop = full[len(full) // 2]
    cut = lm.generate_until([gen_request("tiny", "test", 0, ctx, {"max_new_tokens": 12, "until": [stop]})])[0]
    assert cut == full.split(stop)[0]
    default = lm.generate_until([gen_request("tiny", "test", 0, ctx, {})])[0]  # the task gives no budget: the max_new_tokens arg
    assert default == ref(lm.max_new_tokens)


def _reference_loglikelihood(lm, doc, ctx, cont):
    "Summed log p(continuation | prompt) from one unpadded forward pass over prompt + continuation."
    ex = Example("r", to_visual(doc), ctx, "", [])
    prompt = encode_examples(lm.processor, [ex])
    full = encode_examples(lm.processor, [ex], continuations=[cont])
    n = prompt["input_ids"].shape[1]
    full.pop("n_prompt")
    with torch.no_grad():
        logits = lm.model(**full).logits[0].double()
    ids = full["input_ids"][0]
    lp = torch.log_softmax(logits, -1)
    total = sum(float(lp[t - 1, ids[t]]) for t in range(n, len(ids)))
    greedy = all(int(lp[t - 1].argmax()) == int(ids[t]) for t in range(n, len(ids)))
    return total, greedy


def test_loglikelihood_against_a_direct_computation(teacher_dir, tiny_task):
    lm = make_lm(teacher_dir, tiny_task, batch_size=3)
    docs = tiny_task["test"]
    cases = [(0, "What is written?", " STOP"), (1, "", "GO"), (2, to_text(docs[2]), "a much longer continuation here")]
    reqs = [ll_request("tiny", "test", i, c, t) for i, c, t in cases]
    got = loglikelihood_pairs(lm.loglikelihood(reqs))  # one right-padded batch of three
    for (i, c, t), (loss, greedy) in zip(cases, got):
        ref_lp, ref_greedy = _reference_loglikelihood(lm, docs[i], c, t)
        assert loss == pytest.approx(-ref_lp, rel=1e-4, abs=1e-3) and greedy == ref_greedy  # a loss: the summed NLL
        assert loss > 0
    one_by_one = loglikelihood_pairs(make_lm(teacher_dir, tiny_task, batch_size=1).loglikelihood(reqs))
    for (a, ga), (b, gb) in zip(got, one_by_one):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-3) and ga == gb


def test_loglikelihood_greedy_flag_and_doc_to_target(teacher_dir, tiny_task):
    lm = make_lm(teacher_dir, tiny_task)
    ctx = to_text(tiny_task["test"][1])
    reply = lm.generate_until([gen_request("tiny", "test", 1, ctx, {"max_new_tokens": 4})])[0]
    ll = lambda target: loglikelihood_pairs(lm.loglikelihood([ll_request("tiny", "test", 1, ctx, target)]))[0]
    loss, greedy = ll(reply)
    assert greedy  # the model's own greedy reply is greedy (4 tokens, stopped by the budget, not by <|im_end|>)
    other = "".join("Z" if ch != "Z" else "Y" for ch in reply)
    loss2, greedy2 = ll(other)
    assert not greedy2 and loss2 > loss  # a loss: the less likely continuation costs more
    assert ll(lambda doc: doc["answer"])[0] == pytest.approx(ll("GO")[0])  # doc_to_target as a function
    assert ll("") == (0.0, True)


def test_requests_without_a_document_are_refused(teacher_dir, tiny_task):
    "acc_mutual_info's context-free requests: ('', choice), no doc_to_visual/doc_id/task/split."
    lm = make_lm(teacher_dir, tiny_task)
    bare = Instance("loglikelihood", ("", " STOP"), idx=0, metadata={"task": "tiny", "doc_id": 0, "repeats": 1, "split": "test"})
    with pytest.raises(NotImplementedError, match="acc_mutual_info"):
        lm.loglikelihood([ll_request("tiny", "test", 0, "q", "x"), bare])


def test_errors_name_the_request(teacher_dir, tiny_task):
    lm = make_lm(teacher_dir, tiny_task)
    with pytest.raises(KeyError, match="task 'other', doc 0"):
        lm.generate_until([gen_request("other", "test", 0, "q", {})])
    video = Instance("generate_until", ("q", {}, lambda doc: ["clip.mp4"], 0, "tiny", "test"), idx=0,
                     metadata={"task": "tiny", "doc_id": 0, "repeats": 1, "split": "test"})
    with pytest.raises(NotImplementedError, match="visual of type str"):
        lm.generate_until([video])
    with pytest.raises(NotImplementedError, match="multi-round"):
        lm.generate_until_multi_round([])


def test_a_benchmark_fixture_as_an_lmms_task_scored_by_heed(teacher_dir, tmp_path):
    "DocVQA's fixture served as lmms-eval serves docvqa_val (its doc_to_text), replies scored with the same ANLS scorer."
    write_fixture("docvqa_val", tmp_path)
    ds = datasets.load_dataset(str(tmp_path / "lmms-lab-encoder/DocVQA"), "DocVQA", cache_dir=str(tmp_path / "c"))
    lm = HeedLMM.create_from_arg_string(f"pretrained={teacher_dir},max_new_tokens=8", {"batch_size": 2, "device": "cpu"})
    lm.task_dict["docvqa_val"] = ds
    post = "\nAnswer the question using a single word or phrase."  # lmms-eval's default post_prompt for docvqa
    vis = lambda doc: [doc["image"].convert("RGB")]
    reqs = [Instance("generate_until", (doc["question"] + post, {"max_new_tokens": 32, "temperature": 0, "do_sample": False}, vis, i,
                                        "docvqa_val", "validation"), idx=0,
                     metadata={"task": "docvqa_val", "doc_id": i, "repeats": 1, "split": "validation"})
            for i, doc in enumerate(ds["validation"])]
    replies = lm.generate_until(reqs)
    exs = load_examples("docvqa_val", tmp_path, cache_dir=tmp_path / "c")
    assert [e.prompt for e in exs] == [r.args[0] for r in reqs]  # heed eval and the harness send the same text
    scores = [BENCHMARKS["docvqa_val"].score(p, e)[0] for p, e in zip(replies, exs)]
    assert all(0.0 <= s <= 1.0 for s in scores) and len(scores) == 3


def test_entry_point_manifest(teacher_dir):
    if not LMMS_EVAL_AVAILABLE:
        with pytest.raises(ImportError, match="lmms-eval is not importable here"):
            lmms_eval_manifest()
        pytest.skip("lmms-eval not importable: its registry cannot be exercised (the manifest's import error is checked)")
    from lmms_eval.models.registry_v2 import ModelRegistryV2
    reg = ModelRegistryV2()
    for m in reg._coerce_payload_to_manifests(lmms_eval_manifest):  # exactly what load_entrypoint_manifests does with ep.load()
        reg.register_manifest(m)
    assert reg.get_model_class("heed") is HeedLMM  # resolves, imports and validates (subclass of lmms, is_simple)


def test_real_lmms_eval_evaluator_on_a_tiny_task(teacher_dir, tmp_path):
    "lmms-eval's own simple_evaluate, where the harness is importable (not in heed's venv: skipped there)."
    try:
        from lmms_eval.evaluator import simple_evaluate
        from lmms_eval.tasks import TaskManager
    except Exception as e:  # ImportError, or a broken install (e.g. torchvision)
        pytest.skip(f"lmms-eval's evaluator is not importable here ({type(e).__name__})")
    import importlib.metadata as md
    snap = write_fixture("docvqa_val", tmp_path / "data")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "heed_tiny.yaml").write_text(
        f"task: heed_tiny\ndataset_path: {snap}\ndataset_name: DocVQA\ntest_split: validation\noutput_type: generate_until\n"
        "doc_to_visual: !function utils.doc_to_visual\ndoc_to_text: !function utils.doc_to_text\ndoc_to_target: answers\n"
        "generation_kwargs:\n  max_new_tokens: 6\n  temperature: 0\n  do_sample: false\n"
        "metric_list:\n  - metric: anls\n    aggregation: mean\n    higher_is_better: true\n")
    (tasks / "utils.py").write_text("def doc_to_visual(doc):\n    return [doc['image'].convert('RGB')]\n\n"
                                    "def doc_to_text(doc, lmms_eval_specific_kwargs=None):\n"
                                    "    return doc['question'] + '\\nAnswer the question using a single word or phrase.'\n")
    registered = any(ep.name == "heed" for ep in md.entry_points(group="lmms_eval.models"))
    model = "heed" if registered else HeedLMM(pretrained=str(teacher_dir), device="cpu", batch_size=2)
    res = simple_evaluate(model=model, model_args=f"pretrained={teacher_dir}" if registered else None, tasks=["heed_tiny"],
                          task_manager=TaskManager(include_path=str(tasks)), batch_size=2, device="cpu", log_samples=True)
    assert 0.0 <= res["results"]["heed_tiny"]["anls,none"] <= 1.0
    assert len(res["samples"]["heed_tiny"]) == 3


# ---- the real harness (skipped without lmms-eval; `make lmms-test` runs them) ----------------------------------------
ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "data" / "teacher-v1" / "model"  # world v1's toy teacher: it reads the 128-px HEED-Synth colours below right
harness = pytest.mark.skipif(not LMMS_EVAL_AVAILABLE, reason="needs lmms-eval (make lmms-test runs these in .venv-lmms)")
MC_TASK = "heed_colour_mc"


def write_colour_mc_task(root: Path, n: int = 4) -> Path:
    """A multiple-choice task on HEED-Synth colour questions: the eight colour names are the choices, the drawn one the
    target. Returns the task folder (for --include_path)."""
    from heed.synth import COLOURS, SynthConfig, make_example
    rng = np.random.default_rng(0)
    exs = [make_example(rng, SynthConfig(shapes=(1, 2)), "colour") for _ in range(n)]
    names = list(COLOURS)
    ds = datasets.Dataset.from_dict({"image": [e["image"] for e in exs], "question": [e["question"] for e in exs],
                                     "label": [names.index(e["answer"]) for e in exs]},
                                    features=datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                                                "label": datasets.Value("int64")}))
    datasets.DatasetDict({"test": ds}).save_to_disk(str(root / "mc_data"))
    tasks = root / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    # target_delimiter "": the choice is the whole reply, as heed's chat turn has it (lmms-eval's default puts a space first)
    (tasks / f"{MC_TASK}.yaml").write_text(
        f"task: {MC_TASK}\ndataset_path: {root / 'mc_data'}\ndataset_kwargs:\n  load_from_disk: true\ntest_split: test\n"
        f"output_type: multiple_choice\ndoc_to_visual: !function mc_utils.doc_to_visual\ndoc_to_text: question\n"
        f"doc_to_choice: {json.dumps(names)}\ndoc_to_target: label\ntarget_delimiter: ''\n"
        "metric_list:\n" + "".join(f"  - metric: {m}\n    aggregation: mean\n    higher_is_better: true\n"
                                   for m in ("acc", "acc_norm", "exact_match")))
    (tasks / "mc_utils.py").write_text("def doc_to_visual(doc):\n    return [doc['image'].convert('RGB')]\n")
    return tasks


def _task(tasks_dir, name):
    from lmms_eval.tasks import TaskManager, get_task_dict
    return get_task_dict([name], TaskManager(include_path=str(tasks_dir), include_defaults=False))[name]


@harness
def test_multiple_choice_scored_by_lmms_eval_process_results(tmp_path):
    "The adapter's results through what lmms-eval's evaluator does with them: unwrap, then the task's own process_results."
    from lmms_eval.api.instance import unwrap_generation_output
    task = _task(write_colour_mc_task(tmp_path), MC_TASK)
    lm = HeedLMM.create_from_arg_string(f"pretrained={TEACHER}", {"batch_size": 4, "device": "cpu"})
    lm.task_dict[MC_TASK] = task.dataset
    choices = task.doc_to_choice(task.dataset["test"][0])
    for i, doc in enumerate(task.dataset["test"]):
        reqs = task.construct_requests(doc_id=i, ctx=task.doc_to_text(doc), metadata={"task": MC_TASK, "doc_id": i, "repeats": 1,
                                                                                      "split": "test"})
        raw = lm.loglikelihood(reqs)
        resps = [unwrap_generation_output(r)[0] for r in raw]  # what the evaluator stores in Instance.resps
        pairs = loglikelihood_pairs(raw)
        assert resps == pairs  # the pair reaches the scorer intact (a bare tuple would arrive as its str())
        losses = np.array([loss for loss, _ in pairs])
        gold = doc["label"]
        assert losses.argmin() == gold  # the constructed premise: the drawn colour is the most likely choice
        got = task.process_results(doc, resps)
        assert got["acc"] == 1.0
        assert got["acc_norm"] == float(np.argmin(losses / np.array([len(c) for c in choices])) == gold)  # per character
        assert got["exact_match"] == int(pairs[gold][1])
        # the sign is what matters: log-probabilities (lm-evaluation-harness's convention) make lmms-eval pick another choice
        assert task.process_results(doc, [(-loss, g) for loss, g in pairs])["acc"] == 0.0


@harness
def test_response_cache_is_refused_for_loglikelihood(tmp_path):
    from lmms_eval.evaluator import simple_evaluate
    tasks = write_colour_mc_task(tmp_path, n=1)
    from lmms_eval.tasks import TaskManager
    lm = HeedLMM(pretrained=str(TEACHER), device="cpu", batch_size=2)
    with pytest.raises(RuntimeError, match="--use_cache"):
        simple_evaluate(model=lm, tasks=[MC_TASK], task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
                        batch_size=2, device="cpu", use_cache=str(tmp_path / "cache"))


# the benchmarks whose lmms-eval scorer is heed's rule (free-text answers); for the multiple-choice ones the option
# extraction differs (see heed.benchmarks' notes), so only their documents and prompts are compared
SAME_SCORER = {"ocrbench": lambda r: r["ocrbench_accuracy"]["score"], "docvqa_val": lambda r: r["anls"],
               "infovqa_val": lambda r: r["anls"], "chartqa": lambda r: r["relaxed_overall"],
               "textvqa_val": lambda r: r["exact_match"]}
LAYOUT = {"chartqa": "disk", "ai2d": "parquet"}  # the rest as hub snapshots


@pytest.fixture(scope="module")
def local_copies(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    for n in BENCHMARKS: write_fixture(n, root / "data", LAYOUT.get(n, "snapshot"))
    return root


def _optional_task_deps_missing(name, err) -> bool:
    "lmms-eval's ocrbench_v2 task imports packages lmms-eval itself does not install (jieba, …)."
    return name == "ocrbench_v2" and isinstance(err, ModuleNotFoundError)


@harness
def test_lmms_eval_reads_the_local_copies_and_scores_like_heed_eval(local_copies):
    "Every `heed lmms-tasks` file loads the copy heed eval reads: same documents and prompts; same scores where the rules coincide."
    from heed.evaluate import levenshtein
    written = write_lmms_tasks(local_copies / "data", local_copies / "tasks")
    assert all(isinstance(p, Path) for p in written.values()), written
    loaded = []
    for n, b in BENCHMARKS.items():
        try: task = _task(local_copies / "tasks", local_task_name(n))
        except Exception as e:
            if _optional_task_deps_missing(n, e.__cause__ or e): continue
            raise
        docs = task.dataset[task.config.test_split]
        exs = load_examples(n, local_copies / "data", cache_dir=local_copies / "cache")
        assert len(docs) == len(exs) > 0
        assert [task.doc_to_text(d) for d in docs] == [e.prompt for e in exs], n
        assert [len(task.doc_to_visual(d)) for d in docs] == [len(e.images) for e in exs], n
        loaded.append(n)
        if n not in SAME_SCORER: continue
        preds = lambda a: [a, a.upper(), f"  {a} ", a[:-1] + ("x" if a[-1] != "x" else "y"), "zzz qqq", ""]
        lm_scores, heed_scores = [], []
        for d, ex in zip(docs, exs):
            for p in preds(ex.answers[0]):
                got = float(SAME_SCORER[n](task.process_results(d, [p])))
                want = b.score(p, ex)[0]
                q = " ".join(p.strip().lower().split())
                nl = min(levenshtein(q, " ".join(a.strip().lower().split())) / max(len(q), len(a), 1) for a in ex.answers)
                if b.scorer == "heed.evaluate.anls" and nl == 0.5:  # the one documented departure: lmms-eval keeps exactly 0.5
                    assert (got, want) == (0.5, 0.0), (n, p)
                    continue
                assert got == pytest.approx(want), (n, p, ex.answers)
                lm_scores.append(got); heed_scores.append(want)
        assert np.mean(lm_scores) == pytest.approx(np.mean(heed_scores))
    assert set(BENCHMARKS) - set(loaded) <= {"ocrbench_v2"}, loaded


def _samples(out_dir: Path, task: str) -> list:
    files = sorted(out_dir.rglob(f"*_samples_{task}.jsonl"))
    assert len(files) == 1, f"expected one sample log for {task} under {out_dir}, found {files}"
    return [json.loads(line) for line in files[0].read_text().splitlines() if line.strip()]


@harness
def test_lmms_eval_command_line_offline(tmp_path):
    """`lmms-eval --model heed` as a user runs it, offline: DocVQA's fixture through its `heed lmms-tasks` file (generate_until)
    and the colour task (multiple_choice). The logged samples are checked, not the exit code."""
    from heed.benchmarks import evaluate_suite, model_predictor
    from heed.teacher import load_model
    write_fixture("docvqa_val", tmp_path / "data")
    tasks = write_colour_mc_task(tmp_path)
    subprocess.run([sys.executable, "-m", "heed.cli", "lmms-tasks", "--data-dir", str(tmp_path / "data"), "--out", str(tasks),
                    "--only", "docvqa_val"], check=True, capture_output=True, text=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    lmms_eval = Path(sys.executable).with_name("lmms-eval")
    run = subprocess.run([str(lmms_eval), "--model", "heed", "--model_args", f"pretrained={TEACHER},device=cpu",
                          "--tasks", f"docvqa_val_local,{MC_TASK}", "--include_path", str(tasks), "--batch_size", "2",
                          "--log_samples", "--output_path", str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=900)
    log = run.stdout + run.stderr
    assert run.returncode == 0 and "| ERROR" not in log and "Traceback" not in log, log[-4000:]
    # generate_until: every document, the replies heed eval gives on the same local copy, the same ANLS
    gen = sorted(_samples(tmp_path / "out", "docvqa_val_local"), key=lambda s: s["doc_id"])
    model, processor = load_model(TEACHER, device="cpu")
    res = evaluate_suite(model_predictor(model, processor), tmp_path / "heed_eval", only=["docvqa_val"], data_dir=tmp_path / "data",
                         progress=False, cache_dir=tmp_path / "cache")
    recs = [json.loads(line) for line in (tmp_path / "heed_eval" / "docvqa_val.jsonl").read_text().splitlines()]
    assert [s["filtered_resps"][0] if isinstance(s["filtered_resps"], list) else s["filtered_resps"] for s in gen] == \
        [r["prediction"] for r in recs]
    assert np.mean([s["anls"] for s in gen]) == pytest.approx(res.tasks["docvqa_val"]["score"])
    # multiple_choice: the teacher's answer (the drawn colour) scored right in every document
    mc = _samples(tmp_path / "out", MC_TASK)
    assert len(mc) == 4 and all(s["acc"] == 1.0 for s in mc), [(s["target"], s["filtered_resps"]) for s in mc]
    for s in mc:  # the logged losses: eight choices, the smallest at the target
        losses = [float(p[0]) for p in s["filtered_resps"]]
        assert len(losses) == 8 and int(np.argmin(losses)) == int(s["target"])
    results = json.loads(next((tmp_path / "out").rglob("*_results.json")).read_text())["results"]
    assert results[MC_TASK]["acc,none"] == 1.0
