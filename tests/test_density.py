"""heed.density beyond the notebook: properties over random inputs, and model-level alignment of
densities with image-token positions on a tiny Qwen3-VL with mixed image sizes."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from _toyvl import IMAGE, batch_for, noise_image, processor, tiny_qwen3vl, word_image
from heed.density import (METHODS, VisionFeatures, batch_token_weights, capture_vision, density_weights,
                          image_density, neighbour_dissimilarity, patches_to_images, subpatch_dissimilarity,
                          token_weights, vision_features, visual_mask, visual_token_density, words_image, ink_scores)


@pytest.fixture(scope="module")
def model():
    return tiny_qwen3vl()


@pytest.fixture(scope="module")
def mixed(model):
    "Sample 0: a 128×128 word image then a 96×160 noise image; sample 1: a 64×96 word image. Left padding."
    ims = [[word_image((128, 128), xy=(4, 4)), noise_image((96, 160))], [word_image((64, 96), "x", xy=(70, 36), font_size=24)]]
    b = batch_for(ims, pad_left=True)
    return b, vision_features(model, b["pixel_values"], b["image_grid_thw"])


# ---------- weights ----------

@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 1e4, allow_nan=False, width=32), min_size=1, max_size=64),
       st.floats(0, 4), st.floats(0, 1))
def test_weights_average_exactly_one(vals, sharpness, floor):
    w = density_weights(torch.tensor(vals), sharpness, floor)
    assert torch.isfinite(w).all()
    assert abs(w.mean().item() - 1) < 1e-5
    assert (w >= min(floor, 1) - 1e-5).all()


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 5), st.floats(0.01, 1e3), st.integers(0, 2**31 - 1))
def test_weights_per_image_and_rescaling(n_images, scale, seed):
    g = torch.Generator().manual_seed(seed)
    dens = [torch.rand(int(torch.randint(1, 5, (1,), generator=g)), 3, generator=g) for _ in range(n_images)]
    ws = density_weights(dens)
    for w in ws:
        assert abs(w.mean().item() - 1) < 1e-5
    for w, w2 in zip(ws, density_weights([d * scale for d in dens])):
        torch.testing.assert_close(w, w2, rtol=1e-4, atol=1e-5)


def test_weights_order_follows_density():
    d = torch.tensor([0.1, 0.5, 0.2, 2.0])
    w = density_weights(d, 1.0, 0.1)
    assert w.argsort().tolist() == d.argsort().tolist()
    sharp = density_weights(d, 3.0, 0.1)
    assert sharp.max() > w.max()  # more sharpness, more weight on the densest token


# ---------- proxies on images ----------

@pytest.mark.parametrize("method", METHODS)
def test_invariant_to_global_rescaling_of_image(method):
    rng = np.random.default_rng(0)
    img, _ = words_image(rng.random((128, 160, 3)) * 0.5 + 0.25, seed=1)
    for c in (1e-3, 0.3, 7.0):
        torch.testing.assert_close(image_density(img * c, 32, method), image_density(img, 32, method), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["feature", "subpatch"])
def test_invariant_to_global_rescaling_of_features(method):
    g = torch.Generator().manual_seed(0)
    f = torch.randn(5, 6, 4, 9, generator=g)
    fn = (lambda x: neighbour_dissimilarity(x[:, :, 0])) if method == "feature" else subpatch_dissimilarity
    for c in (1e-4, 0.5, 1e3):
        torch.testing.assert_close(fn(f * c), fn(f), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("where", [(0, 0), (2, 3), (3, 5)])
def test_text_patch_outranks_flat_background(method, where):
    r, c = where
    im = word_image((128, 192), "Aq7", xy=(c * 32 + 2, r * 32 + 6), font_size=14)
    d = image_density(im, 32, method)
    assert d.shape == (4, 6)
    others = torch.cat([d.reshape(-1)[: r * 6 + c], d.reshape(-1)[r * 6 + c + 1:]])
    assert d[r, c] > others.max() or (method == "feature" and d[r, c] >= others.max() - 1e-6), (method, d)


@pytest.mark.parametrize("method", METHODS)
def test_flat_images_give_uniform_weights(method):
    for flat in (np.zeros((64, 64)), np.full((96, 64, 3), 0.42, dtype=np.float32), np.full((64, 96, 3), 255, dtype=np.uint8)):
        d = image_density(flat, 32, method)
        assert torch.isfinite(d).all()
        assert torch.equal(density_weights(d), torch.ones_like(d))


def test_pixel_default_beats_chance_on_text_over_photo():
    from skimage import data as skdata
    aucs = [ink_scores(image_density(words_image(skdata.coffee()[:256, :384] / 255.0, seed=s)[0], 32, "pixel"),
                       words_image(skdata.coffee()[:256, :384] / 255.0, seed=s)[1])["auc"] for s in range(4)]
    assert np.mean(aucs) > 0.8, aucs


def test_image_density_with_model_matches_model_level(model):
    im = word_image((128, 160), "Hey", xy=(50, 40))
    proc = processor()
    for m in METHODS:
        d = image_density(im, 32, m, model=model, processor=proc)
        b = proc([im], return_tensors="pt")
        vf = vision_features(model, b["pixel_values"], b["image_grid_thw"])
        torch.testing.assert_close(d, visual_token_density(b["image_grid_thw"], m, vf, b["pixel_values"])[0])
    with pytest.raises(ValueError, match="patch_size=16"):
        image_density(im, 16, "pixel", model=model, processor=proc)


# ---------- model level ----------

def test_patches_round_trip(mixed):
    b, _ = mixed
    ims = patches_to_images(b["pixel_values"], b["image_grid_thw"])
    assert [tuple(x.shape) for x in ims] == [(3, 128, 128), (3, 96, 160), (3, 64, 96)]
    proc = processor()
    mean, std = torch.tensor(proc.image_mean)[:, None, None], torch.tensor(proc.image_std)[:, None, None]
    src = word_image((64, 96), "x", xy=(70, 36), font_size=24)
    want = (torch.as_tensor(np.array(src)).permute(2, 0, 1) / 255 - mean) / std
    torch.testing.assert_close(ims[2], want, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="expected"):
        patches_to_images(b["pixel_values"][:-4], b["image_grid_thw"])


def test_densities_line_up_with_image_tokens(model, mixed):
    b, vf = mixed
    mask = visual_mask(b["input_ids"], b["mm_token_type_ids"])
    assert torch.equal(mask, visual_mask(b["input_ids"], image_token_id=IMAGE))
    # the features the model scatters into the image_pad positions are the merged rows, in order
    seen = {}
    hook = model.model.language_model.layers[0].register_forward_pre_hook(
        lambda mod, a, kw: seen.update(x=kw.get("hidden_states", a[0] if a else None)), with_kwargs=True)
    try:
        with torch.no_grad():
            model(**b)
    finally:
        hook.remove()
    torch.testing.assert_close(seen["x"][mask], vf.merged, rtol=1e-5, atol=1e-5)
    # densities: one map per image, weights at exactly the image positions
    for m in METHODS:
        dens = visual_token_density(b["image_grid_thw"], m, vf, b["pixel_values"])
        assert [tuple(d.shape) for d in dens] == [(4, 4), (3, 5), (2, 3)]
        w = batch_token_weights(b, m, features=vf, text_weight=0.5)
        assert torch.equal(w[~mask], torch.full((int((~mask).sum()),), 0.5))
        flat_w = w[mask]
        for k, (lo, hi) in enumerate([(0, 16), (16, 31), (31, 37)]):
            assert abs(flat_w[lo:hi].mean().item() - 1) < 1e-5, (m, k)
    # the word of the third image (sample 1) sits in its token (1, 2): that input_ids position must be the densest
    wp = batch_token_weights(b, "pixel")
    pos = mask[1].nonzero()[:, 0]
    assert wp[1, pos].argmax().item() == 1 * 3 + 2


def test_capture_vision_matches_vision_features(model, mixed):
    b, vf = mixed
    with capture_vision(model) as got, torch.no_grad():
        model(**b)
    assert len(got) == 1
    torch.testing.assert_close(got[0].merged, vf.merged)
    torch.testing.assert_close(got[0].patches, vf.patches)
    assert got[0].grid_thw.tolist() == b["image_grid_thw"].tolist()


def test_model_level_flat_image_uniform_and_text_wins(model):
    proc = processor()
    grey = word_image((96, 128), "", grey=128)
    b = batch_for([[grey], [word_image((96, 128), "Hi", xy=(70, 38))]], proc)
    w = batch_token_weights(b, "pixel")
    mask = b["mm_token_type_ids"].bool()
    assert torch.equal(w[0][mask[0]], torch.ones(12))
    d = visual_token_density(b["image_grid_thw"], "pixel", pixel_values=b["pixel_values"])[1]
    assert d.argmax().item() == 1 * 4 + 2
    vf = vision_features(model, b["pixel_values"], b["image_grid_thw"])
    for m in ("feature", "subpatch"):  # on the toy's random features too, the word's token ranks first
        d = visual_token_density(b["image_grid_thw"], m, vf)[1]
        assert torch.isfinite(d).all() and d.argmax().item() == 1 * 4 + 2, (m, d)


def test_mismatches_are_errors(model, mixed):
    b, vf = mixed
    with pytest.raises(ValueError, match="do not match"):
        token_weights([torch.ones(4, 4)], b["mm_token_type_ids"].bool())
    with pytest.raises(ValueError, match="features are for grid_thw"):
        visual_token_density(b["image_grid_thw"][:2], "feature", vf)
    with pytest.raises(ValueError, match="needs the vision features"):
        visual_token_density(b["image_grid_thw"], "subpatch")
    with pytest.raises(ValueError, match="expected one of"):
        visual_token_density(b["image_grid_thw"], "sobel", vf)
