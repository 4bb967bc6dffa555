"""Peak memory of an evaluation run against the size of the benchmark (issue 17): a DocVQA-shaped local copy whose every
row holds a large scanned-looking page, scored with a scripted reply (no model: the point is what loading and decoding
cost). Run once per size in a fresh process, so each peak is its own:

    .venv/bin/python benchmarks/bench_eval_memory.py --rows 200
    .venv/bin/python benchmarks/bench_eval_memory.py --rows 2000

A child process writes the local copy and measures the first of two stages: datasets' one-time conversion of the
parquet files into its Arrow cache (it reads one parquet row group at a time, and datasets writes row groups of at most
100 MB, so its peak is bounded by that, not by the number of rows); this process then measures the evaluation itself on
the cached copy. Prints one JSON line: rows, the parquet's size, the peak anonymous memory of each stage (RssAnon,
sampled every 20 ms: what the process itself holds), the process's peak resident memory (ru_maxrss, which also counts
pages of the memory-mapped Arrow cache that the kernel can drop at any time) and the seconds taken."""
import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def page_png(k: int, size=(1654, 2339)) -> bytes:
    "An A4 page at 200 dpi with lines of text (PNG); k varies the text."
    from PIL import Image, ImageDraw
    im = Image.new("RGB", size, (250, 250, 245))
    d = ImageDraw.Draw(im)
    for y in range(80, size[1] - 80, 28):
        d.text((80, y), f"Invoice {k:04d} line {y:05d}  total 1963  ITC Limited  " * 3, fill=(20, 20, 20))
    buf = io.BytesIO(); im.save(buf, format="PNG"); return buf.getvalue()


def write_docvqa(root: Path, rows: int, distinct: int = 8) -> Path:
    "A DocVQA validation split of `rows` rows in the hub-snapshot layout (pages cycle through `distinct` drawings)."
    import datasets
    pages = [page_png(k) for k in range(distinct)]
    S, L = datasets.Value("string"), lambda f: datasets.List(f)
    feats = datasets.Features(dict(questionId=S, question=S, question_types=L(S), image=datasets.Image(), docId=datasets.Value("int32"),
                                   ucsf_document_id=S, ucsf_document_page_no=S, answers=L(S), data_split=S))
    gen = lambda: ({"questionId": str(50000 + i), "question": "In which year was the company founded?", "question_types": ["others"],
                    "image": {"bytes": pages[i % distinct], "path": None}, "docId": i, "ucsf_document_id": "x",
                    "ucsf_document_page_no": "1", "answers": ["1963"], "data_split": "val"} for i in range(rows))
    ds = datasets.Dataset.from_generator(gen, features=feats, cache_dir=str(root / "gen-cache"))
    snap = root / "data" / "lmms-lab-encoder" / "DocVQA"
    (snap / "DocVQA").mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(snap / "DocVQA" / "validation-00000-of-00001.parquet"))
    (snap / "README.md").write_text("---\nconfigs:\n- config_name: DocVQA\n  data_files:\n  - split: validation\n"
                                    "    path: DocVQA/validation-*\n---\n")
    return root / "data"


def rss_anon_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"): return int(line.split()[1]) / 1024
    return float("nan")


class PeakAnon:
    "Samples RssAnon every 20 ms in a thread; `.peak` is the largest value seen since start or `reset()`."
    def __init__(self):
        self.peak, self._stop = rss_anon_mib(), threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
    def _run(self):
        while not self._stop.wait(0.02): self.peak = max(self.peak, rss_anon_mib())
    def stop(self) -> float:
        self._stop.set(); return max(self.peak, rss_anon_mib())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--prepare", help=argparse.SUPPRESS)  # child: write the copy and convert it, print the conversion's peak
    args = ap.parse_args()
    import datasets
    datasets.disable_progress_bars()
    from heed.benchmarks import evaluate_suite, load_benchmark
    if args.prepare:
        t = Path(args.prepare)
        write_docvqa(t, args.rows)
        mem, t0 = PeakAnon(), time.perf_counter()
        load_benchmark("docvqa_val", t / "data", cache_dir=t / "cache")  # datasets' one-time parquet -> Arrow conversion
        print(json.dumps(dict(conversion_peak_anon_mib=round(mem.stop()), conversion_s=round(time.perf_counter() - t0, 1))))
        return
    with tempfile.TemporaryDirectory() as t:
        t = Path(t)
        r = subprocess.run([sys.executable, __file__, "--rows", str(args.rows), "--prepare", str(t)], check=True,
                           capture_output=True, text=True)
        conv = json.loads(r.stdout.strip().splitlines()[-1])
        data = t / "data"
        parquet_mb = sum(p.stat().st_size for p in data.rglob("*.parquet")) / 2**20
        base = rss_anon_mib()
        mem, t0 = PeakAnon(), time.perf_counter()
        res = evaluate_suite(lambda exs, bench: ["1963"] * len(exs), t / "run", only=["docvqa_val"], data_dir=data,
                             cache_dir=t / "cache", batch_size=args.batch_size, progress=False)
        secs, peak_anon = time.perf_counter() - t0, mem.stop()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
        print(json.dumps(dict(rows=args.rows, page="1654x2339 RGB", parquet_mib=round(parquet_mb, 1), **conv,
                              anon_after_imports_mib=round(base), eval_peak_anon_mib=round(peak_anon), eval_peak_rss_mib=round(peak),
                              eval_s=round(secs, 1), score=res.tasks["docvqa_val"]["score"])))


if __name__ == "__main__":
    main()
