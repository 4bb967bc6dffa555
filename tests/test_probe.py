"""heed.probe: decile grouping and ratios on constructed cases, masking in a constructed model, residual drift,
captum attribution completeness, and the trained-model lookup."""
import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

from heed.hybrid import hybridize
from heed.probe import (answer_logprob, by_decile, density_deciles, encoder_outputs, image_features, layer_attribution,
                        masking_contribution, residual_drift, spatial_attribution_loss, top_bottom_ratio, trained_models,
                        visual_tokens)
from heed.synth import SynthConfig, make_example
from heed.teacher import AnswerCollator, build_toy_teacher

torch.set_num_threads(1)


# ---------------------------------------------------------------- deciles and ratios

def test_ratio_known_answer_unequal_images():
    "Images of different sizes, density levels shuffled inside each: deciles follow density, the ratio is the known 3.6."
    rng = np.random.default_rng(0)
    dens, vals, grp = [], [], []
    for i, n in enumerate(rng.integers(10, 40, 30)):
        d = rng.random(n)
        dens.append(d); grp.append(np.full(n, i))
    dens, grp = np.concatenate(dens), np.concatenate(grp)
    bins = density_deciles(dens)
    vals = np.where(bins == 9, 3.6, np.where(bins == 0, 1.0, 2.0))   # top 3.6, bottom 1, the rest in between
    r = top_bottom_ratio(vals, dens, grp, n_boot=500)
    assert r["ratio"] == pytest.approx(3.6) and r["lo"] == pytest.approx(3.6) and r["hi"] == pytest.approx(3.6)
    assert np.bincount(bins).min() >= len(dens) // 10 and np.bincount(bins).max() <= len(dens) // 10 + 1
    assert np.all(np.diff([dens[bins == k].max() for k in range(10)]) > 0)   # bins are ordered by density


def test_ratio_interval_covers_truth_and_tightens():
    "Noisy values with a true top/bottom ratio of 3: the 95% interval covers 3 and narrows with more images."
    def run(n_img, seed):
        rng = np.random.default_rng(seed)
        dens = rng.random((n_img, 16)); grp = np.repeat(np.arange(n_img), 16)
        true = 1 + 2 * (dens.reshape(-1) >= np.quantile(dens, 0.9))
        vals = true * rng.lognormal(0, 0.3, true.shape) / np.exp(0.045)   # mean-preserving noise
        return top_bottom_ratio(vals, dens.reshape(-1), grp, n_boot=1000, seed=seed)
    small, big = run(20, 1), run(400, 1)
    assert big["lo"] < 3 < big["hi"], big
    assert (big["hi"] - big["lo"]) < (small["hi"] - small["lo"]) / 2


def test_deciles_tie_breaking_is_seeded_and_fair():
    d = np.r_[np.zeros(70), np.arange(1, 31)]
    a, b = density_deciles(d, seed=3), density_deciles(d, seed=3)
    assert (a == b).all() and (np.bincount(a) == 10).all()
    assert (a[70:] >= 7).all()                     # every non-zero density is above every zero
    assert not (density_deciles(d, seed=4) == a).all()
    np.testing.assert_allclose(by_decile(d, d)[7:], [d[a == k].mean() for k in (7, 8, 9)])


# ---------------------------------------------------------------- a constructed model for masking

class CarrierVL(nn.Module):
    """A constructed vision-language model with the Qwen3-VL interface: a merged token is the mean of its 2x2 patch rows;
    every position's logits are W @ (sum of the image's merged tokens). The class of the answer is written by channel 0,
    which in the test images only one token carries."""
    def __init__(self, dim: int, vocab: int, answer: int):
        super().__init__()
        self.W = nn.Parameter(torch.zeros(vocab, dim))
        with torch.no_grad(): self.W[answer, 0] = 6.0
        self.config = SimpleNamespace()

    def get_image_features(self, pixel_values, image_grid_thw):
        merged = pixel_values.reshape(-1, 4, pixel_values.shape[-1]).mean(1)
        sizes = (image_grid_thw.prod(-1) // 4).tolist()
        return BaseModelOutputWithDeepstackFeatures(pooler_output=torch.split(merged, sizes), deepstack_features=[])

    def forward(self, input_ids, mm_token_type_ids, image_grid_thw, pixel_values=None, mm_encoder_outputs=None, **kw):
        if mm_encoder_outputs is None: mm_encoder_outputs = {"image": self.get_image_features(pixel_values, image_grid_thw)}
        per_image = torch.stack([m.sum(0) for m in mm_encoder_outputs["image"].pooler_output])   # (B, dim)
        logits = (per_image @ self.W.T)[:, None].expand(-1, input_ids.shape[1], -1)
        return SimpleNamespace(logits=logits)


def _carrier_batch(carriers, dim=8, vocab=20, answer=5):
    "One 8x8-patch image per example, all zero except channel 0 = 1 in the four patches of token `carriers[b]`."
    B, n = len(carriers), 16
    pv = torch.zeros(B * 64, dim)
    for b, j in enumerate(carriers): pv[b * 64 + 4 * j: b * 64 + 4 * j + 4, 0] = 1.0
    L = n + 4
    ids = torch.full((B, L), 3); ids[:, 1:1 + n] = 9
    mm = (ids == 9).long()
    labels = torch.full((B, L), -100); labels[:, -1] = answer
    return dict(input_ids=ids, attention_mask=torch.ones(B, L, dtype=torch.long), mm_token_type_ids=mm, pixel_values=pv,
                image_grid_thw=torch.tensor([[1, 8, 8]] * B), labels=labels)


@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_masking_the_answer_carrier_lowers_logprob(chunk):
    model = CarrierVL(8, 20, 5)
    batch = _carrier_batch([3, 12])
    mc = masking_contribution(model, batch, chunk=chunk)
    for b, j in enumerate([3, 12]):
        c = mc[b]
        assert c.shape == (16,)
        assert int(c.argmax()) == j and c[j] > 0.5, c            # masking the carrier costs the answer
        others = torch.cat([c[:j], c[j + 1:]])
        assert (others <= 0).all(), c                            # masking an empty token adds 1/16 of the carrier back
    zero = masking_contribution(model, batch, fill="zero")
    assert zero[0][3] > mc[0][3] and torch.allclose(torch.cat([zero[0][:3], zero[0][4:]]), torch.zeros(15))


# ---------------------------------------------------------------- the real (tiny) Qwen3-VL

@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    t = build_toy_teacher(seed=0)
    rows = [make_example(np.random.default_rng(i), SynthConfig(), c) for i, c in enumerate(["label", "kv", "colour"])]
    batch = AnswerCollator(t.processor)(rows)
    return t.model, hybridize(t.model).eval(), batch, rows


def test_masking_batched_equals_one_at_a_time(toy):
    teacher, _, batch, _ = toy
    f = image_features(teacher, batch)
    with torch.no_grad():
        lp = answer_logprob(teacher, batch)
    mc = masking_contribution(teacher, batch, chunk=7)
    for b in range(3):
        for k in (0, 5, 15):
            m = [x.clone() for x in f.merged]; ds = [x.clone() for x in f.deepstack]
            m[b][k] = f.merged[b].mean(0); ds[b][:, k] = f.deepstack[b].mean(1)
            with torch.no_grad():
                manual = lp[b] - answer_logprob(teacher, batch, encoder_outputs(m, ds))[b]
            assert float(mc[b][k]) == pytest.approx(float(manual), abs=1e-4)


def test_residual_drift_sees_a_planted_perturbation(toy):
    "A copy of the teacher with a fixed vector added to layer 1's output at image 0's tokens drifts exactly there."
    teacher, _, batch, _ = toy
    student = copy.deepcopy(teacher)
    vis = batch["mm_token_type_ids"] == 1
    where = vis.clone(); where[1:] = False
    v = torch.randn(teacher.config.text_config.hidden_size)
    captured = {}
    def hook(mod, args, out):
        captured["h"] = out.detach().clone()
        return out + where[..., None] * v
    h = student.model.language_model.layers[1].register_forward_hook(hook)
    try: drift = residual_drift(student, teacher, batch, layers=[0, 1])
    finally: h.remove()
    assert torch.allclose(drift[:, 0], torch.zeros(len(drift)))
    n0 = int(where.sum())
    assert (drift[n0:, 1] == 0).all() and (drift[:n0, 1] > 0).all()
    # the residual after layer 1 includes DeepStack's addition: recompute ||v|| / ||h_teacher|| from the teacher's own capture
    from heed.align import capture_residuals
    with torch.no_grad(), capture_residuals(teacher, [1]) as r:
        teacher(**{k: x for k, x in batch.items() if k != "labels"})
    expect = v.norm() / r.outputs[1][where].norm(dim=-1)
    assert torch.allclose(drift[:n0, 1], expect, rtol=1e-4)


@pytest.mark.parametrize("which", ["teacher", "student"])
@pytest.mark.parametrize("layer,side", [(2, "input"), (2, "output"), (3, "output")])
def test_integrated_gradients_completeness(toy, which, layer, side):
    "After the last DeepStack injection every image path crosses the layer: attributions sum to f(x) - f(baseline)."
    teacher, student, batch, _ = toy
    model = teacher if which == "teacher" else student
    a = layer_attribution(model, batch, layer, side, n_steps=48)
    gap = a.f - a.f0
    assert gap.abs().max() > 1e-3
    torch.testing.assert_close(a.positions.sum(-1), gap, atol=2e-3 + 0.02 * float(gap.abs().max()), rtol=0)
    torch.testing.assert_close(a.delta, a.positions.sum(-1) - gap, atol=1e-4, rtol=1e-3)


def test_gradient_x_activation_by_hand(toy):
    "captum's gradient x activation at a Mamba layer's output equals autograd's, computed with our own hook."
    _, student, batch, _ = toy
    a = layer_attribution(student, batch, 1, "output", method="gxa")
    f = image_features(student, batch)
    got = {}
    def hook(mod, args, out):
        out.retain_grad(); got["h"] = out
    h = student.model.language_model.layers[1].register_forward_hook(hook)
    try:
        answer_logprob(student, batch, encoder_outputs(f.merged, f.deepstack)).sum().backward()
    finally: h.remove()
    student.zero_grad(set_to_none=True)
    torch.testing.assert_close(a.positions, (got["h"].grad * got["h"]).sum(-1).detach(), atol=1e-5, rtol=1e-4)


def test_spatial_attribution_loss_signs(toy):
    teacher, _, batch, _ = toy
    vt = visual_tokens(batch)
    a = torch.rand(len(vt)) + 0.1
    region = np.zeros(len(vt), bool); region[vt.col == 0] = True
    s = a.clone(); s[torch.as_tensor(region)] *= 0.5                 # the student halves its mass on the region
    loss = spatial_attribution_loss(a, s, region, vt, n_boot=200)
    assert loss["mean"] > 0 and loss["lo"] > 0 and loss["teacher_share"] > loss["student_share"]
    assert spatial_attribution_loss(s, a, region, vt, n_boot=200)["mean"] == pytest.approx(-loss["mean"])


def test_trained_models_names_what_is_missing(tmp_path):
    (tmp_path / "teacher-v1" / "model").mkdir(parents=True)
    (tmp_path / "teacher-v1" / "model" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError) as e:
        trained_models(tmp_path, "small", [0, 1], world="v1")
    msg = str(e.value)
    assert "uniform-s1" in msg and "heed-s0" in msg and "50_uniform_vs_heed" in msg and "teacher-v1/model" not in msg
    with pytest.raises(FileNotFoundError) as e:   # world v2, the default: its teacher is data/teacher, missing here
        trained_models(tmp_path, "small", [0])
    assert "teacher/model" in str(e.value) and "uniform-s0-aw10.0" in str(e.value) and "55_three_arms" in str(e.value)
