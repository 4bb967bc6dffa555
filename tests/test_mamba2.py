"""heed.mamba2: agreement with transformers' Mamba2Mixer, padding through every mask form, cached prefill/decode,
gradients, bf16, initialisation from attention."""
import pytest
import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLTextConfig
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextAttention

from heed.mamba2 import GATES, Mamba2Mixer, Mamba2State, padding_mask_from_attention_mask


def text_config(**kw):
    base = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_hidden_layers=1,
                intermediate_size=64, vocab_size=64, rope_parameters=dict(rope_type="default", rope_theta=1e4, mrope_section=[2, 1, 1]))
    return Qwen3VLTextConfig(**{**base, **kw})


def randomize(m: torch.nn.Module, seed=0):
    "Random values everywhere (norm weights, D, conv) so that no part of the mixer is checked only at its init value."
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name == "A_log": p.copy_(torch.rand(p.shape, generator=g) * 2)
            elif name == "dt_bias": p.copy_(torch.randn(p.shape, generator=g) - 2)
            else: p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim > 1 else 1.0))
    return m


@pytest.mark.parametrize("groups", [4, 2, 1])
def test_agrees_with_transformers_mamba2_mixer(groups):
    """Same weights in transformers' Mamba2Mixer (pure-torch path here) and ours: an independent implementation of the block.
    transformers normalises per B/C group; with groups = heads that is our per-head norm, otherwise we set the grouping."""
    from transformers import Mamba2Config
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer as HFMixer
    h, p, n, d = 4, 8, 16, 32
    cfg = Mamba2Config(hidden_size=d, num_heads=h, head_dim=p, state_size=n, n_groups=groups, expand=1, conv_kernel=4,
                       chunk_size=16, use_bias=False, use_conv_bias=True, layer_norm_epsilon=1e-5, num_hidden_layers=1)
    hf = HFMixer(cfg, layer_idx=0).eval()
    randomize(hf, 1)
    ours = Mamba2Mixer(d, h, p, n, n_groups=groups, d_conv=4, chunk_size=8, norm_eps=1e-5,
                       norm_group_size=None if groups == h else h * p // groups)
    with torch.no_grad():
        for a, b in [("in_proj.weight", "in_proj.weight"), ("conv1d.weight", "conv1d.weight"), ("conv1d.bias", "conv1d.bias"),
                     ("dt_bias", "dt_bias"), ("A_log", "A_log"), ("D", "D"), ("norm_weight", "norm.weight"), ("out_proj.weight", "out_proj.weight")]:
            ours.get_parameter(a).copy_(hf.get_parameter(b))
    u = torch.randn(2, 45, d, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y_hf = hf(u)
        y, _ = ours.mix(u)
    torch.testing.assert_close(y, y_hf, rtol=1e-4, atol=1e-5)


def causal_masks(pad2d: torch.Tensor, q_len: int):
    "The three mask forms a decoder layer may pass for the last q_len tokens of a (batch, kv_len) padding mask."
    kv = pad2d.shape[1]
    causal = torch.ones(kv, kv, dtype=torch.bool).tril()[-q_len:]
    b4 = causal[None, None] & pad2d.bool()[:, None, None, :]
    f4 = torch.zeros(b4.shape).masked_fill(~b4, torch.finfo(torch.float32).min)
    return {"2d": pad2d, "bool4d": b4, "float4d": f4}


@pytest.mark.parametrize("form", ["2d", "bool4d", "float4d"])
def test_left_padded_batch_with_cache_equals_one_by_one(form):
    torch.manual_seed(0)
    cfg = text_config(); cfg.layer_types = ["linear_attention"]
    mx = randomize(Mamba2Mixer.from_attention(Qwen3VLTextAttention(cfg, 0)), 3).double()
    lens, L, n_new = [7, 4, 9], 9, 3
    seqs = [torch.randn(1, l + n_new, 32, dtype=torch.float64) for l in lens]
    ref = [mx(hidden_states=s, attention_mask=None)[0] for s in seqs]
    batch = torch.full((3, L, 32), float("nan"), dtype=torch.float64)      # padded slots hold NaN, as after a fully masked attention row
    pad = torch.zeros(3, L, dtype=torch.long)
    for i, (s, l) in enumerate(zip(seqs, lens)):
        batch[i, L - l:] = s[0, :l]; pad[i, L - l:] = 1
    cache = DynamicCache(config=cfg)
    out = mx(hidden_states=batch, attention_mask=causal_masks(pad, L)[form], cache=cache)[0]
    for i, l in enumerate(lens):
        torch.testing.assert_close(out[i, L - l:], ref[i][0, :l], rtol=0, atol=1e-10)
    for t in range(n_new):  # decode with the cache: the pads stay in the attention mask, never in the state
        pad = torch.cat([pad, torch.ones(3, 1, dtype=torch.long)], 1)
        tok = torch.stack([s[0, l + t] for s, l in zip(seqs, lens)])[:, None]
        o = mx(hidden_states=tok, attention_mask=causal_masks(pad, 1)[form], cache=cache)[0]
        for i, l in enumerate(lens):
            torch.testing.assert_close(o[i, 0], ref[i][0, l + t], rtol=0, atol=1e-10)


def test_padding_never_reaches_state_even_mid_batch_decode():
    "A padded decode token (mask False) leaves both states unchanged and outputs zero."
    torch.manual_seed(0)
    mx = randomize(Mamba2Mixer(16, 2, 4, 3, n_groups=1), 4).double()
    _, s = mx.mix(torch.randn(2, 5, 16, dtype=torch.float64))
    y, s2 = mx.mix(torch.randn(2, 1, 16, dtype=torch.float64), s, mask=torch.tensor([[False], [True]]))
    assert torch.equal(s2.ssm[0], s.ssm[0]) and torch.equal(s2.conv[0], s.conv[0])
    assert not torch.equal(s2.ssm[1], s.ssm[1])
    assert torch.equal(y[0], torch.zeros_like(y[0]))


@pytest.mark.parametrize("gate", GATES)
def test_gradients_reach_every_parameter_and_are_finite_with_padding(gate):
    torch.manual_seed(0)
    mx = Mamba2Mixer.from_attention(Qwen3VLTextAttention(text_config(), 0), gate=gate)
    u = torch.randn(2, 20, 32, requires_grad=True)
    mask = torch.ones(2, 20, dtype=torch.bool); mask[0, :6] = False
    y, st = mx.mix(u, mask=mask)
    (y.square().mean() + st.ssm.square().mean()).backward()
    for name, p in mx.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert torch.equal(u.grad[0, :6], torch.zeros_like(u.grad[0, :6]))  # padded inputs influence nothing


def test_bf16_runs_close_to_fp32():
    torch.manual_seed(0)
    mx = Mamba2Mixer.from_attention(Qwen3VLTextAttention(text_config(), 0))
    u = torch.randn(2, 70, 32)
    y32, s32 = mx.mix(u)
    ybf, sbf = mx.to(torch.bfloat16).mix(u.to(torch.bfloat16))
    assert ybf.dtype == torch.bfloat16 and sbf.ssm.dtype == torch.float32
    assert (ybf.float() - y32).norm() / y32.norm() < 0.05


@pytest.mark.parametrize("xb", ["kv", "kv_preconv", "query"])
@pytest.mark.parametrize("gate", GATES)
def test_from_attention_with_bias_and_gqa_mapping(xb, gate):
    torch.manual_seed(0)
    attn = Qwen3VLTextAttention(text_config(attention_bias=True, num_attention_heads=6, num_key_value_heads=2), 0)
    mx = Mamba2Mixer.from_attention(attn, identity_conv=False, xb=xb, gate=gate)
    di, dz = 6 * 8, {"none": 0, "grouped": 2 * 8}.get(gate, 6 * 8)   # grouped: one gate head per kv head
    z, x, B, C, dt = mx.in_proj.weight.split([mx.d_z, mx.d_x, mx.d_B, di, 6])
    zb, xb_, Bb, Cb, dtb = mx.in_proj.bias.split([mx.d_z, mx.d_x, mx.d_B, di, 6])
    assert mx.d_z == dz and z.shape[0] == dz
    if xb == "query":                     # the old layout: query head h holds a copy of kv head h // 3
        for head in range(6):
            kv = head // 3
            assert torch.equal(x[head * 8:(head + 1) * 8], attn.v_proj.weight[kv * 8:(kv + 1) * 8])
            assert torch.equal(B[head * 8:(head + 1) * 8], attn.k_proj.weight[kv * 8:(kv + 1) * 8])
            assert torch.equal(Bb[head * 8:(head + 1) * 8], attn.k_proj.bias[kv * 8:(kv + 1) * 8])
    else:                                 # x and B are the key/value projections themselves
        assert torch.equal(x, attn.v_proj.weight) and torch.equal(B, attn.k_proj.weight) and torch.equal(Bb, attn.k_proj.bias)
        assert mx.xb_heads == 2 and mx.repeat_before_conv == (xb == "kv_preconv")
    assert torch.equal(C, attn.q_proj.weight) and torch.equal(Cb, attn.q_proj.bias)
    if gate == "from_attention":
        v_rep = attn.v_proj.weight.view(2, 8, 32).repeat_interleave(3, 0).reshape(48, 32)
        torch.testing.assert_close(z, 0.5 * (attn.o_proj.weight.T + v_rep), rtol=0, atol=0)
    assert torch.equal(mx.B_norm_weight, attn.k_norm.weight)
    torch.testing.assert_close(mx.C_norm_weight, attn.q_norm.weight * 8 ** -0.5)
    assert not torch.equal(mx.conv1d.weight[:, 0, :-1], torch.zeros_like(mx.conv1d.weight[:, 0, :-1]))  # default conv init kept


@pytest.mark.parametrize("xb", ["kv", "kv_preconv"])
def test_kv_width_equals_stored_repetition_with_identity_conv(xb):
    "At conversion (identity conv) every layout is the same function: the run-time repetition equals the stored one."
    torch.manual_seed(0)
    attn = Qwen3VLTextAttention(text_config(num_attention_heads=6, num_key_value_heads=2), 0)
    ref = Mamba2Mixer.from_attention(attn, xb="query").double()
    torch.manual_seed(0)
    mx = Mamba2Mixer.from_attention(attn, xb=xb).double()
    with torch.no_grad():                 # the parts with no attention counterpart: the same draws in both
        for name in ("dt_bias", "A_log"): mx.get_parameter(name).copy_(ref.get_parameter(name))
        mx.in_proj.weight[:48] = ref.in_proj.weight[:48]; mx.in_proj.weight[-6:] = ref.in_proj.weight[-6:]   # z and dt rows
    u = torch.randn(2, 37, 32, dtype=torch.float64)
    torch.testing.assert_close(mx.mix(u)[0], ref.mix(u)[0], rtol=0, atol=1e-12)
    n_ref, n = (sum(p.numel() for p in m.parameters()) for m in (ref, mx))
    assert n_ref - n == 32 * 2 * (48 - 16) + (0 if xb == "kv_preconv" else 2 * (48 - 16) * 5)   # stored rows (+ conv channels)


def test_state_alloc_matches_and_is_length_independent():
    mx = Mamba2Mixer(32, 4, 8, 16, n_groups=2, d_conv=4)
    sizes = {l: mx.mix(torch.randn(1, l, 32))[1].nbytes for l in (1, 10, 300)}
    assert len(set(sizes.values())) == 1 and sizes[1] == Mamba2State.alloc(1, mx).nbytes


def test_padding_mask_rejects_mismatched_4d():
    with pytest.raises(ValueError, match="does not fit"):
        padding_mask_from_attention_mask(torch.ones(1, 1, 3, 2, dtype=torch.bool), 3)
