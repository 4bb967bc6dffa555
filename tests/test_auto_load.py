"""A saved student through transformers' Auto classes, each way in a fresh process: with heed imported (registration), without
heed (trust_remote_code=True and the modeling file saved beside the weights), and plain transformers without either (a loud error,
never a half-random model). Also: students saved before the model type existed still load through heed.teacher.load_model."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import Qwen3VLForConditionalGeneration

from heed.hybrid import REMOTE_MODULE, Qwen3VLHybridForConditionalGeneration, hybridize, tiny_qwen3vl_config

ROOT = Path(__file__).resolve().parents[1]
TOY_TEACHER = ROOT / "data" / "teacher" / "model"

# Prepended to a child's code: any import of heed fails, as on a machine where heed is not installed (it is installed
# editable in the venv, so leaving it off sys.path is not enough).
NO_HEED = """
import sys
class _NoHeed:
    def find_spec(self, name, path=None, target=None):
        if name == "heed" or name.startswith("heed."): raise ImportError(f"heed is not installed here ({name})")
sys.meta_path.insert(0, _NoHeed())
for _m in [m for m in sys.modules if m == "heed" or m.startswith("heed.")]: del sys.modules[_m]
try:
    import heed
    raise SystemExit("heed is still importable")
except ImportError:
    pass
"""

# Loads the folder argv[1] with the Auto class argv[2] (extra from_pretrained keywords as JSON in argv[3]); writes its class,
# its logits on the saved inputs and greedy tokens to argv[4].
LOAD = """
import json, sys, torch
import transformers
d, auto, kw, out = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
cfg = transformers.AutoConfig.from_pretrained(d, **kw)
model = getattr(transformers, auto).from_pretrained(d, **kw).eval()
x = torch.load(f"{d}/inputs.pt")
with torch.no_grad():
    logits = model(**x["image"]).logits
    tokens = model.generate(**x["text"], max_new_tokens=5, do_sample=False, pad_token_id=cfg.text_config.pad_token_id)
    image_tokens = model.generate(**x["image"], max_new_tokens=5, do_sample=False, pad_token_id=cfg.text_config.pad_token_id)
torch.save(dict(cls=f"{type(model).__module__}.{type(model).__name__}", config=type(cfg).__name__, logits=logits, tokens=tokens,
                image_tokens=image_tokens), out)
if kw.get("trust_remote_code"):   # the remote class saves the same modeling file again
    model.save_pretrained(out + ".again")
"""

# Tries AutoConfig and both Auto model classes on argv[1] without trust_remote_code; prints what each raised, as JSON (after
# transformers' own "[y/N]" prompt, which reads the closed stdin as no).
REFUSE = """
import json, sys
import transformers
errors = {}
for name in ("AutoConfig", "AutoModelForImageTextToText", "AutoModelForCausalLM"):
    try:
        getattr(transformers, name).from_pretrained(sys.argv[1])
        errors[name] = None
    except Exception as e:
        errors[name] = f"{type(e).__name__}: {e}"
print("\\nERRORS " + json.dumps(errors))
"""


def child(code: str, *args, cwd, timeout=300, verbosity="error") -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONNOUSERSITE": "1", "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(Path(cwd) / "hf_home"), "TRANSFORMERS_VERBOSITY": verbosity}
    env.pop("PYTHONPATH", None)
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def prompts(cfg):
    g = torch.Generator().manual_seed(0)
    V = cfg.text_config.vocab_size
    ids = torch.cat([torch.randint(0, V - 8, (5,), generator=g), torch.tensor([cfg.vision_start_token_id]),
                     torch.full((4,), cfg.image_token_id), torch.tensor([cfg.vision_end_token_id]),
                     torch.randint(0, V - 8, (3,), generator=g)])[None]
    image = dict(input_ids=ids, pixel_values=torch.randn(16, 3 * 2 * 16 * 16, generator=g), image_grid_thw=torch.tensor([[1, 4, 4]]),
                 mm_token_type_ids=(ids == cfg.image_token_id).int(), attention_mask=torch.ones_like(ids))
    text = torch.randint(0, V - 8, (2, 7), generator=g)
    return dict(image=image, text=dict(input_ids=text, attention_mask=torch.ones_like(text)))


def outputs(model, x, pad):
    with torch.no_grad():
        return dict(logits=model(**x["image"]).logits,
                    tokens=model.generate(**x["text"], max_new_tokens=5, do_sample=False, pad_token_id=pad),
                    image_tokens=model.generate(**x["image"], max_new_tokens=5, do_sample=False, pad_token_id=pad))


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    "A tiny student saved by heed, its inputs beside it, and heed's own class's outputs on them."
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("student")
    s = hybridize(Qwen3VLForConditionalGeneration(tiny_qwen3vl_config(num_layers=4)).eval())
    s.save_pretrained(d)
    x = prompts(s.config)
    torch.save(x, d / "inputs.pt")
    ref = Qwen3VLHybridForConditionalGeneration.from_pretrained(d).eval()
    return d, outputs(ref, x, s.config.text_config.pad_token_id)


def check_same(got: dict, ref: dict):
    assert torch.equal(got["logits"], ref["logits"]), (got["logits"] - ref["logits"]).abs().max()
    assert torch.equal(got["tokens"], ref["tokens"]) and got["tokens"].shape[1] > 7   # the prompt plus generated tokens (an eos may end them early)
    assert torch.equal(got["image_tokens"], ref["image_tokens"]) and got["image_tokens"].shape[1] == ref["image_tokens"].shape[1]


def test_saved_folder_names_its_type_and_code(student):
    d, _ = student
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["model_type"] == "qwen3_vl_hybrid"
    assert cfg["architectures"] == ["Qwen3VLHybridForConditionalGeneration"]
    assert set(cfg["auto_map"]) == {"AutoConfig", "AutoModelForImageTextToText", "AutoModelForCausalLM"}
    assert all(v.startswith(REMOTE_MODULE + ".") for v in cfg["auto_map"].values())
    assert (d / f"{REMOTE_MODULE}.py").is_file()


@pytest.mark.parametrize("auto", ["AutoModelForImageTextToText", "AutoModelForCausalLM"])
def test_with_heed_imported(student, auto, tmp_path):
    d, ref = student
    r = child("import heed.hybrid\n" + LOAD, d, auto, "{}", tmp_path / "out.pt", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt")
    assert got["cls"] == "heed.hybrid.Qwen3VLHybridForConditionalGeneration" and got["config"] == "Qwen3VLHybridConfig"
    check_same(got, ref)


@pytest.mark.parametrize("auto", ["AutoModelForImageTextToText", "AutoModelForCausalLM"])
def test_without_heed_trust_remote_code(student, auto, tmp_path):
    d, ref = student
    r = child(NO_HEED + LOAD, d, auto, json.dumps(dict(trust_remote_code=True)), tmp_path / "out.pt", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt")
    assert got["cls"].startswith("transformers_modules.") and got["cls"].endswith(f"{REMOTE_MODULE}.Qwen3VLHybridForConditionalGeneration")
    assert got["config"] == "Qwen3VLHybridConfig"
    check_same(got, ref)
    again = tmp_path / "out.pt.again"
    assert (again / f"{REMOTE_MODULE}.py").read_text() == (d / f"{REMOTE_MODULE}.py").read_text()
    assert json.loads((again / "config.json").read_text())["auto_map"] == json.loads((d / "config.json").read_text())["auto_map"]


def test_grouped_gate_without_heed_trust_remote_code(tmp_path):
    "A non-default mixer (gate='grouped': z at the key/value width) rebuilds from config.json through the saved modeling file alone."
    torch.manual_seed(0)
    d = tmp_path / "student"
    s = hybridize(Qwen3VLForConditionalGeneration(tiny_qwen3vl_config(num_layers=4)).eval(), gate="grouped")
    s.save_pretrained(d)
    x = prompts(s.config)
    torch.save(x, d / "inputs.pt")
    ref = outputs(Qwen3VLHybridForConditionalGeneration.from_pretrained(d).eval(), x, s.config.text_config.pad_token_id)
    r = child(NO_HEED + LOAD, d, "AutoModelForImageTextToText", json.dumps(dict(trust_remote_code=True)), tmp_path / "out.pt", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    check_same(torch.load(tmp_path / "out.pt"), ref)

def test_plain_transformers_refuses(student, tmp_path):
    "Without heed and without trust_remote_code nothing loads; each error says what to pass. Without auto_map: unknown model type."
    d, _ = student
    r = child(NO_HEED + REFUSE, d, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    errors = json.loads(r.stdout.split("\nERRORS ", 1)[1])
    assert set(errors) == {"AutoConfig", "AutoModelForImageTextToText", "AutoModelForCausalLM"}
    for name, err in errors.items():
        assert err is not None and "trust_remote_code=True" in err and str(d) in err, (name, err)
    bare = tmp_path / "bare"
    shutil.copytree(d, bare)
    cfg = json.loads((bare / "config.json").read_text())
    del cfg["auto_map"]
    (bare / "config.json").write_text(json.dumps(cfg))
    (bare / f"{REMOTE_MODULE}.py").unlink()
    r = child(NO_HEED + REFUSE, bare, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    for name, err in json.loads(r.stdout.split("\nERRORS ", 1)[1]).items():
        assert err is not None and "qwen3_vl_hybrid" in err, (name, err)


# load_model on a student folder with the toy teacher's processor; argv[1] the folder, argv[2] where to write the outputs.
LOAD_MODEL = """
import sys, torch
from heed.teacher import load_model
model, proc = load_model(sys.argv[1])
x = torch.load(f"{sys.argv[1]}/inputs.pt")
pad = model.config.text_config.pad_token_id
with torch.no_grad():
    out = dict(logits=model(**x["image"]).logits,
               tokens=model.generate(**x["text"], max_new_tokens=5, do_sample=False, pad_token_id=pad),
               image_tokens=model.generate(**x["image"], max_new_tokens=5, do_sample=False, pad_token_id=pad))
model.save_pretrained(sys.argv[2] + ".again")
torch.save(dict(out, cls=type(model).__name__, model_type=model.config.model_type, processor=type(proc).__name__), sys.argv[2])
"""


@pytest.mark.skipif(not (TOY_TEACHER / "config.json").is_file(), reason="the committed toy teacher is not in this checkout")
def test_load_model_new_and_old_students(tmp_path):
    "heed.teacher.load_model loads a student saved now and one saved before its model type existed (model_type qwen3_vl)."
    torch.manual_seed(0)
    teacher = Qwen3VLForConditionalGeneration.from_pretrained(TOY_TEACHER).eval()
    s = hybridize(teacher)
    new, old = tmp_path / "new", tmp_path / "old"
    s.save_pretrained(new)
    for f in TOY_TEACHER.iterdir():   # the processor files, as heed train writes them beside a student
        if f.name not in ("config.json", "model.safetensors", "aux_heads.pt"): shutil.copy(f, new / f.name)
    x = prompts(s.config)
    torch.save(x, new / "inputs.pt")
    shutil.copytree(new, old)
    cfg = json.loads((old / "config.json").read_text())   # as students were saved before: qwen3_vl, no auto_map, no code
    cfg["model_type"] = "qwen3_vl"
    del cfg["auto_map"]
    (old / "config.json").write_text(json.dumps(cfg))
    (old / f"{REMOTE_MODULE}.py").unlink()
    ref = outputs(s, x, s.config.text_config.pad_token_id)
    for d in (new, old):
        r = child(LOAD_MODEL, d, tmp_path / f"{d.name}.pt", cwd=tmp_path, verbosity="warning")  # warnings show
        assert r.returncode == 0, r.stderr[-3000:]
        got = torch.load(tmp_path / f"{d.name}.pt")
        assert got["cls"] == "Qwen3VLHybridForConditionalGeneration" and got["processor"] == "VLProcessor", got
        assert got["model_type"] == "qwen3_vl_hybrid" and "to instantiate a model of type" not in r.stderr, r.stderr[-2000:]
        saved = json.loads((tmp_path / f"{d.name}.pt.again" / "config.json").read_text())
        assert saved["model_type"] == "qwen3_vl_hybrid" and "auto_map" in saved   # an old student saved again is a new one
        check_same(got, ref)
