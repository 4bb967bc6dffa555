"""heed.ssd: the chunked scan against the sequential reference, against transformers' own Mamba-2 scan,
split prefill, gradients, bf16, and (on CUDA with mamba-ssm) the Triton kernel."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from heed.env import ssd_backend
from heed.ssd import ssd_chunked, ssd_reference, ssd_scan, ssd_step


def problem(b, l, h, p, g, n, dtype=torch.float64, seed=0, device="cpu"):
    "A random scan problem with outputs of order one (B, C scaled by 1/sqrt(n))."
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)
    pr = dict(x=r(b, l, h, p), dt=F.softplus(r(b, l, h) - 1), A=-(torch.rand(h, generator=gen, dtype=torch.float64) * 2 + 0.05),
              B=r(b, l, g, n) / n**0.5, C=r(b, l, g, n) / n**0.5, D=r(h), initial_state=r(b, h, p, n))
    return {k: v.to(device=device, dtype=dtype) for k, v in pr.items()}


shapes = st.tuples(st.integers(1, 3), st.integers(1, 150), st.sampled_from([(1, 1), (2, 1), (4, 2), (6, 3), (4, 4)]),
                   st.integers(1, 9), st.integers(1, 17), st.sampled_from([1, 3, 8, 16, 64]), st.booleans(), st.integers(0, 10**6))


@settings(max_examples=40, deadline=None, derandomize=True)
@given(shapes)
def test_chunked_equals_sequential_fp64(s):
    b, l, (h, g), p, n, Q, with_state, seed = s
    pr = problem(b, l, h, p, g, n, seed=seed)
    if not with_state: pr["initial_state"] = None
    yc, sc = ssd_chunked(chunk_size=Q, **pr)
    yr, sr = ssd_reference(**pr)
    torch.testing.assert_close(yc, yr, rtol=0, atol=1e-10)
    torch.testing.assert_close(sc, sr, rtol=0, atol=1e-10)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(shapes)
def test_chunked_fp32_matches_fp64_truth(s):
    b, l, (h, g), p, n, Q, with_state, seed = s
    pr = problem(b, l, h, p, g, n, seed=seed)
    if not with_state: pr["initial_state"] = None
    yr, sr = ssd_reference(**pr)
    yc, sc = ssd_chunked(chunk_size=Q, **{k: (v.float() if v is not None else None) for k, v in pr.items()})
    assert yc.dtype == torch.float32 and sc.dtype == torch.float32
    torch.testing.assert_close(yc.double(), yr, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sc.double(), sr, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("l,cuts,Q", [(100, [1, 37, 64], 16), (64, [64], 64), (9, [3, 4], 8), (50, [1] * 5, 7)])
def test_split_prefill_with_state_equals_one_pass(l, cuts, Q):
    pr = problem(2, l, 4, 5, 2, 6, seed=l)
    y_full, s_full = ssd_chunked(chunk_size=Q, **pr)
    state, ys, start = pr["initial_state"], [], 0
    for stop in [*[sum(cuts[:i + 1]) for i in range(len(cuts))], l]:
        part = {k: pr[k][:, start:stop] for k in ("x", "dt", "B", "C")}
        y, state = ssd_chunked(chunk_size=Q, A=pr["A"], D=pr["D"], initial_state=state, **part)
        ys.append(y); start = stop
    torch.testing.assert_close(torch.cat(ys, 1), y_full, rtol=0, atol=1e-10)
    torch.testing.assert_close(state, s_full, rtol=0, atol=1e-10)


def test_step_by_step_equals_scan():
    pr = problem(3, 21, 6, 4, 3, 5)
    y_full, s_full = ssd_chunked(chunk_size=8, **pr)
    state = pr["initial_state"]
    for t in range(21):
        y, state = ssd_step(pr["x"][:, t], pr["dt"][:, t], pr["A"], pr["B"][:, t], pr["C"][:, t], state, pr["D"])
        torch.testing.assert_close(y, y_full[:, t], rtol=0, atol=1e-10)
    torch.testing.assert_close(state, s_full, rtol=0, atol=1e-10)


@pytest.mark.parametrize("g,Q_ours,Q_hf,l", [(1, 64, 256, 300), (2, 16, 32, 70), (4, 8, 8, 33)])
def test_agrees_with_transformers_mamba2_scan(g, Q_ours, Q_hf, l):
    "transformers' Mamba-2 pure-torch chunk scan (segsum form, its own chunking) is an independent implementation."
    from transformers.models.mamba2.modeling_mamba2 import mamba2_chunk_scan
    pr = problem(2, l, 4, 8, g, 16, dtype=torch.float32, seed=g)
    y_hf, s_hf = mamba2_chunk_scan(pr["x"], pr["dt"], pr["A"], pr["B"], pr["C"], chunk_size=Q_hf, D=pr["D"],
                                   initial_states=pr["initial_state"], return_final_states=True)
    y, s = ssd_scan(chunk_size=Q_ours, backend="torch", **pr)
    torch.testing.assert_close(y, y_hf, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s, s_hf, rtol=1e-5, atol=1e-5)


def test_gradients_match_reference():
    pr = problem(2, 29, 4, 3, 2, 4)
    leaves = {k: v.clone().requires_grad_() for k, v in pr.items()}
    out = ssd_chunked(chunk_size=8, **leaves)
    loss = (out[0] ** 2).sum() + out[1].sum()
    g1 = torch.autograd.grad(loss, list(leaves.values()))
    leaves2 = {k: v.clone().requires_grad_() for k, v in pr.items()}
    out2 = ssd_reference(**leaves2)
    g2 = torch.autograd.grad((out2[0] ** 2).sum() + out2[1].sum(), list(leaves2.values()))
    for k, a, b in zip(leaves, g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=lambda m: f"grad of {k}: {m}")


def test_gradcheck_small():
    pr = problem(1, 7, 2, 2, 1, 3)
    names = list(pr)
    f = lambda *args: ssd_chunked(chunk_size=3, **dict(zip(names, args)))
    assert torch.autograd.gradcheck(f, tuple(v.requires_grad_() for v in pr.values()))


def test_bf16_inputs_accumulate_in_fp32():
    pr = problem(1, 200, 4, 8, 1, 16, seed=3)
    y64, s64 = ssd_reference(**pr)
    ybf, sbf = ssd_chunked(chunk_size=64, **{k: v.to(torch.bfloat16) for k, v in pr.items()})
    assert ybf.dtype == torch.bfloat16 and sbf.dtype == torch.float32
    # bf16 has 8 mantissa bits: the error is the rounding of inputs and output, not a drifting state
    rel = (sbf.double() - s64).norm() / s64.norm()
    assert rel < 2e-2, rel


def test_cpu_dispatch_is_torch_and_forced_triton_refuses():
    pr = problem(1, 10, 2, 2, 1, 2, dtype=torch.float32)
    assert ssd_backend(pr["x"].device) == "torch"
    with pytest.raises(ValueError, match="needs CUDA"):
        ssd_scan(backend="triton", **pr)


@pytest.mark.skipif(not (torch.cuda.is_available() and ssd_backend("cuda") == "triton"),
                    reason="needs a CUDA device and an importable mamba-ssm")
@pytest.mark.parametrize("l", [256, 1000])
def test_triton_matches_torch_on_cuda(l):
    pr = problem(2, l, 8, 64, 2, 64, dtype=torch.float32, device="cuda")
    y_t, s_t = ssd_scan(chunk_size=64, backend="triton", **pr)
    y_c, s_c = ssd_scan(chunk_size=64, backend="torch", **pr)
    torch.testing.assert_close(y_t, y_c, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(s_t.float(), s_c, rtol=1e-3, atol=1e-3)
