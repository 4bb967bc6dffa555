"""heed.align beyond the notebook: loss properties on random tensors, residual capture on a tiny
Qwen3-VL with DeepStack and mixed image sizes, and the gradient reaching the student only."""
import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from _toyvl import batch_for, noise_image, tiny_qwen3vl, word_image
from heed.align import (Residuals, alignment_weights, capture_residuals, decoder_parts, distillation_losses, kd_loss,
                        mamba_layers_of, residual_alignment_loss, teacher_forward)
from heed.density import DensitySettings


def _rand(seed, B=2, L=5, D=6, layers=(0, 2)):
    g = torch.Generator().manual_seed(seed)
    t = {k: torch.randn(B, L, D, generator=g) * (k + 1) for k in layers}
    s = {k: v + 0.3 * torch.randn(B, L, D, generator=g) for k, v in t.items()}
    return s, t, g


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 3), st.integers(1, 7))
def test_uniform_weights_are_the_plain_masked_mean(seed, B, L):
    s, t, g = _rand(seed, B, L)
    mask = torch.rand(B, L, generator=g) > 0.3
    mask[0, 0] = True
    per_layer = [(((s[k] - t[k]) ** 2).sum(-1) / ((t[k] ** 2).sum(-1) + 1e-6))[mask].mean() for k in (0, 2)]
    want = sum(per_layer) / 2
    torch.testing.assert_close(residual_alignment_loss(s, t, None, mask), want)
    torch.testing.assert_close(residual_alignment_loss(s, t, torch.ones(B, L), mask), want)
    torch.testing.assert_close(residual_alignment_loss(s, t, torch.full((B, L), 3.7), mask), want)  # a weighted *mean*


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(1e-3, 1e3))
def test_relative_error_ignores_a_global_rescaling(seed, c):
    s, t, g = _rand(seed)
    w = torch.rand(2, 5, generator=g)
    a = residual_alignment_loss(s, t, w, eps=0)
    b = residual_alignment_loss({k: v * c for k, v in s.items()}, {k: v * c for k, v in t.items()}, w, eps=0)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_hand_computed_batch_with_padding():
    # sample 0: errors 1 (|t|²=1), 0.25 (|t|²=4); sample 1: one real token with error 4/4 = 1, one pad with a huge error
    t = {1: torch.tensor([[[1., 0.], [0., 2.]], [[2., 0.], [0., 0.]]])}
    s = {1: torch.tensor([[[0., 0.], [0., 1.]], [[0., 0.], [99., 99.]]])}
    mask = torch.tensor([[1, 1], [1, 0]])
    torch.testing.assert_close(residual_alignment_loss(s, t, mask=mask, eps=0), torch.tensor(2.25 / 3))
    w = torch.tensor([[0.5, 1.5], [1.0, 123.0]])  # the pad's weight must not matter
    torch.testing.assert_close(residual_alignment_loss(s, t, w, mask, eps=0), torch.tensor((0.5 + 0.375 + 1.0) / 3))


def test_density_weights_move_the_loss_towards_dense_tokens():
    t = {0: torch.ones(1, 4, 3)}
    s = {0: torch.ones(1, 4, 3)}
    s[0][0, 3] += 1.0  # the student is wrong only on token 3
    uniform = residual_alignment_loss(s, t)
    heavy = residual_alignment_loss(s, t, torch.tensor([[0.2, 0.2, 0.2, 3.4]]))
    light = residual_alignment_loss(s, t, torch.tensor([[1.3, 1.3, 1.3, 0.1]]))
    assert light < uniform < heavy


def test_kd_is_a_mean_per_answer_token_not_batchmean():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 6, 11, generator=g), torch.randn(2, 6, 11, generator=g)
    mask = torch.tensor([[0, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 0]])
    for T in (0.5, 1.0, 3.0):
        sel = mask.bool()
        kl = F.kl_div(F.log_softmax(s[sel] / T, -1), F.log_softmax(t[sel] / T, -1), log_target=True, reduction="none").sum(-1)
        torch.testing.assert_close(kd_loss(s, t, mask, T), T ** 2 * kl.mean())
    # duplicating every sequence (more answer tokens, same per-token KL) leaves the loss unchanged
    torch.testing.assert_close(kd_loss(torch.cat([s, s]), torch.cat([t, t]), torch.cat([mask, mask])), kd_loss(s, t, mask))
    batchmean = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean")
    assert batchmean > 2 * kd_loss(s, t)  # batchmean sums over the 6 positions of each sequence


def test_kd_temperature_scaling_keeps_gradients_comparable():
    g = torch.Generator().manual_seed(1)
    t = torch.randn(1, 4, 50, generator=g)
    base = torch.randn(1, 4, 50, generator=g)
    norms = []
    for T in (4.0, 8.0, 16.0):
        s = base.clone().requires_grad_()
        kd_loss(s, t, temperature=T).backward()
        norms.append(s.grad.norm().item())
    assert max(norms) / min(norms) < 1.3, norms  # with T² the gradient tends to a T-independent limit


def test_kd_and_alignment_never_send_gradient_to_teacher_tensors():
    tl = torch.randn(1, 3, 5, requires_grad=True)
    sl = torch.randn(1, 3, 5, requires_grad=True)
    th = {0: torch.randn(1, 3, 4, requires_grad=True)}
    sh = {0: torch.randn(1, 3, 4, requires_grad=True)}
    (kd_loss(sl, tl) + residual_alignment_loss(sh, th)).backward()
    assert tl.grad is None and th[0].grad is None
    assert sl.grad.abs().sum() > 0 and sh[0].grad.abs().sum() > 0


# ---------- on the tiny Qwen3-VL ----------

@pytest.fixture(scope="module")
def teacher():
    return tiny_qwen3vl(seed=0)


@pytest.fixture(scope="module")
def batch():
    return batch_for([[word_image((128, 128), xy=(4, 4))], [noise_image((64, 96)), word_image((96, 64), "x", xy=(36, 30))]],
                     pad_left=True, seed=3)


def test_capture_records_deepstack_and_pre_norm_output(teacher, batch):
    layers, norm = decoder_parts(teacher)
    raw = {}
    hooks = [layers[i].register_forward_hook(lambda m, a, o, i=i: raw.__setitem__(i, o)) for i in range(4)]
    try:
        with torch.no_grad(), capture_residuals(teacher) as r:
            out = teacher.model(**batch, output_hidden_states=True)
    finally:
        for h in hooks: h.remove()
    vis = batch["mm_token_type_ids"].bool()
    assert r.layers == [0, 1, 2, 3] and r.num_layers == 4 and r.mamba_layers is None
    for i in range(3):
        assert r.outputs[i] is r.inputs[i + 1]
    for i in (0, 1):  # DeepStack layers: our stream = layer output + vision features at image tokens only
        d = r.outputs[i] - raw[i]
        assert d[vis].abs().amax(-1).min() > 0 and d[~vis].abs().max() == 0
        torch.testing.assert_close(out.hidden_states[i + 1], raw[i])
    torch.testing.assert_close(r.outputs[2], raw[2])  # no DeepStack after layer 2
    torch.testing.assert_close(norm(r.outputs[3]), out.last_hidden_state)
    assert not torch.allclose(out.hidden_states[4], r.outputs[3])  # the last hidden state is normed


def test_capture_only_requested_layers_and_default_mamba_layers(teacher, batch):
    student = copy.deepcopy(teacher)
    student.config.text_config.mamba_layers = [2, 0]
    assert mamba_layers_of(student) == [0, 2]
    with torch.no_grad(), capture_residuals(student) as r:
        student(**batch)
    assert sorted(r.outputs) == [0, 2] and sorted(r.inputs) == [0, 2] and r.mamba_layers == [0, 2]
    with torch.no_grad(), capture_residuals(teacher, [1]) as rt:
        teacher(**batch)
    assert sorted(rt.outputs) == [1]
    tout = teacher_forward(teacher, batch)
    assert tout.residuals.layers == [0, 1, 2, 3]
    # default layers: the student's Mamba layers; an identical copy aligns perfectly
    torch.testing.assert_close(residual_alignment_loss(r, tout.residuals, mask=batch["attention_mask"]), torch.tensor(0.))
    with pytest.raises(ValueError, match="not captured"):
        residual_alignment_loss(r, tout.residuals, layers=[1])
    with pytest.raises(ValueError, match="out of range"):
        with capture_residuals(teacher, [7]):
            pass


def test_teacher_runs_once_without_graph(teacher, batch):
    calls = []
    h = decoder_parts(teacher)[0][0].register_forward_hook(lambda *a: calls.append(1))
    try:
        tout = teacher_forward(teacher, batch, [1, 3])
    finally:
        h.remove()
    assert len(calls) == 1
    assert not tout.logits.requires_grad and all(not v.requires_grad for v in tout.residuals.outputs.values())
    assert tout.vision is not None and tout.vision.merged.shape[0] == int(batch["mm_token_type_ids"].sum())


@pytest.mark.parametrize("weighting", ["uniform", "heed"])
@pytest.mark.parametrize("method", ["pixel", "feature", "subpatch"])
def test_no_gradient_reaches_the_teacher(teacher, batch, weighting, method):
    for p in teacher.parameters():
        p.grad = None
    assert all(p.requires_grad for p in teacher.parameters())  # the teacher is not frozen: no_grad must do the work
    student = copy.deepcopy(teacher).train()
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.02 * torch.randn_like(p))
    student.config.text_config.mamba_layers = [1, 3]
    labels = torch.full_like(batch["input_ids"], -100); labels[:, -2:] = batch["input_ids"][:, -2:]
    losses = distillation_losses(student, teacher, batch, labels, weighting=weighting, density=DensitySettings(method))
    losses.total.backward()
    assert all(p.grad is None for p in teacher.parameters())
    got = [p.grad is not None and p.grad.abs().sum() > 0 for p in student.model.language_model.layers[3].parameters()]
    assert all(got)
    w, vis = losses.weights, batch["mm_token_type_ids"].bool()
    if weighting == "uniform":
        assert torch.equal(w, torch.ones_like(w))
    else:
        assert torch.equal(w[~vis], torch.ones(int((~vis).sum())))
        for lo, hi in [(0, 16), (16, 22), (22, 28)]:
            assert abs(w[vis][lo:hi].mean().item() - 1) < 1e-5


def test_heed_weights_text_constant_and_weightings(teacher, batch):
    tout = teacher_forward(teacher, batch, [0])
    w = alignment_weights(batch, "heed", tout.vision, DensitySettings("feature", text_weight=0.25), model=teacher)
    vis = batch["mm_token_type_ids"].bool()
    assert torch.equal(w[~vis], torch.full((int((~vis).sum()),), 0.25))
    with pytest.raises(ValueError, match="expected one of"):
        alignment_weights(batch, "dense")
    text_only = {"input_ids": batch["input_ids"]}
    assert torch.equal(alignment_weights(text_only, "heed"), torch.ones(batch["input_ids"].shape))


def test_students_without_layout_need_explicit_layers(teacher, batch):
    with pytest.raises(ValueError, match="pass layers="):
        distillation_losses(copy.deepcopy(teacher), teacher, batch)
    out = distillation_losses(copy.deepcopy(teacher), teacher, batch, layers=[0, 1, 2, 3]).terms
    assert out["align"].item() < 1e-10 and abs(out["kd"].item()) < 1e-6  # an identical student has nothing to learn


def test_padding_garbage_reaches_neither_loss_nor_gradient():
    s = torch.tensor([[[0., 0.], [0., 1.], [float("nan"), float("inf")]]], requires_grad=True)
    t = torch.tensor([[[1., 0.], [0., 2.], [0., 0.]]])
    loss = residual_alignment_loss({0: s}, {0: t}, mask=torch.tensor([[1, 1, 0]]), eps=0)
    loss.backward()
    torch.testing.assert_close(loss, torch.tensor(0.625))
    assert torch.isfinite(s.grad).all() and s.grad[0, 2].abs().sum() == 0
