"""Render nbs/index.ipynb to README.md (nbdev_readme needs quarto, which we do without).

Markdown cells are copied as they are; code cells become ```python blocks, except cells whose
first line is an nbdev directive such as `#| hide`. `--check` exits 1 when README.md differs.
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADER = "<!-- Generated from nbs/index.ipynb by tools/render_readme.py (make export). Edit the notebook, not this file. -->\n\n"


def render(nb_path: Path = ROOT / "nbs" / "index.ipynb") -> str:
    nb = json.loads(nb_path.read_text(encoding="utf-8"))
    parts = []
    for cell in nb["cells"]:
        src = "".join(cell["source"]).strip("\n")
        if not src:
            continue
        if cell["cell_type"] == "markdown":
            parts.append(src)
        elif cell["cell_type"] == "code" and not src.lstrip().startswith("#|"):
            parts.append(f"```python\n{src}\n```")
    return HEADER + "\n\n".join(parts) + "\n"


def main(argv):
    readme = ROOT / "README.md"
    text = render()
    if "--check" in argv:
        if not readme.exists() or readme.read_text(encoding="utf-8") != text:
            print("README.md is out of sync with nbs/index.ipynb: run `make export` (tools/render_readme.py).")
            return 1
        return 0
    readme.write_text(text, encoding="utf-8")
    print(f"wrote {readme.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
