"""heed.hybrid: the student against its teacher loaded from a local checkpoint directory, cached decoding, padding,
generate, save/load."""
import pytest
import torch
from transformers import DynamicCache, Qwen3VLForConditionalGeneration

from heed.hybrid import (MAMBA_DEFAULTS, Qwen3VLHybridForConditionalGeneration, cache_nbytes, hybridize, mamba_settings,
                         tiny_qwen3vl_config)
from heed.mamba2 import GATES, Mamba2Mixer

N_LAYERS = 8
# every gate at the key/value width, the old stored layout, and the repetition before the conv
STUDENTS = [dict(gate=g, xb="kv") for g in GATES] + [dict(gate="new", xb="query"), dict(xb="kv_preconv")]


def save_load(model, path, cls=Qwen3VLForConditionalGeneration, **kw):
    model.save_pretrained(path)
    return cls.from_pretrained(path, **kw).eval()


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    "A tiny Qwen3-VL written to disk: tests load it as a real Qwen3-VL-8B checkpoint directory would be loaded."
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher")
    Qwen3VLForConditionalGeneration(tiny_qwen3vl_config(num_layers=N_LAYERS)).save_pretrained(path)
    return path


def load_teacher(path, **kw):
    torch.manual_seed(0)  # hybridize draws the mixers' fresh parameters (z, dt rows) from the global generator
    return Qwen3VLForConditionalGeneration.from_pretrained(path, **kw).eval()


def prompt(cfg, n_text=6, grid=(1, 4, 4), n_after=3, seed=0, image=True):
    g = torch.Generator().manual_seed(seed)
    V = cfg.text_config.vocab_size
    parts = [torch.randint(0, V - 8, (n_text,), generator=g)]
    if image:
        n_img = grid[0] * grid[1] * grid[2] // 4
        parts += [torch.tensor([cfg.vision_start_token_id]), torch.full((n_img,), cfg.image_token_id), torch.tensor([cfg.vision_end_token_id])]
    parts.append(torch.randint(0, V - 8, (n_after,), generator=g))
    ids = torch.cat(parts)[None]
    out = dict(input_ids=ids, attention_mask=torch.ones_like(ids))
    if image:
        out.update(pixel_values=torch.randn(grid[0] * grid[1] * grid[2], 3 * 2 * 16 * 16, generator=g),
                   image_grid_thw=torch.tensor([grid]), mm_token_type_ids=(ids == cfg.image_token_id).int())
    return out


@pytest.mark.parametrize("kw", STUDENTS)
def test_no_mamba_layout_reproduces_teacher_exactly(teacher_dir, tmp_path, kw):
    teacher = load_teacher(teacher_dir)
    student = hybridize(teacher, attention_layers=list(range(N_LAYERS)), **kw).eval()
    assert student.config.text_config.mamba_layers == []
    x = prompt(teacher.config)
    with torch.no_grad():
        t, s = teacher(**x).logits, student(**x).logits
        assert torch.equal(t, s)
        again = save_load(student, tmp_path, Qwen3VLHybridForConditionalGeneration)
        assert torch.equal(again(**x).logits, t)


@pytest.mark.parametrize("layout,kw", [(None, {}), ([0, 5], {}), (0.5, {})] + [(None, kw) for kw in STUDENTS])
def test_prefill_then_step_decode_equals_full_forward(teacher_dir, layout, kw):
    "fp64 so that the comparison is about the cache logic, not rounding. Every gate and x/B layout."
    student = hybridize(load_teacher(teacher_dir, dtype=torch.float64), layout, **kw).eval()
    with torch.no_grad():   # conv filters that are not the identity, so the decode path's conv is checked too
        for i in student.mamba_layers: student.model.language_model.layers[i].self_attn.conv1d.weight.normal_(0, 0.5)
    x = prompt(student.config, n_text=5, n_after=12)
    ids = x["input_ids"]
    L, k = ids.shape[1], ids.shape[1] - 9            # prefill holds the image, 9 tokens decoded one by one
    with torch.no_grad():
        full = student(**x).logits
        cache = DynamicCache(config=student.config)
        pre = {**x, "input_ids": ids[:, :k], "attention_mask": x["attention_mask"][:, :k], "mm_token_type_ids": x["mm_token_type_ids"][:, :k]}
        out = student(**pre, cache=cache, use_cache=True)
        logits = [out.logits]
        for t in range(k, L):
            logits.append(student(input_ids=ids[:, t:t + 1], cache=cache, use_cache=True).logits)
    torch.testing.assert_close(torch.cat(logits, 1), full, rtol=0, atol=1e-9)
    assert cache.get_seq_length() == L
    for i in student.mamba_layers:                       # no keys or values written by Mamba layers
        assert not hasattr(cache.layers[i], "keys") or cache.layers[i].keys is None


# eager attention in float64 turns a fully padded query row into NaN (its float64 mask minimum becomes -inf in its
# float32 softmax) and the next attention layer spreads it: a transformers limitation, so eager is checked in float32.
@pytest.mark.parametrize("attn_impl,dtype,tol", [("sdpa", torch.float64, 1e-9), ("eager", torch.float32, 2e-5)])
@pytest.mark.parametrize("kw", [{}, dict(gate="none"), dict(gate="grouped"), dict(gate="new", xb="query")])
def test_left_padded_batch_equals_one_by_one(teacher_dir, attn_impl, dtype, tol, kw):
    student = hybridize(load_teacher(teacher_dir, dtype=dtype, attn_implementation=attn_impl), **kw).eval()
    cfg = student.config
    rows = [prompt(cfg, n_text=n, seed=n, image=False)["input_ids"][0] for n in (3, 11, 7)]
    L = max(len(r) for r in rows)
    pad_id = cfg.text_config.pad_token_id
    ids = torch.full((3, L), pad_id); mask = torch.zeros(3, L, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, L - len(r):] = r; mask[i, L - len(r):] = 1
    gen = dict(max_new_tokens=5, do_sample=False, pad_token_id=pad_id)
    with torch.no_grad():
        # positions count real tokens only, as generate() does: RoPE at other absolute positions would round differently
        batch_logits = student(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
        batch_gen = student.generate(input_ids=ids, attention_mask=mask, **gen)
        for i, r in enumerate(rows):
            alone = student(input_ids=r[None]).logits[0]
            torch.testing.assert_close(batch_logits[i, L - len(r):], alone, rtol=tol, atol=tol)
            alone_gen = student.generate(input_ids=r[None], attention_mask=torch.ones(1, len(r), dtype=torch.long), **gen)
            new = alone_gen[0, len(r):]        # generation alone may stop at eos; the batch row then continues with pads
            assert torch.equal(batch_gen[i, L:L + len(new)], new)
            assert (batch_gen[i, L + len(new):] == pad_id).all()


@pytest.mark.parametrize("kw", STUDENTS)
def test_generate_with_image_matches_uncached_and_mamba_state_is_constant(teacher_dir, kw):
    student = hybridize(load_teacher(teacher_dir), **kw).eval()
    x = prompt(student.config)
    c = student.config   # a random student may emit an image token; re-read uncached it would ask for image features
    gen = dict(max_new_tokens=8, do_sample=False, pad_token_id=c.text_config.pad_token_id,
               suppress_tokens=[c.image_token_id, c.video_token_id, c.vision_start_token_id, c.vision_end_token_id])
    with torch.no_grad():
        out = student.generate(**x, **gen, return_dict_in_generate=True)
        assert torch.equal(out.sequences, student.generate(**x, **gen, use_cache=False))
    cache = out.cache if hasattr(out, "cache") else out.past_key_values
    assert cache.get_seq_length() == out.sequences.shape[1] - 1
    per_layer = [cache_nbytes(cache, [i]) for i in range(N_LAYERS)]
    short = DynamicCache(config=student.config)
    with torch.no_grad(): student(**prompt(student.config, n_text=1), cache=short, use_cache=True)
    for i in student.mamba_layers: assert cache_nbytes(short, [i]) == per_layer[i]      # independent of context
    for i in student.attention_layers: assert cache_nbytes(short, [i]) < per_layer[i]   # grows with context


@pytest.mark.parametrize("kw", STUDENTS)
def test_save_pretrained_from_pretrained_round_trip(teacher_dir, tmp_path, kw):
    student = hybridize(load_teacher(teacher_dir), [2, 7], chunk_size=16, d_conv=3, **kw).eval()
    with torch.no_grad():  # move the mixers away from their init so the round trip is not checked on defaults
        for p in student.parameters(): p.add_(0.01 * torch.randn_like(p))
    again = save_load(student, tmp_path, Qwen3VLHybridForConditionalGeneration)
    tc = again.config.text_config
    assert (tc.attention_layers, tc.mamba_layers) == ([2, 7], [0, 1, 3, 4, 5, 6])
    assert tc.heed_mamba == {**MAMBA_DEFAULTS, **kw, "d_conv": 3, "chunk_size": 16}
    assert again.config.architectures == ["Qwen3VLHybridForConditionalGeneration"]
    sd1, sd2 = student.state_dict(), again.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    m = again.model.language_model.layers[0].self_attn
    assert isinstance(m, Mamba2Mixer) and (m.d_conv, m.chunk_size, m.layer_idx) == (3, 16, 0)
    want = {**MAMBA_DEFAULTS, **kw}
    assert (m.gated, m.xb_heads is None, m.repeat_before_conv) == (want["gate"] != "none", want["xb"] == "query", want["xb"] == "kv_preconv")
    assert m.gate_heads == {"none": None, "grouped": student.config.text_config.num_key_value_heads}.get(want["gate"], m.n_heads)
    x = prompt(student.config)
    with torch.no_grad(): assert torch.equal(again(**x).logits, student(**x).logits)


def test_student_trains(teacher_dir):
    teacher = load_teacher(teacher_dir)
    student = hybridize(teacher).train()
    x = prompt(student.config)
    loss = student(**x, labels=x["input_ids"]).loss
    loss.backward()
    for i in student.mamba_layers:
        g = student.model.language_model.layers[i].self_attn.in_proj.weight.grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())   # the teacher is a separate copy


def test_hybridize_refuses_bad_inputs(teacher_dir):
    teacher = load_teacher(teacher_dir)
    with pytest.raises(ValueError, match="out of range"): hybridize(teacher, [3, 99])
    with pytest.raises(ValueError, match="listed twice"): hybridize(teacher, [3, 3])
    with pytest.raises(TypeError, match="expects a Qwen3VLForConditionalGeneration"): hybridize(teacher.model)
    with pytest.raises(ValueError, match="needs a conv/SSM slot"):
        from transformers import DynamicCache as DC
        s = hybridize(teacher)
        s(input_ids=torch.tensor([[1, 2, 3]]), cache=DC(), use_cache=True)   # a cache built without the config


def test_student_saved_before_the_kv_layout_loads_or_says_why(teacher_dir, tmp_path):
    "A folder whose heed_mamba predates xb/gate loads as the old layout; an unknown layout is refused by name."
    import json
    old = hybridize(load_teacher(teacher_dir), gate="new", xb="query").eval()
    old.save_pretrained(tmp_path)
    cfg_path = tmp_path / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["text_config"]["heed_mamba"] = dict(d_conv=4, chunk_size=64, bc_norm=True)
    cfg_path.write_text(json.dumps(cfg))
    again = Qwen3VLHybridForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert mamba_settings(again.config.text_config) == dict(d_conv=4, chunk_size=64, bc_norm=True, xb="query", gate="new")
    x = prompt(old.config)
    with torch.no_grad(): assert torch.equal(again(**x).logits, old(**x).logits)
    cfg["text_config"]["heed_mamba"]["xb"] = "full"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="heed_mamba xb='full': expected one of"):
        Qwen3VLHybridForConditionalGeneration.from_pretrained(tmp_path)
