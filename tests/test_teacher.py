"""The toy teacher's pieces end to end: labels, padding, generation, and load_teacher on real-style directories."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from heed.synth import make_synth
from heed.teacher import (AnswerCollator, VLProcessor, build_image_processor, build_tokenizer, build_toy_teacher,
                          load_teacher, save_teacher)


@pytest.fixture(scope="module")
def data():
    return make_synth(16, 0, 0, seed=1, cache=False, mix={"label": 1, "colour": 1})["train"]


def _rows(ds, n):
    return [ds[i] for i in range(n)]


def _generate(model, proc, rows, max_new_tokens=8):
    batch = AnswerCollator(proc, padding_side="left", with_answers=False)(rows)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    return proc.decode(out[:, batch["input_ids"].shape[1]:])


def test_padding_side_does_not_change_the_loss(data):
    model, proc = build_toy_teacher(seed=3)
    rows = _rows(data, 6)
    losses = {}
    for side in ("left", "right"):
        b = AnswerCollator(proc, padding_side=side)(rows)
        with torch.no_grad():
            logits = model(**{k: v for k, v in b.items() if k != "labels"}).logits
        lab = b["labels"][:, 1:]
        ce = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), lab, ignore_index=-100, reduction="none")
        losses[side] = ce.sum(1) / (lab != -100).sum(1)
    torch.testing.assert_close(losses["left"], losses["right"], atol=1e-5, rtol=1e-5)


def test_batched_generation_matches_one_at_a_time(data):
    model, proc = build_toy_teacher(seed=4)
    rows = _rows(data, 5)
    batched = _generate(model, proc, rows)
    single = [_generate(model, proc, [r])[0] for r in rows]
    assert batched == single


def test_toy_teacher_learns_and_generation_agrees_with_teacher_forcing():
    """The pipeline learns from answer-only labels, and left-padded greedy generation returns exactly the answers
    that teacher forcing already predicts (a wrong position, mask or padding breaks that agreement)."""
    rows = list(make_synth(6, 0, 0, seed=1, cache=False, mix={"colour": 1})["train"])
    # character-level answers: several tokens per answer make the teacher-forcing / generation comparison stricter
    model, proc = build_toy_teacher(seed=0, processor=VLProcessor(build_tokenizer(), build_image_processor()))
    batch = AnswerCollator(proc)(rows)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    first = None
    for step in range(400):  # stops early once memorised (about 100-250 steps; the path depends on thread count)
        loss = model(**batch).loss
        first = first or loss.item()
        opt.zero_grad(); loss.backward(); opt.step()
        if loss.item() < 0.02: break
    model.eval()
    assert loss.item() < 0.1 * first, (first, loss.item())
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    lab = batch["labels"][:, 1:]
    pred = logits[:, :-1].argmax(-1)
    forced_ok = [bool(((pred[b] == lab[b]) | (lab[b] == -100)).all()) for b in range(len(rows))]
    assert sum(forced_ok) >= 4, forced_ok
    gen = _generate(model, proc, rows)
    for ok, g, r in zip(forced_ok, gen, rows):
        if ok: assert g == r["answer"], (g, r["answer"])


def _real_style_dir(tmp_path, proc, **pre):
    """A tiny checkpoint laid out like a downloaded Qwen3-VL: config + weights, tokenizer files and a
    preprocessor_config.json in the hub's format (no heed_processor.json)."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration
    tok = proc.tokenizer
    tid = tok.convert_tokens_to_ids
    cfg = Qwen3VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=32, pad_token_id=tok.pad_token_id,
                         rope_parameters=dict(rope_type="default", rope_theta=5e6, mrope_section=[6, 5, 5], mrope_interleaved=True)),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16, spatial_merge_size=2,
                           temporal_patch_size=2, out_hidden_size=64, num_position_embeddings=256, deepstack_visual_indexes=[0]),
        image_token_id=tid("<|image_pad|>"), video_token_id=tid("<|video_pad|>"),
        vision_start_token_id=tid("<|vision_start|>"), vision_end_token_id=tid("<|vision_end|>"))
    torch.manual_seed(0)
    d = tmp_path / "Qwen3-VL-tiny"
    Qwen3VLForConditionalGeneration(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    p = {"size": {"longest_edge": 16777216, "shortest_edge": 65536}, "patch_size": 16, "temporal_patch_size": 2,
         "merge_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
         "processor_class": "Qwen3VLProcessor", "image_processor_type": "Qwen2VLImageProcessorFast"}
    p.update(pre)
    (d / "preprocessor_config.json").write_text(json.dumps(p))
    return d


def test_load_teacher_reads_a_real_style_checkpoint(tmp_path, data):
    proc = VLProcessor(build_tokenizer(), build_image_processor())
    d = _real_style_dir(tmp_path, proc)
    model, p2 = load_teacher(d)
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration" and not model.training
    assert p2.max_length == 8192  # no heed_processor.json: a long default for real models
    batch = AnswerCollator(p2)(_rows(data, 2))
    # the hub preprocessor's minimum of 65536 pixels upsamples 128 px to 256 px: 8x8 merged tokens per image
    assert batch["image_grid_thw"].tolist() == [[1, 16, 16]] * 2
    assert int(batch["mm_token_type_ids"][0].sum()) == 64
    assert torch.isfinite(model(**batch).loss)
    outs = _generate(model, p2, _rows(data, 2), max_new_tokens=3)
    assert len(outs) == 2 and all(isinstance(o, str) for o in outs)


def test_load_teacher_rejects_mismatches(tmp_path):
    proc = VLProcessor(build_tokenizer(), build_image_processor())
    d = _real_style_dir(tmp_path, proc, patch_size=14)
    with pytest.raises(ValueError, match="patch/merge 14/2 differ from the vision tower's 16/2"):
        load_teacher(d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["image_token_id"] = 3
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="config.image_token_id is 3"):
        load_teacher(d)


def test_save_load_round_trip_is_exact(tmp_path, data):
    model, proc = build_toy_teacher(seed=5)
    save_teacher(model, proc, tmp_path / "t")
    save_teacher(model, proc, tmp_path / "t")  # overwriting an existing checkpoint works
    m2, p2 = load_teacher(tmp_path / "t")
    b = AnswerCollator(proc)(_rows(data, 3))
    with torch.no_grad():
        torch.testing.assert_close(model(**b).logits, m2(**AnswerCollator(p2)(_rows(data, 3))).logits)
    assert _generate(model, proc, _rows(data, 3)) == _generate(m2, p2, _rows(data, 3))
    assert not list(tmp_path.glob(".*.tmp"))


def test_collator_errors_name_the_example(data):
    proc = VLProcessor(build_tokenizer(), build_image_processor())
    rows = _rows(data, 2)
    bad = dict(rows[1], question="")
    with pytest.raises(ValueError, match=f"example {rows[1]['id']}: question"):
        AnswerCollator(proc)([rows[0], bad])
    with pytest.raises(ValueError, match=f"example {rows[0]['id']}: answer"):
        AnswerCollator(proc)([dict(rows[0], answer=None), rows[1]])
    with pytest.raises(ValueError, match="got a ndarray, expected a PIL image"):
        AnswerCollator(proc)([dict(rows[0], image=np.zeros((8, 8, 3)))])
