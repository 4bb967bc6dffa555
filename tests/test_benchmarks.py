"""heed.benchmarks: every registry entry loaded from fixtures shaped like the real data (three local layouts), its prompt
quirks, its scorer on known replies, offline failures that are fast, resumable logs, and `heed eval` end to end on a tiny
local teacher and its hybrid student."""
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest

from heed.benchmarks import (BENCHMARKS, SUITES, BenchmarkUnavailable, Example, compare_runs, evaluate_suite, how_to_get,
                             load_benchmark, load_examples, read_log, resolve_names, run_benchmark, score_records)
from heed.testing import write_fixture

datasets.disable_progress_bars()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    "Every benchmark's fixture in the hub-snapshot layout, under one DIR (as `heed eval --data-dir DIR` expects)."
    d = tmp_path_factory.mktemp("bench")
    for name in BENCHMARKS: write_fixture(name, d / "data")
    return d


def _load(name, data, **kw):
    return load_examples(name, data / "data", cache_dir=data / "cache", **kw)


# --- registry -----------------------------------------------------------------------------------------------------

def test_registry_groups_and_fields():
    assert len(BENCHMARKS) == 11
    assert {b.benchmark for b in BENCHMARKS.values()} == {"ocrbench", "ocrbench_v2", "docvqa_val", "chartqa", "textvqa_val",
                                                           "infovqa_val", "ai2d", "mmstar", "mmbench_en_dev", "mmmu_pro"}
    assert [BENCHMARKS[n].group for n in SUITES["ocr"]] == ["ocr"] * 6
    assert len({BENCHMARKS[n].benchmark for n in SUITES["scene"]}) == 4
    for b in BENCHMARKS.values():
        assert b.dataset.count("/") == 1 and b.split and b.prompt and b.scorer.startswith("heed.")
        assert b.revision is None and "none pinned" in b.revision_note  # neither harness pins one: said, not invented
        assert len(b.vlmevalkit) == 2 and len(b.vlmevalkit[1]) == 32
        assert b.max_new_tokens > 0


def test_resolve_names():
    assert resolve_names("ocr") == SUITES["ocr"]
    assert resolve_names("all", ["mmmu_pro"]) == ["mmmu_pro_standard", "mmmu_pro_vision"]
    with pytest.raises(ValueError, match="unknown benchmark 'mmlu'"): resolve_names("all", ["mmlu"])
    with pytest.raises(ValueError, match="suite 'docs'"): resolve_names("docs")


# --- loaders ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_three_layouts_load_the_same_examples(name, tmp_path):
    got = {}
    for layout in ("snapshot", "disk", "parquet"):
        root = tmp_path / layout
        write_fixture(name, root, layout=layout)
        exs = load_examples(name, root, cache_dir=tmp_path / "cache")
        got[layout] = [(e.id, e.prompt, e.answers, e.options, e.category, e.meta, [im.size for im in e.images]) for e in exs]
    assert got["snapshot"] == got["disk"] == got["parquet"]
    assert len(got["snapshot"]) >= 2
    assert all(len(x[6]) >= 1 for x in got["snapshot"])  # every item has its image(s)


def test_real_column_types_survive_the_round_trip(data):
    ds = load_benchmark("mmmu_pro_standard", data / "data", cache_dir=data / "cache")
    assert isinstance(ds.features["image_1"], datasets.Image) and ds.features["options"].dtype == "string"
    assert ds[0]["image_2"] is None  # unused image slots are null, as on the hub
    ds = load_benchmark("docvqa_val", data / "data", cache_dir=data / "cache")
    assert ds.features["answers"].feature.dtype == "string"


def test_limit_and_unique_ids(data, tmp_path):
    assert [e.id for e in _load("chartqa", data, limit=2)] == ["0", "1"]
    write_fixture("ai2d", tmp_path, layout="disk")
    dd = datasets.load_from_disk(str(tmp_path / "ai2d"))
    dup = datasets.concatenate_datasets([dd["test"], dd["test"]])
    datasets.DatasetDict({"test": dup}).save_to_disk(str(tmp_path / "dup" / "ai2d"))
    assert len(load_examples("ai2d", tmp_path / "dup", cache_dir=tmp_path / "c")) == 4  # ai2d ids are row numbers
    mmstar = tmp_path / "m"
    write_fixture("mmstar", mmstar, layout="disk")
    d = datasets.load_from_disk(str(mmstar / "mmstar"))
    datasets.DatasetDict({"val": datasets.concatenate_datasets([d["val"], d["val"]])}).save_to_disk(str(tmp_path / "m2" / "mmstar"))
    with pytest.raises(ValueError, match="MMStar: example id '0' appears more than once"):
        load_examples("mmstar", tmp_path / "m2", cache_dir=tmp_path / "c")


def test_missing_columns_are_named(tmp_path):
    write_fixture("chartqa", tmp_path, layout="parquet")
    os.replace(tmp_path / "chartqa.parquet", tmp_path / "docvqa_val.parquet")
    with pytest.raises(ValueError, match=r"DocVQA \(val\).*columns \['questionId', 'answers'\] are missing"):
        load_benchmark("docvqa_val", tmp_path, cache_dir=tmp_path / "c")


def test_missing_local_copy_says_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(BenchmarkUnavailable) as e:
        load_benchmark("mmbench_en_dev", tmp_path)
    msg = str(e.value)
    for part in ("MMBench (en dev)", "'lmms-lab-encoder/MMBench'", "config 'en'", "split 'dev'", str(tmp_path / "mmbench_en_dev"),
                 "hf download lmms-lab-encoder/MMBench --repo-type dataset", "HF_HUB_OFFLINE=1"):
        assert part in msg, part
    pinned = dataclasses.replace(BENCHMARKS["chartqa"], revision="0123abcd")
    assert "--revision 0123abcd" in how_to_get(pinned)


def test_unreachable_hub_fails_within_the_probe_timeout(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://10.255.255.1:81")  # non-routable: a connect that would hang
    t = time.perf_counter()
    with pytest.raises(BenchmarkUnavailable, match=r"ChartQA \(test\).*not reachable from here \(no answer from it; waited at most 1 s\)"):
        load_benchmark("chartqa", probe_timeout=1.0)
    assert time.perf_counter() - t < 3.0


def test_a_hanging_hub_costs_only_the_probe_timeout(monkeypatch):
    import huggingface_hub
    from heed.benchmarks import hub_reachable
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", lambda self, *a, **k: time.sleep(30))
    t = time.perf_counter()
    assert hub_reachable(timeout=0.5) is False
    assert time.perf_counter() - t < 1.5


@pytest.mark.parametrize("offline", ["1", None])
def test_hub_id_without_network_fails_fast_in_a_fresh_process(offline, tmp_path):
    "As a user runs it: HF_HUB_OFFLINE=1, or no flag on a machine without hub access. Never a hang."
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_ENDPOINT")}
    env.update(OMP_NUM_THREADS="1", HF_HOME=str(tmp_path / "hf"))
    if offline: env["HF_HUB_OFFLINE"] = offline
    else: env["HF_ENDPOINT"] = "http://10.255.255.1:81"  # stands in for "no route to the hub" on machines that have one
    code = "from heed.benchmarks import load_benchmark\nload_benchmark('textvqa_val', probe_timeout=2.0)"
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - t
    assert r.returncode != 0
    assert "BenchmarkUnavailable" in r.stderr and "lmms-lab-encoder/textvqa" in r.stderr and "hf download" in r.stderr, r.stderr[-2000:]
    assert elapsed < 60, elapsed  # imports dominate; the failure itself is immediate (offline) or ≤ 2 s (probe)


# --- prompts: the harness quirks ----------------------------------------------------------------------------------

def test_prompt_quirks(data):
    tv = _load("textvqa_val", data)
    assert tv[0].prompt == "What brand is this phone?\nAnswer the question using a single word or phrase."  # str.capitalize
    assert tv[0].question == "what brand is THIS phone?"
    ch = _load("chartqa", data)[0]
    assert ch.prompt.endswith("\nAnswer the question with a single word.") and ch.category == "human"
    oc = _load("ocrbench", data)
    assert oc[0].prompt == "what is written in the image?" and oc[1].meta == {"dataset": "HME100k"}
    ai = _load("ai2d", data)[0]
    assert ai.prompt == ("Which stage comes after the egg?\nA. adult\nB. larva\nC. pupa\nD. egg\n"
                         "Answer with the option's letter from the given choices directly.")
    assert ai.answers == ["B"]  # the index "1" as a letter
    ms = _load("mmstar", data)
    assert ms[2].prompt == ("Is the sky clear?\nOptions: A: yes, B: no\n"
                            "Answer with the option's letter from the given choices directly")  # yes/no line removed, no full stop
    assert ms[0].options == {"A": "a cat", "B": "a dog", "C": "a car", "D": "a tree"}
    mb = _load("mmbench_en_dev", data)
    assert mb[2].prompt == ("Read the label. Which sentence is true? There are several options:\nA. It is hot.\nB. It is cold.\n\n"
                            "Answer with the option's letter from the given choices directly.")  # lmms-eval's blank line
    assert mb[0].options == {"A": "red", "B": "blue", "C": "green"}  # 'nan' options dropped
    assert [e.meta["circular_index"] for e in mb] == [0, 0, 1]
    st = _load("mmmu_pro_standard", data)
    assert st[0].prompt.startswith("<image 1> What is the area of the shaded region?\nA. 4\nB. 8\n")
    assert st[0].prompt.endswith("\nJ. 3\n\nAnswer with the option letter from the given choices directly.")
    assert [len(e.images) for e in st] == [1, 2]  # the second names <image 1> and <image 2> in its options
    vi = _load("mmmu_pro_vision", data)
    assert vi[0].prompt == "Answer with the option letter from the given choices directly." and len(vi[0].options) == 10
    v2 = _load("ocrbench_v2", data)
    assert v2[1].meta == {"eval": "regression", "capability": "mathematical_calculation_en"}


# --- scorers on known replies -------------------------------------------------------------------------------------

KNOWN = {  # benchmark: (replies in fixture order, per-item scores, benchmark score, a sub-score check)
    "ocrbench": (["The text is centre", "x^{2}+1", "June 5 1980", "ＮＯＫＩＡ"], [1, 1, 0, 1], 0.75,
                 ("question_type", "Doc-oriented VQA", 0.0)),
    "ocrbench_v2": (["hello there", "I count 6", "B", "[10, 10, 50, 30]", "<table></table>"], [1, 0.75, 1, 0.5, None], 3.25 / 4,
                    ("capability", "mathematical_calculation_en", 0.75)),
    "docvqa_val": (["1963", "ITC Ltd", ""], [1, 1 - 4 / 11, 0], (2 - 4 / 11) / 3, None),
    "infovqa_val": (["34 %", "norway"], [0.75, 1], 0.875, None),
    "chartqa": (["43", "yes", "17.4", "Chile"], [1, 1, 1, 0], 0.75, ("split", "augmented", 0.5)),
    "textvqa_val": (["Nokla", "Stop."], [0.9, 1], 0.95, None),
    "ai2d": (["B", "The answer is A."], [1, 0], 0.5, None),
    "mmstar": (["C", "A", "yes"], [1, 0, 1], 2 / 3, ("category", "fine-grained perception", 0.0)),
    "mmbench_en_dev": (["A", "A", "B"], [1, 0, 1], 0.5, ("category", "ocr", 1.0)),
    "mmmu_pro_standard": (["16", "(B)"], [1, 1], 1.0, ("domain", "Art and Design", 1.0)),
    "mmmu_pro_vision": (["C", "Answer: J"], [1, 1], 1.0, ("subject", "History", 1.0)),
}


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_known_replies_score_known_values(name, data):
    replies, per_item, score, sub = KNOWN[name]
    b = BENCHMARKS[name]
    exs = _load(name, data)
    assert len(exs) == len(replies)
    recs = [dict(id=e.id, task=name, category=e.category, prediction=p, parsed=None, answers=e.answers,
                 score=b.score(p, e)[0], meta=e.meta) for e, p in zip(exs, replies)]
    got = [r["score"] for r in recs]
    assert [None if g is None else pytest.approx(g) for g in got] == [None if x is None else pytest.approx(x) for x in per_item]
    res = score_records(b, recs)
    assert res["score"] == pytest.approx(score)
    if sub:
        level, key, val = sub
        assert res["subscores"][level][key] == pytest.approx(val)
    if name == "ocrbench_v2": assert res["coverage"] == pytest.approx(0.8)


def test_mmbench_all_circular_copies_right_counts():
    b = BENCHMARKS["mmbench_en_dev"]
    mk = lambda i, ci, s: dict(id=str(i), score=s, category="c", meta={"circular_index": ci, "l2_category": "l"})
    assert score_records(b, [mk(0, 0, 1.0), mk(10**6, 0, 1.0), mk(1, 1, 1.0)])["score"] == 1.0
    assert score_records(b, [mk(0, 0, 1.0), mk(10**6, 0, 0.0), mk(1, 1, 1.0)])["score"] == 0.5


# --- runs: logs, resume, compare -----------------------------------------------------------------------------------

def _scripted(table):
    "predict() that replies from table[benchmark][example id], recording each batch's ids."
    calls = []
    def predict(examples, bench):
        calls.append([e.id for e in examples])
        return [table[bench.name][e.id] for e in examples]
    return predict, calls


def _known_table(data):
    return {n: {e.id: r for e, r in zip(_load(n, data), KNOWN[n][0])} for n in BENCHMARKS}


def test_run_is_logged_and_resumes_after_an_interruption(data, tmp_path):
    b = BENCHMARKS["chartqa"]
    exs = _load("chartqa", data)
    replies = KNOWN["chartqa"][0]
    calls = []
    def flaky(examples, bench):
        calls.append(len(examples))
        if len(calls) == 2: raise KeyboardInterrupt  # dies during the second batch
        return [replies[int(e.id)] for e in examples]
    log = tmp_path / "chartqa.jsonl"
    with pytest.raises(KeyboardInterrupt): run_benchmark(b, exs, flaky, log, batch_size=2, progress=False)
    assert len(read_log(log)) == 2
    with open(log, "a") as f: f.write('{"id": "2", "pred')  # a torn line from a killed write
    calls.clear()
    recs = run_benchmark(b, exs, lambda ex, bench: [replies[int(e.id)] for e in ex], log, batch_size=2, progress=False)
    assert score_records(b, recs)["score"] == pytest.approx(0.75)
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.strip().endswith("}")]
    assert sorted(r["id"] for r in lines) == ["0", "1", "2", "3"]
    assert {"id", "task", "category", "prediction", "parsed", "answers", "score", "meta"} <= set(lines[0])


def test_suite_resume_refuses_other_settings(data, tmp_path):
    pred, calls = _scripted(_known_table(data))
    kw = dict(only=["chartqa"], data_dir=data / "data", cache_dir=data / "cache", progress=False)
    evaluate_suite(pred, tmp_path / "run", settings={"model": "a", "max_new_tokens": None}, **kw)
    evaluate_suite(pred, tmp_path / "run", settings={"model": "a", "max_new_tokens": None}, **kw)
    assert sum(map(len, calls)) == 4  # the second run generated nothing
    with pytest.raises(ValueError, match="other settings.*'model': \\('a', 'b'\\)"):
        evaluate_suite(pred, tmp_path / "run", settings={"model": "b", "max_new_tokens": None}, **kw)


def test_full_suite_scripted_group_split_and_degradation(data, tmp_path):
    teacher = _known_table(data)
    pred, _ = _scripted(teacher)
    kw = dict(data_dir=data / "data", cache_dir=data / "cache", progress=False)
    res = evaluate_suite(pred, tmp_path / "teacher", "all", **kw)
    bench = res.benchmarks
    assert len(bench) == 10 and bench["mmmu_pro"] == pytest.approx(100.0)
    ocr = [KNOWN[n][2] for n in SUITES["ocr"]]
    scene = [KNOWN["ai2d"][2], KNOWN["mmstar"][2], KNOWN["mmbench_en_dev"][2],
             (KNOWN["mmmu_pro_standard"][2] + KNOWN["mmmu_pro_vision"][2]) / 2]
    assert res.groups["ocr"] == pytest.approx(100 * sum(ocr) / 6)
    assert res.groups["scene"] == pytest.approx(100 * sum(scene) / 4)
    assert res.average == pytest.approx(100 * (sum(ocr) + sum(scene)) / 10)
    text = res.format()
    assert "ten-benchmark average" in text and "OCR/document average (6 benchmarks)" in text and "coverage 80%" in text
    summary = json.loads((tmp_path / "teacher" / "summary.json").read_text())
    assert summary["n_benchmarks"] == 10 and summary["average"] == pytest.approx(res.average)

    # a student that loses only on the OCR side: one ChartQA and one DocVQA item go wrong
    student = {n: dict(v) for n, v in teacher.items()}
    student["chartqa"]["0"] = "7"
    student["docvqa_val"]["49153"] = "1936"
    pred_s, _ = _scripted(student)
    res_s = evaluate_suite(pred_s, tmp_path / "student", "all", **kw)
    rep = compare_runs(tmp_path / "teacher", tmp_path / "student", n_boot=200)
    t = rep.table
    assert t.loc["ChartQA (test)", "gap"] == pytest.approx(-25.0)
    assert t.loc["DocVQA (val)", "gap"] == pytest.approx(-100 / 3)
    assert t.loc["scene/reasoning", "gap"] == pytest.approx(0.0)
    assert t.loc["OCR/document", "gap"] < 0 and "MMMU-Pro" in t.index
    assert res_s.groups["scene"] == pytest.approx(res.groups["scene"])


# --- heed eval on a real (tiny) model --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import torch
    from heed.hybrid import hybridize
    from heed.teacher import build_toy_teacher, save_teacher
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("models")
    t = build_toy_teacher(seed=0)
    save_teacher(t.model, t.processor, d / "teacher")
    save_teacher(hybridize(t.model), t.processor, d / "student")
    return d


def _heed(*args, cwd):
    "`heed eval ARGS` as a user runs it (registered in heed.cli)."
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "heed.cli", "eval", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_heed_eval_teacher_student_compare(models, data, tmp_path):
    "The command as a user runs it: all ten benchmarks on local copies, a student run, the degradation report, a resume."
    common = ["--data-dir", str(data / "data"), "--limit", "2", "--max-new-tokens", "4", "--batch-size", "4", "--no-progress"]
    r = _heed(str(models / "teacher"), "--out", str(tmp_path / "t"), *common, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    for line in ("ten-benchmark average", "OCR/document average (6 benchmarks)", "scene/reasoning average (4 benchmarks)", "MMStar"):
        assert line in r.stdout
    logs = sorted(p.name for p in (tmp_path / "t").glob("*.jsonl"))
    assert len(logs) == 11
    n_items = sum(len(read_log(tmp_path / "t" / n)) for n in logs)
    assert n_items == 22
    r = _heed(str(models / "student"), "--out", str(tmp_path / "s"), "--compare", str(tmp_path / "t"), "--dtype", "bfloat16", *common,
              cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "selective degradation" in r.stdout and "| **OCR/document** |" in r.stdout
    assert (tmp_path / "s" / "degradation.md").is_file()
    before = {n: (tmp_path / "s" / n).read_text() for n in logs}
    r = _heed(str(models / "student"), "--out", str(tmp_path / "s"), "--dtype", "bfloat16", *common, cwd=tmp_path)  # resume: no work
    assert r.returncode == 0, r.stderr[-3000:]
    r2 = _heed(str(models / "student"), "--out", str(tmp_path / "s"), *common, cwd=tmp_path)  # other settings: refused
    assert r2.returncode == 2 and "heed eval: error:" in r2.stderr and "other settings" in r2.stderr
    assert r.returncode == 0 and {n: (tmp_path / "s" / n).read_text() for n in logs} == before


def test_heed_eval_model_replies_are_logged(models, data, tmp_path):
    "The real generate path (multi-image MMMU-Pro included) on the toy teacher: replies are strings, scores in [0, 1]."
    from heed.benchmarks import model_predictor
    from heed.teacher import load_model
    model, proc = load_model(models / "teacher")
    res = evaluate_suite(model_predictor(model, proc, max_new_tokens=3), tmp_path / "run", only=["mmmu_pro_standard", "ocrbench"],
                         data_dir=data / "data", cache_dir=data / "cache", batch_size=4, progress=False)
    recs = read_log(tmp_path / "run" / "mmmu_pro_standard.jsonl")
    assert len(recs) == 2 and all(isinstance(r["prediction"], str) for r in recs.values())
    assert all(0.0 <= r["score"] <= 1.0 for r in recs.values())
    assert set(res.tasks) == {"mmmu_pro_standard", "ocrbench"}


def test_bfloat16_model_generates(models, data, tmp_path):
    "heed eval --dtype bfloat16: float32 pixel values meet a bfloat16 vision tower."
    import torch
    from heed.benchmarks import generate_replies
    from heed.teacher import load_model
    model, proc = load_model(models / "student")
    model = model.to(torch.bfloat16)
    replies = generate_replies(model, proc, _load("mmmu_pro_standard", data), max_new_tokens=2)
    assert len(replies) == 2 and all(isinstance(r, str) for r in replies)
