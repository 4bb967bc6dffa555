"""heed.efficiency: the analytic cache / weight / decode-byte model against real caches, real modules and the toy measurement."""
import pandas as pd
import pytest
import torch
from transformers import Qwen3VLForConditionalGeneration

from heed.efficiency import (cache_breakdown, cache_bytes, compare, decode_bytes, layout, meta_param_counts, param_counts,
                             predict_speedup, qwen3_vl_8b_config, qwen3_vl_config, student_config, weight_bytes)
from heed.hybrid import (Qwen3VLHybridForConditionalGeneration, cache_nbytes, fill_cache, hybridize, resolve_layout,
                         tiny_qwen3vl_config)

torch.set_num_threads(1)

# the shape of heed.hybrid's decode experiment (nbs/experiments/30_decode_efficiency.ipynb, profile small)
DECODE_SHAPE = dict(num_layers=8, hidden=512, heads=16, kv_heads=8, head_dim=64, vocab=2048, intermediate=1024)


@pytest.fixture(scope="module")
def toy_pair():
    torch.manual_seed(0)
    teacher = Qwen3VLForConditionalGeneration(tiny_qwen3vl_config(num_layers=6, heads=4, kv_heads=2)).eval()
    return teacher, hybridize(teacher, [1, 5])


@pytest.mark.parametrize("kw", [dict(gate="none"), dict(gate="grouped"), dict(xb="query"), dict(xb="kv_preconv")])
def test_cache_bytes_equal_allocated_every_layout(toy_pair, kw):
    "The conv state's width follows the x/B layout: the count equals the cache for each."
    student = hybridize(toy_pair[0], [1, 5], **kw)
    assert cache_nbytes(fill_cache(student, 37, batch_size=2)) == cache_bytes(student.config, None, 37, 2, 4)
    assert cache_nbytes(fill_cache(student, 37, batch_size=2, cache="growing")) == cache_bytes(student.config, None, 37, 2, 4)


@pytest.mark.parametrize("dtype,bpv", [(torch.float32, 4), (torch.bfloat16, 2), (torch.float64, 8)])
@pytest.mark.parametrize("ctx,batch", [(1, 1), (37, 2), (513, 1)])
def test_cache_bytes_equal_allocated(toy_pair, dtype, bpv, ctx, batch):
    "The analytic count equals the bytes transformers' cache actually holds, teacher and student, every dtype."
    for model in toy_pair:
        m = model.to(dtype)
        got = cache_nbytes(fill_cache(m, ctx, batch_size=batch))
        assert got == cache_bytes(m.config, None, ctx, batch, bpv), (type(m).__name__, dtype, ctx, batch)
    for model in toy_pair: model.float()


def test_cache_bytes_other_layouts(toy_pair):
    "An explicit layout on the teacher's config counts the student that layout would make."
    teacher, student = toy_pair
    assert cache_bytes(teacher.config, [1, 5], 64, bytes_per_value=4) == cache_nbytes(fill_cache(student, 64))
    b = cache_breakdown(teacher.config, [1, 5], 64, bytes_per_value=4)
    assert b["kv"] == 2 * 2 * 2 * 32 * 64 * 4 and b["conv"] > 0 and b["ssm"] == 4 * 4 * 32 * 32 * 4
    assert cache_breakdown(teacher.config, [1, 5], 64, bytes_per_value=2, state_bytes_per_value=2)["ssm"] == b["ssm"] // 2


def test_cache_bytes_refuses_bad_input(toy_pair):
    cfg = toy_pair[0].config
    for bad in (dict(context=-5), dict(batch=-1), dict(bytes_per_value=-2)):
        with pytest.raises(ValueError, match=list(bad)[0]):
            cache_bytes(cfg, None, **{"context": 8, **bad})
    with pytest.raises(ValueError, match="out of range"):
        cache_bytes(cfg, [0, 6], 8)


@pytest.mark.parametrize("kw", [{}, dict(gate="none"), dict(gate="new"), dict(gate="grouped"), dict(gate="grouped", xb="query"),
                                dict(xb="query"), dict(xb="kv_preconv")])
@pytest.mark.parametrize("shape", [dict(num_layers=4), dict(num_layers=8, heads=8, kv_heads=4, head_dim=16, hidden=96)])
def test_param_counts_match_modules(shape, kw):
    "Analytic parameter counts equal the modules' (built on the meta device: no memory), teacher and hybrid student."
    cfg = tiny_qwen3vl_config(**shape)
    with torch.device("meta"):
        teacher = Qwen3VLForConditionalGeneration(cfg)
    assert param_counts(cfg)["total"] == sum(p.numel() for p in teacher.parameters())
    assert param_counts(student_config(cfg, **kw))["total"] == meta_param_counts(cfg, **kw)[1]
    with torch.device("meta"):
        student = hybridize(teacher, **kw)
    assert param_counts(student.config)["total"] == sum(p.numel() for p in student.parameters())
    assert weight_bytes(student.config, None, 2) == 2 * sum(p.numel() for p in student.parameters())


@pytest.mark.parametrize("size", ["2B", "4B", "8B"])
def test_student_size_targets_on_real_shapes(size):
    "Built on the meta device: gate='none' within +0.5% of the teacher; the old stored layout is what made 9.90 B of 8.77 B."
    cfg = qwen3_vl_config(size)
    n_t, n_none = meta_param_counts(cfg, gate="none")
    assert n_none / n_t - 1 < 0.005, (size, n_t, n_none)
    n_gate = meta_param_counts(cfg, gate="from_attention")[1]
    assert n_gate > n_none and n_gate == meta_param_counts(cfg, gate="new")[1]
    n_grouped = meta_param_counts(cfg, gate="grouped")[1]     # z at the key/value width: kv_heads / heads of the gate
    tc = cfg.text_config
    assert tc.num_attention_heads * (n_grouped - n_none) == tc.num_key_value_heads * (n_gate - n_none)
    assert n_grouped / n_t - 1 < 0.025, (size, n_t, n_grouped)     # +2.1% (2B), +1.7% (4B), +1.3% (8B)
    if size == "8B":
        assert round(meta_param_counts(cfg, gate="new", xb="query")[1] / 1e9, 2) == 9.90 and round(n_t / 1e9, 2) == 8.77
        assert n_gate / n_t - 1 < 0.06      # the 4B's gate costs 6.5% (a wide d_inner over hidden 2560): see nbs/11_efficiency


def test_param_counts_real_8b_shape():
    "The real Qwen3-VL-8B shape on the meta device: about 8.77 B parameters, and the 3:1 student as hybridize builds it."
    cfg = qwen3_vl_8b_config()
    with torch.device("meta"):
        teacher = Qwen3VLForConditionalGeneration(cfg)
        n_teacher = sum(p.numel() for p in teacher.parameters())
    assert param_counts(cfg)["total"] == n_teacher  # before hybridize(inplace=True) records the layout on this config
    with torch.device("meta"):
        student = hybridize(teacher, inplace=True)
        n_student = sum(p.numel() for p in student.parameters())
    assert 8.6e9 < n_teacher < 8.9e9, n_teacher  # "8B": 8.2 B text + 0.58 B vision
    assert param_counts(cfg, resolve_layout(36)[0])["total"] == n_student
    assert isinstance(student, Qwen3VLHybridForConditionalGeneration)


def test_decode_bytes_parts(toy_pair):
    teacher, student = toy_pair
    d = decode_bytes(student.config, None, 100, batch=2, bytes_per_value=4)
    c = cache_breakdown(student.config, None, 100, 2, 4)
    assert d["state"] == 2 * (c["conv"] + c["ssm"])            # read and written once each
    assert d["kv"] == cache_bytes(student.config, [1, 5], 101, 2, 4) - c["conv"] - c["ssm"]
    assert d["per_token"] == d["step"] / 2
    with pytest.raises(ValueError, match="batch"):
        decode_bytes(student.config, None, 100, batch=0)


def test_compare_bounds_real_shape():
    "Claims the notebook makes about the 8B shape, from the model: saving and speedup grow with context, bounded below 4x."
    rows = compare(qwen3_vl_8b_config(), contexts=[8192, 32768, 131072], memory_gib=80)
    assert [r["speedup"] for r in rows] == sorted(r["speedup"] for r in rows)
    assert [r["memory_saving"] for r in rows] == sorted(r["memory_saving"] for r in rows)
    assert all(r["speedup_at_max_batch"] < 4 for r in rows)
    assert 0.95 < rows[0]["speedup"] < 1.1  # at 8k a step is mostly weights, which the student has about as many of
    assert all(1 < r["prefill_speedup"] < 2.5 for r in rows[1:])


def test_model_predicts_toy_decode_trend(root):
    """The byte model, with no fitted constant, against the committed CPU measurement of heed.hybrid's experiment.

    Where each layer's key tensor stays under 32 MiB (glibc's largest mmap threshold) the measured speedup must be within
    20% of the prediction at every context. Above it, every torch.cat of the growing cache gets fresh pages from mmap and
    page-faults them in, which costs more than the bytes, so there the measurement may exceed the model but not fall
    short of it (benchmarks/RESULTS.md, issue 8, shows the gap close when mmap is switched off)."""
    csv = root / "figures" / "decode_efficiency.csv"
    if not csv.is_file(): pytest.skip(f"{csv} not found (written by nbs/experiments/30_decode_efficiency.ipynb)")
    df = pd.read_csv(csv).pivot(index="context", columns="model", values="tok_s")
    measured = (df["3:1 hybrid student"] / df["teacher"]).to_dict()
    cfg = tiny_qwen3vl_config(**DECODE_SHAPE)
    ctxs = sorted(measured)
    pred = dict(zip(ctxs, predict_speedup(cfg, None, ctxs, bytes_per_value=4)))
    key_tensor = {c: 8 * c * 64 * 4 for c in ctxs}  # kv_heads * context * head_dim * fp32
    assert [pred[c] for c in ctxs] == sorted(pred.values())
    small = [c for c in ctxs if key_tensor[c] < 32 * 2 ** 20]
    assert len(small) >= 3, small
    # How close measured and predicted are (within ~20% up to 8k on a quiet machine) is a timing claim: it is
    # measured by benchmarks/bench_efficiency.py and recorded in benchmarks/RESULTS.md, not asserted here, because
    # the committed CSV may come from a run that shared the CPU. A test keeps only what load cannot reverse:
    # that the student is never much slower than the bytes allow.
    for c in ctxs:
        assert measured[c] >= 0.7 * pred[c], (c, measured[c], pred[c])


def test_layout_reads_student_config(toy_pair):
    assert layout(toy_pair[1].config) == ([1, 5], [0, 2, 3, 4])
    assert layout(toy_pair[0].config) == (list(range(6)), [])


def test_gpu_check_script_parses_and_runs_its_code_paths_on_cpu(capsys):
    "benchmarks/gpu_check.py: --dry-run imports and plans; --smoke runs the scan and decode checks at toy sizes (no Triton here)."
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    assert mod.main(["--dry-run"]) == 0
    assert "decode of a Qwen3-VL-2B teacher vs student" in capsys.readouterr().out
    assert mod.main(["--smoke"]) == 0
    out = capsys.readouterr().out
    if not torch.cuda.is_available(): assert "Triton scan SKIPPED" in out
    assert "decode context 128" in out and "speedup" in out
