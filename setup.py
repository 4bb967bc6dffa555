"""Packaging for heed. Metadata and dependencies come from settings.ini (declared once there)."""
import shutil
from configparser import ConfigParser
from pathlib import Path

import setuptools
from setuptools.command.build_py import build_py

here = Path(__file__).parent
cfg = ConfigParser(delimiters=["="])
cfg.read(here / "settings.ini", encoding="utf-8")
cfg = cfg["DEFAULT"]

statuses = ["1 - Planning", "2 - Pre-Alpha", "3 - Alpha", "4 - Beta", "5 - Production/Stable", "6 - Mature", "7 - Inactive"]
licenses = {"mit": ("MIT License", "OSI Approved :: MIT License")}
lic = licenses[cfg["license"]]


def reqs(key):
    return cfg.get(key, "").split()


# Files the presets name by relative path, shipped inside the package (heed/_shipped/...) so that an installed heed works
# outside a clone: the committed toy teacher and the preset configs. heed.env.input_path finds them.
SHIPPED = ["data/teacher/model", "configs"]


class BuildWithShipped(build_py):
    "build_py, plus copies of SHIPPED under the built package's _shipped/ (an editable install reads the clone instead)."

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False): return
        for rel in SHIPPED:
            src, dst = here / rel, Path(self.build_lib) / cfg["lib_path"] / "_shipped" / rel
            if not src.is_dir(): raise FileNotFoundError(f"{src}: missing; a wheel of heed ships it (setup.py SHIPPED)")
            if dst.exists(): shutil.rmtree(dst)
            shutil.copytree(src, dst)


setuptools.setup(
    name=cfg["lib_name"],
    version=cfg["version"],
    description=cfg["description"],
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    author=cfg["author"],
    author_email=cfg["author_email"],
    url=cfg["git_url"],
    license=lic[0],
    keywords=cfg["keywords"].split(),
    classifiers=[
        "Development Status :: " + statuses[int(cfg["status"]) - 1],
        "Intended Audience :: " + cfg["audience"],
        "License :: " + lic[1],
        "Natural Language :: " + cfg["language"],
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
    python_requires=">=" + cfg["min_python"],
    packages=setuptools.find_packages(include=[cfg["lib_path"], cfg["lib_path"] + ".*"]),
    include_package_data=True,
    install_requires=reqs("requirements"),
    extras_require={"dev": reqs("dev_requirements"), "cuda": reqs("cuda_requirements"), "lmms": reqs("lmms_requirements")},
    entry_points={
        "console_scripts": cfg["console_scripts"].split(),
        "nbdev": [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"],
        # lmms-eval finds `--model heed` through this entry point (heed.lmms)
        "lmms_eval.models": ["heed = heed.lmms:lmms_eval_manifest"],
    },
    cmdclass={"build_py": BuildWithShipped},
    zip_safe=False,
)
