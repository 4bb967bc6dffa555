"""The skeleton's promises: sync check, packaging, the runner's failure report, notebook conventions."""
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from heed.reproduce import REQUIRED_PARAMETERS, _write_nb, experiment_notebooks

BIN = Path(sys.executable).parent


def _copy_project(root: Path, dst: Path) -> Path:
    ign = shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints")
    for name in ["settings.ini", "README.md"]:
        shutil.copy(root / name, dst / name)
    for name in ["nbs", "heed", "tools", "configs"]:
        shutil.copytree(root / name, dst / name, ignore=ign)
    return dst


def _sync(dst: Path):
    return subprocess.run([sys.executable, str(dst / "tools" / "check_sync.py")], capture_output=True, text=True)


def test_sync_check_passes_on_the_repo(root, tmp_path):
    r = _sync(_copy_project(root, tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr


def test_hand_edit_of_heed_fails_the_sync_check(root, tmp_path):
    dst = _copy_project(root, tmp_path)
    env_py = dst / "heed" / "env.py"
    env_py.write_text(env_py.read_text() + "\nHAND_EDIT = True\n")
    (dst / "heed" / "stray.py").write_text("x = 1\n")
    r = _sync(dst)
    assert r.returncode == 1
    assert "heed/env.py: differs" in r.stdout and "heed/stray.py: not produced" in r.stdout
    assert "HAND_EDIT" in env_py.read_text(), "the check must not overwrite the hand edit"


def test_unclean_notebook_and_stale_readme_fail_the_sync_check(root, tmp_path):
    dst = _copy_project(root, tmp_path)
    nb_path = dst / "nbs" / "00_env.ipynb"
    nb = json.loads(nb_path.read_text())
    code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    code["execution_count"] = 7
    nb_path.write_text(json.dumps(nb, indent=1))
    (dst / "README.md").write_text((dst / "README.md").read_text() + "\nedited by hand\n")
    r = _sync(dst)
    assert r.returncode == 1
    assert "nbs/00_env.ipynb: differs" in r.stdout and "README.md is out of sync" in r.stdout


def test_every_experiment_notebook_declares_the_runner_parameters(root):
    nbs = experiment_notebooks(root / "nbs" / "experiments")
    assert nbs, "the runner must have real work"
    for p in nbs:
        cells = json.loads(p.read_text())["cells"]
        params = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(params) == 1, f"{p.name}: expected exactly one cell tagged 'parameters'"
        src = "".join(params[0]["source"])
        for name in REQUIRED_PARAMETERS:
            assert f"{name} =" in src, f"{p.name}: parameters cell does not declare {name}"


def test_cli_reproduce_failure_names_notebook_and_cell(tmp_path):
    (tmp_path / "settings.ini").write_text("[DEFAULT]\nlib_name = heed\n")
    exp = tmp_path / "nbs" / "experiments"
    exp.mkdir(parents=True)
    params = ('profile = "small"\nfig_dir = None\ndata_dir = None', ["parameters"])
    _write_nb(exp / "00_fine.ipynb", [params, ("print('ok')", [])])
    _write_nb(exp / "01_broken.ipynb", [params, ("raise KeyError('missing-thing')", [])])
    env = dict(os.environ, HEED_HOME=str(tmp_path))
    r = subprocess.run([str(BIN / "heed"), "reproduce", "--profile", "smoke"], capture_output=True, text=True, env=env)
    assert r.returncode == 1
    assert "01_broken.ipynb: cell 2" in r.stderr and "KeyError" in r.stderr and "missing-thing" in r.stderr
    summary = json.loads((tmp_path / "runs" / "smoke" / "summary.json").read_text())
    assert summary["ok"] is False and [x["name"] for x in summary["runs"]] == ["00_fine"]
    assert not (tmp_path / "figures").exists(), "the smoke profile must not write into figures/"


def test_wheel_installs_and_runs_outside_the_repo(root, tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(root)],
                   check=True, capture_output=True)
    (whl,) = wheels.glob("heed-*.whl")
    names = zipfile.ZipFile(whl).namelist()
    for mod in ["heed/__init__.py", "heed/cli.py", "heed/env.py", "heed/reproduce.py"]:
        assert mod in names
    ep = zipfile.ZipFile(whl).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "heed = heed.cli:cli" in ep
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(whl)],
                   check=True, capture_output=True)
    away = tmp_path / "elsewhere"
    away.mkdir()
    env = dict(os.environ, PYTHONPATH=str(target))
    env.pop("HEED_HOME", None)
    r = subprocess.run([sys.executable, "-c", "import heed, heed.cli; print(heed.__file__); print(heed.__version__)"],
                       cwd=away, env=env, capture_output=True, text=True, check=True)
    file, version = r.stdout.split()
    import configparser
    cfg = configparser.ConfigParser(); cfg.read(root / "settings.ini")
    assert Path(file).is_relative_to(target) and version == cfg["DEFAULT"]["version"]
    r = subprocess.run([str(target / "bin" / "heed"), "env"], cwd=away, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "SSD backend" in r.stdout, r.stderr
