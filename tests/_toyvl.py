"""A tiny, randomly initialised Qwen3-VL and hand-built batches for tests (no hub access).

Shapes follow the project's toy size: text hidden 128, 4 layers, 4 heads / 2 kv heads, head_dim 32;
vision depth 2, hidden 64, patch 16, merge 2, temporal patch 2, out_hidden_size = text hidden.
"""
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

IMAGE, START, END = 250, 252, 253


def tiny_config(deepstack=(0, 1)) -> Qwen3VLConfig:
    return Qwen3VLConfig(
        text_config=dict(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                         rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[8, 4, 4])),
        vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, patch_size=16,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=128,
                           num_position_embeddings=64, deepstack_visual_indexes=list(deepstack)),
        image_token_id=IMAGE, video_token_id=251, vision_start_token_id=START, vision_end_token_id=END)


def tiny_qwen3vl(seed=0, **kw) -> Qwen3VLForConditionalGeneration:
    torch.manual_seed(seed)
    return Qwen3VLForConditionalGeneration(tiny_config(**kw)).eval()


def processor() -> Qwen2VLImageProcessorPil:
    return Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2)


def batch_for(images_per_sample, proc=None, seed=0, pad_left=False):
    """Process images and build input_ids with image_pad runs. images_per_sample: list (samples) of lists
    (that sample's images). Text tokens are random ids in 4..200; padding id 0."""
    proc = proc or processor()
    flat = [im for ims in images_per_sample for im in ims]
    b = proc(flat, return_tensors="pt")
    n = (b["image_grid_thw"].prod(-1) // 4).tolist()
    g = torch.Generator().manual_seed(seed)
    seqs, k = [], 0
    for ims in images_per_sample:
        seq = torch.randint(4, 200, (2,), generator=g).tolist()
        for _ in ims:
            seq += [START] + [IMAGE] * n[k] + [END] + torch.randint(4, 200, (2,), generator=g).tolist()
            k += 1
        seqs.append(seq)
    L = max(map(len, seqs))
    ids = torch.zeros(len(seqs), L, dtype=torch.long)
    am = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        sl = slice(L - len(s), L) if pad_left else slice(0, len(s))
        ids[i, sl] = torch.tensor(s)
        am[i, sl] = 1
    return dict(input_ids=ids, attention_mask=am, mm_token_type_ids=(ids == IMAGE).long(), **b)


def word_image(size=(128, 128), text="Hi", xy=(4, 4), grey=200, font_size=20) -> Image.Image:
    "A dark word on a flat grey RGB background; size is (H, W)."
    im = Image.new("RGB", size[::-1], (grey, grey, grey))
    ImageDraw.Draw(im).text(xy, text, fill=(20, 20, 20), font=ImageFont.load_default(size=font_size))
    return im


def noise_image(size=(96, 160), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((*size, 3)) * 40 + 100).astype(np.uint8))
