# heed — every target sets itself up on a fresh machine (a venv in .venv).
#   make reproduce [PROFILE=small|smoke|full] [ONLY=name] [RETRAIN=1]   rebuild figures/ through papermill
#   make test                                               what CI runs
#   make lab                                                JupyterLab with the project's kernel
#   make lmms-test                                          lmms-eval itself (own venv, .venv-lmms) running `--model heed`
# GPU users: make reproduce TORCH_SPEC="torch==2.8.0 --index-url https://download.pytorch.org/whl/cu128"
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
PROFILE ?= small
ONLY ?=
STAMP := $(VENV)/.heed-installed

.PHONY: setup reproduce test lab export sync-check nbtest pytest smoke clean lmms-setup lmms-test

setup: $(STAMP)

$(STAMP): settings.ini setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name heed --display-name "Python (heed)" >/dev/null
	touch $@

reproduce: $(STAMP)
	MPLBACKEND=Agg $(BIN)/heed reproduce --profile $(PROFILE) $(if $(ONLY),--only $(ONLY)) $(if $(RETRAIN),--retrain)

test: $(STAMP) sync-check nbtest pytest smoke

# heed/ must be exactly what nbs/ exports, notebooks must be clean, README.md must match index.ipynb.
sync-check: $(STAMP)
	$(BIN)/python tools/check_sync.py

# One thread per process: two notebooks (or pytest beside a kernel) on 2 cores with 2 threads each spin-wait
# on each other and run up to 100x slower (measured: a toy fwd+bwd 0.08 s alone, 7.9 s oversubscribed).
TEST_ENV := MPLBACKEND=Agg OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

nbtest: $(STAMP)
	$(TEST_ENV) $(BIN)/nbdev_test --n_workers 2 $(if $(SLOW),--flags slow)

pytest: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest -q $(if $(SLOW),-m "slow or not slow")

smoke: $(STAMP)
	$(TEST_ENV) $(BIN)/heed reproduce --profile smoke

# After editing notebooks: write heed/ and README.md from nbs/, and clean the notebooks.
export: $(STAMP)
	$(BIN)/nbdev_export
	$(BIN)/nbdev_clean
	$(BIN)/python tools/render_readme.py
	$(BIN)/python -c "from heed.train import write_presets; write_presets('configs')"

# The real harness in its own venv: lmms-eval needs torchvision, which moves torch to another build (≈7 GB, ≈3 min).
# `make lmms-test` then runs tests/test_lmms.py there, where the harness is importable: its evaluator and its
# command line (`lmms-eval --model heed`) on a generate_until and a multiple-choice task, offline, samples checked.
LMMS_VENV ?= .venv-lmms
LMMS_STAMP := $(LMMS_VENV)/.heed-installed

lmms-setup: $(LMMS_STAMP)

$(LMMS_STAMP): settings.ini setup.py
	test -x $(LMMS_VENV)/bin/python || $(PYTHON) -m venv $(LMMS_VENV)
	$(LMMS_VENV)/bin/python -m pip install -q --upgrade pip
	$(LMMS_VENV)/bin/python -m pip install -q -e ".[lmms]" pytest hypothesis
	touch $@

lmms-test: $(LMMS_STAMP)
	$(TEST_ENV) HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(LMMS_VENV)/bin/python -m pytest -q -rs tests/test_lmms.py

lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=. --MultiKernelManager.default_kernel_name=heed

clean:
	rm -rf runs _proc _docs build dist *.egg-info
