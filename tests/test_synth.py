"""HEED-Synth: properties of the generated world that later modules rely on."""
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heed.synth import (CATEGORIES, CATEGORY_GROUPS, COLOURS, GLYPH_ALPHABET, SHAPES, SynthConfig, category_schedule,
                        generate_split, glyph_targets, make_example, make_synth, synth_key)


def _in_image(box, size):
    x0, y0, x1, y1 = box
    return 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size


def _check_example(ex, cfg):
    size = cfg.image_size
    img = np.asarray(ex["image"].convert("RGB"))
    assert img.shape == (size, size, 3)
    assert ex["group"] == CATEGORY_GROUPS[ex["category"]]
    assert ex["question"].strip() and ex["answer"].strip()
    assert ex["boxes"] and all(_in_image(b, size) for b in ex["boxes"]), ex["boxes"]
    assert len(ex["glyph_chars"]) == len(ex["glyph_boxes"])
    scene = json.loads(ex["scene"])
    cat, ans = ex["category"], ex["answer"]
    if cat == "kv":
        # two rows may share a value: find the asked row by its key, then check its value and boxes
        (row,) = [r for r in scene["rows"] if ex["question"] == f"What is the value of {r['key']}?"]
        assert row["value"] == ans and ex["boxes"] == row["value_boxes"]
    else:
        shapes = scene["shapes"]
        if cat == "colour":
            assert ans in COLOURS
            # the answer colour is really drawn inside the answer box
            x0, y0, x1, y1 = ex["boxes"][0]
            assert (np.abs(img[y0:y1, x0:x1].astype(int) - COLOURS[ans]).sum(-1) < 6).mean() > 0.3
        if cat == "shape": assert ans in SHAPES
        if cat == "count": assert int(ans) == len(shapes) == len(ex["boxes"])
        if cat == "position": assert ans in ("left", "right", "above", "below")
        if cat == "label":
            assert ans == scene["label"]["text"] and len(ex["boxes"]) == len(ans)
        if cat == "char": assert ans in scene["label"]["text"] and len(ans) == 1
        for gb in scene["label"]["boxes"]:  # text never sits on a shape
            assert not any(gb[0] < s["box"][2] and s["box"][0] < gb[2] and gb[1] < s["box"][3] and s["box"][1] < gb[3]
                           for s in shapes)
    # every glyph box holds ink: darker pixels than the background around it
    grey = img.mean(-1)
    for x0, y0, x1, y1 in ex["glyph_boxes"]:
        assert grey[y0:y1, x0:x1].min() < 120


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), cat=st.sampled_from(CATEGORIES), fs=st.integers(10, 20),
       L=st.integers(1, 4), aligned=st.booleans(), shapes=st.integers(2, 4))
def test_examples_are_consistent(seed, cat, fs, L, aligned, shapes):
    cfg = SynthConfig(font_size=fs, text_len=L, grid_aligned=aligned, shapes=(1, shapes))
    _check_example(make_example(np.random.default_rng(seed), cfg, cat), cfg)


@pytest.mark.parametrize("size", [96, 192])
def test_other_image_sizes(size):
    cfg = SynthConfig(image_size=size, shape_size=(24, 40), text_len=2 if size < 128 else 3)
    for i, cat in enumerate(CATEGORIES):
        ex = make_example(np.random.default_rng(i), cfg, cat)
        _check_example(ex, cfg)
        assert len(ex["cell_shapes"]) == (size // 32) ** 2


def test_grid_aligned_glyphs_fill_one_patch_each():
    cfg = SynthConfig()
    ds = generate_split("train", 40, 3, cfg)
    for ex in ds:
        t = glyph_targets(ex)
        n_glyphs = sum(c in GLYPH_ALPHABET for c in ex["glyph_chars"])
        assert (t > 0).sum() == n_glyphs, ex["id"]  # no two glyphs share a patch
        decoded = sorted(GLYPH_ALPHABET[k - 1] for k in t[t > 0])
        assert decoded == sorted(ex["glyph_chars"])


def test_text_patches_are_dense_background_is_smooth():
    """The premise of the paper holds in this world: answer glyph patches vary far more than the rest."""
    ds = generate_split("test", 60, 0, SynthConfig(mix={"label": 1, "kv": 1}))
    text_std, other_std = [], []
    for ex in ds:
        img = np.asarray(ex["image"].convert("L"), float)
        patches = img.reshape(8, 16, 8, 16).transpose(0, 2, 1, 3).reshape(64, -1)
        t = glyph_targets(ex)  # (16 merged tokens, 4 slots); slot = (row % 2) * 2 + col % 2
        mask = np.zeros((8, 8), bool)
        for m in range(16):
            for s in range(4):
                mask[(m // 4) * 2 + s // 2, (m % 4) * 2 + s % 2] = t[m, s] > 0
        std = patches.std(1).reshape(8, 8)
        text_std += list(std[mask]); other_std += list(std[~mask])
    assert np.median(text_std) > 4 * np.median(other_std), (np.median(text_std), np.median(other_std))


def test_splits_are_deterministic_and_independent():
    a = make_synth(10, 5, 5, seed=7, cache=False)
    b = make_synth(10, 5, 5, seed=7, cache=False)
    for split in a:
        assert a[split]["question"] == b[split]["question"] and a[split]["answer"] == b[split]["answer"]
        for x, y in zip(a[split], b[split]):
            assert np.array_equal(np.asarray(x["image"]), np.asarray(y["image"]))
    # train and test draw from different streams: their examples differ
    assert a["train"]["answer"][:5] != a["test"]["answer"]
    assert len(set(a["train"]["id"]) | set(a["test"]["id"])) == 15


def test_category_quotas_follow_mix():
    cfg = SynthConfig(mix={"colour": 1, "shape": 1, "label": 3})
    sched = category_schedule(50, cfg, np.random.default_rng(0))
    assert {c: sched.count(c) for c in set(sched)} == {"colour": 10, "shape": 10, "label": 30}


def test_cache_key_tracks_every_parameter(tmp_path):
    cfg = SynthConfig()
    k = synth_key(10, 2, 2, 0, cfg)
    assert k == synth_key(10, 2, 2, 0, SynthConfig())
    assert k != synth_key(10, 2, 2, 1, cfg)
    assert k != synth_key(11, 2, 2, 0, cfg)
    assert k != synth_key(10, 2, 2, 0, SynthConfig(font_size=(14, 18)))
    dd = make_synth(6, 2, 2, seed=0, data_dir=tmp_path, mix={"count": 1, "char": 1})
    folder = tmp_path / "cache" / "synth" / synth_key(6, 2, 2, 0, SynthConfig(mix={"count": 1, "char": 1}))
    assert (folder / "heed_synth.json").is_file()
    again = make_synth(6, 2, 2, seed=0, data_dir=tmp_path, mix={"count": 1, "char": 1})
    assert again["train"]["answer"] == dd["train"]["answer"]
    assert not list((tmp_path / "cache" / "synth").glob(".*.tmp"))


def test_bad_knobs_name_the_knob():
    with pytest.raises(ValueError, match="font_size"):
        SynthConfig(font_size=(20, 14))
    with pytest.raises(ValueError, match="doc_rows"):
        SynthConfig(doc_rows=(0, 3))
    with pytest.raises(TypeError, match="unknown knob"):
        make_synth(1, 1, 1, cache=False, colours=3)


def test_doc_row_gap_two_gives_every_receipt_row_its_own_merged_token_row():
    cfg = SynthConfig(doc_row_gap=(2, 2), doc_rows=(2, 4))
    P, M = cfg.patch, cfg.merge
    for seed in range(30):
        rows = json.loads(make_example(np.random.default_rng(seed), cfg, "kv")["scene"])["rows"]
        ys = [(r["key_boxes"][0][1] + r["key_boxes"][0][3]) / 2 for r in rows]
        patch_rows = [int(y // P) for y in ys]
        assert all(b - a == 2 for a, b in zip(patch_rows, patch_rows[1:])), patch_rows
        assert len({r // M for r in patch_rows}) == len(rows)  # no merged token holds glyphs of two rows
    # the default keeps adjacent rows possible
    gaps = set()
    for seed in range(30):
        rows = json.loads(make_example(np.random.default_rng(seed), SynthConfig(), "kv")["scene"])["rows"]
        gaps |= {int(rows[1]["key_boxes"][0][1] // P - rows[0]["key_boxes"][0][1] // P)}
    assert gaps == {1, 2}


def test_position_margin_gives_a_clear_dominant_axis():
    cfg = SynthConfig(shapes=(2, 3), position_margin=1.5)
    ratios, answers = [], set()
    for seed in range(60):
        ex = make_example(np.random.default_rng(seed), cfg, "position")
        shapes = {s["kind"]: s for s in json.loads(ex["scene"])["shapes"]}
        a, b = ex["question"].removeprefix("Where is the ").removesuffix("?").split(" relative to the ")
        dx, dy = (shapes[a]["centre"][k] - shapes[b]["centre"][k] for k in (0, 1))
        lo, hi = sorted((abs(dx), abs(dy)))
        ratios.append(hi / max(lo, 1e-9))
        want = ("left" if dx < 0 else "right") if abs(dx) >= abs(dy) else ("above" if dy < 0 else "below")
        assert ex["answer"] == want
        answers.add(ex["answer"])
    assert min(ratios) >= 1.5 and answers == {"left", "right", "above", "below"}
    # without a margin, near-diagonal pairs occur
    loose = []
    for seed in range(60):
        sh = json.loads(make_example(np.random.default_rng(seed), SynthConfig(shapes=(2, 2)), "position")["scene"])["shapes"]
        dx, dy = (abs(sh[0]["centre"][k] - sh[1]["centre"][k]) for k in (0, 1))
        loose.append(max(dx, dy) / max(min(dx, dy), 1e-9))
    assert min(loose) < 1.5


def test_new_knobs_are_checked_by_name():
    with pytest.raises(ValueError, match="doc_row_gap"):
        SynthConfig(doc_row_gap=(2, 3))
    with pytest.raises(ValueError, match="doc_row_gap"):
        SynthConfig(doc_row_gap=(2, 2), doc_rows=(2, 5))  # 5 rows one blank row apart need 9 patch rows, the image has 8
    with pytest.raises(ValueError, match="position_margin"):
        SynthConfig(position_margin=0.5)
