"""Fail when heed/ is not exactly what nbs/ exports, when a notebook is not clean, or when
README.md differs from nbs/index.ipynb.

Non-destructive: the export and the clean run on a copy in a temporary folder, so a hand edit
in heed/ is reported, never overwritten.
"""
import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
IGNORE = shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints", "*.pyc")


def tree(d: Path) -> dict:
    return {p.relative_to(d): p for p in sorted(d.rglob("*")) if p.is_file() and "__pycache__" not in p.parts
            and ".ipynb_checkpoints" not in p.parts}


def compare(ours: Path, theirs: Path, label: str, fix: str) -> list:
    a, b = tree(ours), tree(theirs)
    problems = []
    for rel in sorted(set(a) | set(b)):
        if rel not in b:
            problems.append(f"{label}/{rel}: not produced from the notebooks ({fix})")
        elif rel not in a:
            problems.append(f"{label}/{rel}: missing, the notebooks would write it ({fix})")
        elif not filecmp.cmp(a[rel], b[rel], shallow=False):
            problems.append(f"{label}/{rel}: differs from what the notebooks give ({fix})")
    return problems


def run(cmd, cwd):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{r.stdout}\n{r.stderr}")


def main() -> int:
    problems = []
    with tempfile.TemporaryDirectory() as t:
        t = Path(t)
        shutil.copy(ROOT / "settings.ini", t / "settings.ini")
        shutil.copytree(ROOT / "nbs", t / "nbs", ignore=IGNORE)
        run([BIN / "nbdev_export"], t)  # into an empty heed/: stray hand-made files show up too
        problems += compare(ROOT / "heed", t / "heed", "heed",
                            "heed/ is written by nbdev_export only: edit the notebook in nbs/, then `make export`")
        # configs/ is the YAML rendering of heed.train's presets, written by `make export`
        if (ROOT / "configs").exists() or (t / "heed" / "train.py").exists():
            r = subprocess.run([sys.executable, "-c", "import sys; from heed.train import write_presets; write_presets(sys.argv[1])",
                                str(t / "configs")], cwd=t, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(t)})
            if r.returncode: sys.exit(f"rendering configs/ failed:\n{r.stderr}")
            problems += compare(ROOT / "configs", t / "configs", "configs", "configs/ is rendered from heed.train presets: run `make export`")
        run([BIN / "nbdev_clean"], t)
        problems += compare(ROOT / "nbs", t / "nbs", "nbs", "notebook not clean: run `make export` (nbdev_clean)")
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "render_readme.py"), "--check"], capture_output=True, text=True)
    if r.returncode:
        problems.append(r.stdout.strip())
    if problems:
        print("sync check FAILED:\n  " + "\n  ".join(problems))
        return 1
    print("sync check: heed/ matches nbs/, notebooks are clean, README.md matches nbs/index.ipynb")
    return 0


if __name__ == "__main__":
    sys.exit(main())
