"""Scorers against slow, literal references; evaluation with the real toy model; the degradation report's statistics."""
import itertools
import logging
from functools import lru_cache

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heed.evaluate import (ScriptedModel, anls, degradation_report, evaluate, exact_match, extract_option, levenshtein,
                           ocrbench_match, relaxed_accuracy, vqa_accuracy, vqa_normalize)
from heed.hybrid import hybridize
from heed.synth import CATEGORY_GROUPS, make_synth
from heed.teacher import build_toy_teacher

text = st.text(alphabet="abcAB 12.", max_size=8)


def lev_reference(a, b):
    @lru_cache(maxsize=None)
    def d(i, j):
        if i == 0 or j == 0: return i + j
        return min(d(i - 1, j) + 1, d(i, j - 1) + 1, d(i - 1, j - 1) + (a[i - 1] != b[j - 1]))
    return d(len(a), len(b))


@given(text, text)
def test_levenshtein_matches_the_recursive_definition(a, b):
    assert levenshtein(a, b) == lev_reference(a, b) == levenshtein(b, a)


@given(text, st.lists(text.filter(str.strip), min_size=1, max_size=3))
def test_anls_is_the_best_thresholded_similarity(p, answers):
    def one(p, a):
        p2, a2 = " ".join(p.lower().split()), " ".join(a.lower().split())
        nl = lev_reference(p2, a2) / max(len(p2), len(a2), 1)
        return 1 - nl if nl < 0.5 else 0.0
    assert anls(p, answers) == pytest.approx(max(one(p, a) for a in answers))
    assert 0.0 <= anls(p, answers) <= 1.0


@settings(max_examples=60)
@given(st.lists(st.sampled_from(["2", "3", "two", "blue"]), min_size=10, max_size=10), st.sampled_from(["2", "3", "blue", "red"]))
def test_vqa_accuracy_averages_all_nine_annotator_subsets(gts, pred):
    """The official definition, literally: mean over the C(10, 9) subsets of min(1, matches / 3)."""
    norm = [vqa_normalize(g) for g in gts]
    subsets = list(itertools.combinations(range(10), 9))
    ref = np.mean([min(1.0, sum(norm[i] == vqa_normalize(pred) for i in s) / 3) for s in subsets])
    assert vqa_accuracy(pred, gts) == pytest.approx(ref)


@given(st.floats(0.01, 1e4), st.floats(-0.2, 0.2))
def test_relaxed_accuracy_is_a_five_percent_band(target, rel):
    pred = target * (1 + rel)
    expected = abs(pred - target) / target <= 0.05
    if abs(abs(rel) - 0.05) > 1e-9:  # skip the float boundary itself
        assert relaxed_accuracy(repr(pred), repr(target)) == float(expected)


def test_scorers_take_answer_lists_and_none():
    for f in (exact_match, anls, relaxed_accuracy, vqa_accuracy, ocrbench_match):
        if f is not vqa_accuracy:  # for VQA accuracy a list is the annotators' answers, not alternatives
            assert f("K7Q", ["nope", "K7Q"]) == 1.0
        assert f("K7Q", "K7Q") == 1.0
        assert f(None, "K7Q") == 0.0
        with pytest.raises(TypeError, match="answer 7"):
            f("7", 7)
    assert extract_option(None) is None


@pytest.fixture(scope="module")
def world():
    return make_synth(0, 0, 14, seed=2, cache=False)


def test_evaluate_is_batch_size_invariant_with_the_real_toy_model(world):
    model, proc = build_toy_teacher(seed=1)
    r1 = evaluate(model, proc, world, batch_size=14, max_new_tokens=5)
    r2 = evaluate(model, proc, world, batch_size=3, max_new_tokens=5)
    assert r1.examples["prediction"].tolist() == r2.examples["prediction"].tolist()
    assert len(r1.examples) == 14 and set(r1.by_category().index) == set(CATEGORY_GROUPS)
    assert model.training is False


def test_evaluate_logs_scorer_failures_and_goes_on(world, caplog):
    from heed.teacher import VLProcessor, build_image_processor, build_tokenizer
    proc = VLProcessor(build_tokenizer(), build_image_processor())

    def fussy(pred, answers):
        if pred.startswith("?"): raise ValueError("cannot parse")
        return exact_match(pred, answers)
    replies = list(world["test"]["answer"])
    replies[3] = "???"
    with caplog.at_level(logging.WARNING, logger="heed.evaluate"):
        res = evaluate(ScriptedModel(proc, replies), proc, world["test"], scorers={"fussy": fussy}, metric="fussy")
    assert res.examples["fussy"].tolist() == [0.0 if i == 3 else 1.0 for i in range(14)]
    assert bool(res.examples["unparsed"][3]) and res.examples["unparsed"].sum() == 1
    assert "test-000003" in caplog.text and "cannot parse" in caplog.text


def _frame(p_by_cat, n, seed):
    rng = np.random.default_rng(seed)
    return pd.DataFrame([dict(id=f"{c}-{i}", category=c, group=CATEGORY_GROUPS[c], exact_match=float(rng.random() < p))
                         for c, p in p_by_cat.items() for i in range(n)])


def test_bootstrap_interval_has_the_binomial_width():
    t = _frame({"label": 0.5}, 400, 0)
    rep = degradation_report(t, t.copy(), n_boot=4000)
    row = rep.table.loc["label"]
    p = row["teacher"] / 100
    half = 1.96 * np.sqrt(p * (1 - p) / 400) * 100
    assert (row["teacher_hi"] - row["teacher_lo"]) / 2 == pytest.approx(half, rel=0.12)


def test_unpaired_noise_is_not_flagged_but_a_real_drop_is():
    cats = {c: 0.8 for c in CATEGORY_GROUPS}
    teacher = _frame(cats, 300, 1)
    noisy = _frame(cats, 300, 2)  # same skill, independent errors
    assert degradation_report(teacher, noisy).table.loc[list(CATEGORY_GROUPS), "gap"].abs().max() < 8
    worse = _frame(dict(cats, kv=0.7), 300, 1)  # same draws as the teacher except kv
    rep = degradation_report(teacher, worse)
    assert rep.hidden and "kv" in rep.flagged and rep.table.loc["kv", "gap_hi"] < 0
    md = rep.markdown()
    assert md.count("\n") == len(rep.table) + 1 and "hidden drop" in md
    fig = rep.figure()
    assert len(fig.axes) == 2


def test_report_rejects_mismatched_inputs():
    t = _frame({"label": 0.5, "kv": 0.5}, 5, 0)
    with pytest.raises(ValueError, match="category differs"):
        degradation_report(t, t.assign(category=t["category"].where(t.index != 0, "kv")))
    with pytest.raises(ValueError, match="lack the column"):
        degradation_report(t, t.drop(columns="exact_match"))
    with pytest.raises(ValueError, match="duplicate example ids"):
        degradation_report(t, pd.concat([t, t.iloc[:1]]))


def test_evaluate_runs_the_hybrid_student_through_the_same_loop(world):
    """Any model with the Qwen3-VL interface: the hybridized toy teacher generates through evaluate unchanged."""
    model, proc = build_toy_teacher(seed=1)
    student = hybridize(model)
    r1 = evaluate(student, proc, world, batch_size=14, max_new_tokens=4)
    r2 = evaluate(student, proc, world, batch_size=4, max_new_tokens=4)
    assert r1.examples["prediction"].tolist() == r2.examples["prediction"].tolist()
    rep = degradation_report(evaluate(model, proc, world, max_new_tokens=4), r1)
    assert list(rep.table.index[-1:]) == ["aggregate"]
