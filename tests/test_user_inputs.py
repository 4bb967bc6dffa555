"""Issue 17: what a user hands heed, read as it is. Local benchmark copies changed on disk are rescored, examples that
cannot be run are skipped and counted (never the end of a suite), every image is capped, default eval folders never
collide, damaged files are named in one line, and an installed heed works outside a clone."""
import contextlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from heed.benchmarks import BENCHMARKS, eval_out_dir, evaluate_suite, load_examples, read_log, run_benchmark
from heed.testing import write_fixture

datasets.disable_progress_bars()


def _rewrite(path: Path, **columns):
    "Rewrite columns of every parquet file at `path` (a file or a folder): name -> function(old python list) -> new list."
    for f in [path] if path.is_file() else sorted(path.rglob("*.parquet")):
        t = pq.read_table(f)
        for name, fn in columns.items():
            i = t.schema.get_field_index(name)
            t = t.set_column(i, t.schema.field(i), pa.array(fn(t.column(name).to_pylist()), type=t.schema.field(i).type))
        pq.write_table(t, f)


def _replying(text):
    return lambda examples, bench: [text] * len(examples)


# --- local copies are read as they are on disk ---------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["snapshot", "parquet"])
def test_a_changed_local_copy_is_scored_with_its_new_answers(layout, tmp_path):
    path = write_fixture("docvqa_val", tmp_path / "data", layout=layout)
    kw = dict(only=["docvqa_val"], data_dir=tmp_path / "data", cache_dir=tmp_path / "cache", progress=False)
    assert evaluate_suite(_replying("CHANGED"), tmp_path / "r1", **kw).tasks["docvqa_val"]["score"] == 0.0
    _rewrite(path, answers=lambda old: [["CHANGED"]] * len(old))
    res = evaluate_suite(_replying("CHANGED"), tmp_path / "r2", **kw)
    assert res.tasks["docvqa_val"]["score"] == 1.0  # the new answers, not the cached old ones
    assert {r["answers"][0] for r in read_log(tmp_path / "r2" / "docvqa_val.jsonl").values()} == {"CHANGED"}


def test_a_same_named_copy_elsewhere_is_not_taken_for_the_cached_one(tmp_path):
    "Two data folders holding different copies under the same dataset id, one shared cache folder."
    a = write_fixture("chartqa", tmp_path / "a")
    b = write_fixture("chartqa", tmp_path / "b")
    _rewrite(b, answer=lambda old: ["other"] * len(old))
    got = {d: [e.answers for e in load_examples("chartqa", tmp_path / d, cache_dir=tmp_path / "cache")] for d in "ab"}
    assert got["a"][0] == ["42"] and got["b"] == [["other"]] * 4


# --- examples that cannot be run ---------------------------------------------------------------------------------

def _damaged_docvqa(root: Path) -> Path:
    "DocVQA fixture: row 1's image is not an image, row 2's question is empty (row 0 is fine)."
    p = write_fixture("docvqa_val", root / "data", layout="parquet")
    _rewrite(p, image=lambda old: [old[0], {"bytes": b"\x89PNG\r\n\x1a\n torn", "path": None}, old[2]],
             question=lambda old: [old[0], old[1], "  "])
    return root / "data"


def test_unrunnable_examples_are_logged_counted_and_scored_by_the_benchmarks_rule(tmp_path):
    data = _damaged_docvqa(tmp_path)
    calls = []
    def predict(examples, bench):
        calls.append([e.id for e in examples])
        return ["1963"] * len(examples)
    res = evaluate_suite(predict, tmp_path / "run", only=["docvqa_val"], data_dir=data, cache_dir=tmp_path / "c", progress=False)
    t = res.tasks["docvqa_val"]
    assert calls == [["49153"]]  # only the runnable example reached the model
    assert t["n"] == 3 and t["n_skipped"] == 2
    assert "image 1 could not be read" in t["skipped"]["24580"] and t["skipped"]["57349"] == "empty question"
    assert t["score"] == pytest.approx(1 / 3)  # DocVQA's rule: an unanswered question scores 0
    logged = read_log(tmp_path / "run" / "docvqa_val.jsonl")
    assert logged["24580"]["prediction"] is None and logged["24580"]["score"] == 0.0 and "skipped" in logged["24580"]
    assert "2 skipped, scored 0" in res.format()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["tasks"]["docvqa_val"]["skipped"] == t["skipped"]
    calls.clear()
    evaluate_suite(predict, tmp_path / "run", only=["docvqa_val"], data_dir=data, cache_dir=tmp_path / "c", progress=False)
    assert calls == []  # resumed: skipped examples are not tried again


def test_a_benchmark_that_excludes_skipped_items_lowers_coverage_not_score(tmp_path):
    p = write_fixture("ocrbench_v2", tmp_path / "data", layout="parquet")
    _rewrite(p, image=lambda old: [{"bytes": b"junk", "path": None}] + old[1:])  # item 0 (text recognition) unreadable
    replies = {"1": "I count 6", "2": "B", "3": "[10, 10, 50, 30]", "4": "<table></table>"}
    res = evaluate_suite(lambda exs, b: [replies[e.id] for e in exs], tmp_path / "run", only=["ocrbench_v2"],
                         data_dir=tmp_path / "data", cache_dir=tmp_path / "c", progress=False)
    t = res.tasks["ocrbench_v2"]
    assert BENCHMARKS["ocrbench_v2"].unrunnable == "exclude"
    assert t["score"] == pytest.approx((0.75 + 1 + 0.5) / 3) and t["coverage"] == pytest.approx(3 / 5) and t["n_skipped"] == 1


def test_a_batch_that_fails_on_one_input_skips_only_that_input_and_a_bug_still_stops(tmp_path):
    write_fixture("chartqa", tmp_path / "data")
    exs = load_examples("chartqa", tmp_path / "data", cache_dir=tmp_path / "c", lazy=True)
    seen = []
    def picky(examples, bench):
        seen.append(len(examples))
        if any(e.id == "2" for e in examples): raise ValueError("example 2: 9000 tokens exceed the processor's max_length=8192")
        return ["42"] * len(examples)
    recs = run_benchmark(BENCHMARKS["chartqa"], exs, picky, tmp_path / "log.jsonl", batch_size=4, progress=False)
    assert seen == [4, 1, 1, 1, 1]  # the batch, then one at a time
    assert [r.get("skipped") for r in recs] == [None, None, "ValueError: example 2: 9000 tokens exceed the processor's max_length=8192", None]
    assert [r["score"] for r in recs] == [1.0, 0.0, 0.0, 0.0]
    def buggy(examples, bench): raise KeyError("a bug is not an input problem")
    with pytest.raises(KeyError): run_benchmark(BENCHMARKS["chartqa"], exs, buggy, tmp_path / "log2.jsonl", progress=False)


def test_an_over_long_example_is_skipped_by_the_real_encoder(tmp_path):
    "The toy teacher's processor has max_length 512: a question of 3,000 words cannot fit, whatever the image."
    from heed.benchmarks import model_predictor
    from heed.teacher import build_toy_teacher
    p = write_fixture("textvqa_val", tmp_path / "data", layout="parquet")
    _rewrite(p, question=lambda old: [old[0], "what " * 3000])
    t = build_toy_teacher(seed=0)
    res = evaluate_suite(model_predictor(t.model, t.processor, max_new_tokens=2), tmp_path / "run", only=["textvqa_val"],
                         data_dir=tmp_path / "data", cache_dir=tmp_path / "c", batch_size=2, progress=False)
    skipped = res.tasks["textvqa_val"]["skipped"]
    assert list(skipped) == ["34603"] and "exceed the processor's max_length=512" in skipped["34603"]
    assert read_log(tmp_path / "run" / "textvqa_val.jsonl")["34602"]["prediction"] is not None  # its batch-mate was answered


def test_max_pixels_caps_every_image_the_model_sees(tmp_path):
    write_fixture("mmmu_pro_standard", tmp_path / "data")  # 64 x 64 images, up to two per item
    sizes = []
    def predict(examples, bench):
        sizes.extend(im.size for e in examples for im in e.images)
        return ["A"] * len(examples)
    evaluate_suite(predict, tmp_path / "run", only=["mmmu_pro_standard"], data_dir=tmp_path / "data", cache_dir=tmp_path / "c",
                   progress=False, max_pixels=1000)
    assert len(sizes) == 3 and all(w * h <= 1000 for w, h in sizes) and sizes[0] == (31, 31)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["max_pixels"] == 1000


# --- heed eval: default folders, damaged model files -------------------------------------------------------------

def _main(*argv):
    from heed.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def toy_models(tmp_path_factory):
    "One toy teacher saved as runs/a/model and runs/b/model: two students whose folders have the same name."
    import torch
    from heed.teacher import build_toy_teacher, save_teacher
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("toy")
    t = build_toy_teacher(seed=0)
    for k in "ab": save_teacher(t.model, t.processor, d / "runs" / k / "model")
    return d


def test_default_eval_folders_of_two_same_named_models_differ_and_are_stable(toy_models, tmp_path, monkeypatch):
    a, b = toy_models / "runs" / "a" / "model", toy_models / "runs" / "b" / "model"
    assert eval_out_dir(a) != eval_out_dir(b) and eval_out_dir(a) == eval_out_dir(Path(str(a) + "/"))
    assert eval_out_dir(a).name.startswith("a-model-")
    monkeypatch.setenv("HEED_HOME", str(tmp_path))  # where runs/eval goes
    write_fixture("chartqa", tmp_path / "data")
    common = ["--only", "chartqa", "--data-dir", str(tmp_path / "data"), "--limit", "2", "--max-new-tokens", "2", "--no-progress"]
    for m in (a, b):
        code, out, err = _main("eval", str(m), *common)
        assert code == 0, err
    runs = sorted(p.name for p in (tmp_path / "runs" / "eval").iterdir())
    assert len(runs) == 2 and runs[0].startswith("a-model-") and runs[1].startswith("b-model-")
    settings = json.loads((tmp_path / "runs" / "eval" / runs[0] / "run.json").read_text())["settings"]
    assert settings["max_pixels"] == 512 * 512  # the toy teacher's preprocessor_config.json says so


@pytest.mark.parametrize("damage, expected", [
    ("config", "config.json: not valid JSON (line 1, column"),
    ("weights", "model.safetensors: truncated: its header describes"),
])
def test_a_damaged_model_folder_is_named_in_one_line(damage, expected, toy_models, tmp_path):
    import shutil
    m = tmp_path / "model"
    shutil.copytree(toy_models / "runs" / "a" / "model", m)
    if damage == "config": (m / "config.json").write_text('{"architectures": ["Qwen3VL')
    else: (m / "model.safetensors").write_bytes((m / "model.safetensors").read_bytes()[:-1000])
    write_fixture("chartqa", tmp_path / "data")
    code, _, err = _main("eval", str(m), "--only", "chartqa", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "r"),
                         "--no-progress")
    assert code == 2 and len(err.strip().splitlines()) == 1 and expected in err and str(m) in err, err


# --- notebooks, edit distance --------------------------------------------------------------------------------------

def test_every_notebook_declares_the_projects_kernel(root):
    nbs = sorted(root.glob("nbs/*.ipynb")) + sorted(root.glob("nbs/experiments/*.ipynb"))
    assert len(nbs) > 20
    bad = [p.name for p in nbs if json.loads(p.read_text())["metadata"].get("kernelspec", {}).get("name") != "heed"]
    assert bad == []


def test_levenshtein_is_rapidfuzz_and_agrees_with_the_dynamic_programme():
    import random
    from heed.evaluate import _levenshtein_dp, levenshtein
    rng = random.Random(0)
    for _ in range(300):
        a = "".join(rng.choice("abcé 1") for _ in range(rng.randrange(0, 30)))
        b = "".join(rng.choice("abcé 1") for _ in range(rng.randrange(0, 30)))
        assert levenshtein(a, b) == _levenshtein_dp(a, b), (a, b)
    assert levenshtein("kitten", "sitting") == 3 and levenshtein("", "abc") == 3


# --- installed outside a clone -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_installed_heed_trains_evaluates_and_explains_reproduce_outside_a_clone(root, tmp_path):
    "A wheel installed into its own folder, run from a folder that is no clone: the toy teacher and configs ship with it."
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(root)],
                   check=True, capture_output=True)
    (whl,) = wheels.glob("heed-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    for f in ["heed/_shipped/data/teacher/model/model.safetensors", "heed/_shipped/data/teacher/model/config.json",
              "heed/_shipped/configs/align-smoke.yaml"]:
        assert f in names, f
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(whl)],
                   check=True, capture_output=True)
    away = tmp_path / "elsewhere"
    away.mkdir()
    write_fixture("chartqa", away / "bench")
    env = {k: v for k, v in os.environ.items() if k != "HEED_HOME"}
    env.update(PYTHONPATH=str(target), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    heed = lambda *a: subprocess.run([str(target / "bin" / "heed"), *a], cwd=away, env=env, capture_output=True, text=True, timeout=900)
    r = heed("train", "configs/align-smoke.yaml", "steps=2", "save_every=2", "eval_examples=2", "output_dir=runs/align")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (away / "runs" / "align" / "model" / "config.json").is_file()
    r = heed("eval", "runs/align/model", "--only", "chartqa", "--data-dir", "bench", "--limit", "2", "--max-new-tokens", "2",
             "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = (away / "runs" / "eval").iterdir()
    assert run.name.startswith("align-model-") and (run / "summary.json").is_file()
    r = heed("reproduce", "--profile", "smoke")
    assert r.returncode == 2 and "git clone https://github.com/heed-vlm/heed && cd heed && make reproduce" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and str(target / "heed") in r.stderr  # the installed copy ran, not the clone's
