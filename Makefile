# Every set-up step lives here and is idempotent: a second `make test` reinstalls
# nothing. Everything goes into the project-local .venv.
PYTHON      ?= python3.11
VENV        := .venv
BIN         := $(VENV)/bin
# GPU=1: TensorFlow with its CUDA wheels, and Horovod with NCCL operations, built with the CUDA
# compiler tools/find_cuda.py picks (CUDA_HOME, else a system toolkit, else pip's wheels).
# `make bench-gpu` is for GPU hosts: it sets up the GPU stack, unless SMOKE=1 (the CPU, toy sizes).
ifneq ($(filter bench-gpu,$(MAKECMDGOALS)),)
ifeq ($(filter 1,$(SMOKE))$(filter jax torch,$(BACKEND)),)
GPU         ?= 1
BENCH_ON_GPU := 1
endif
endif
# A venv set up with GPU=1 stays a GPU venv: later commands (make test, make bench-gpu SMOKE=1)
# keep its TensorFlow and Horovod instead of installing the CPU builds over them. GPU=0 switches.
ifneq ($(wildcard $(VENV)/.stamp-base-gpu),)
GPU         ?= 1
endif
GPU         ?= 0
ifeq ($(GPU),1)
TF_PACKAGE  ?= tensorflow[and-cuda]==2.21.0
endif
TF_PACKAGE  ?= tensorflow-cpu==2.21.0
HOROVOD_GPU ?= $(GPU)
# Set HOROVOD=0 to skip the Horovod build (everything then runs as one process).
HOROVOD     ?= 1

FLAVOUR     := $(if $(filter 1,$(GPU)),-gpu,)
STAMP_BASE  := $(VENV)/.stamp-base$(FLAVOUR)
STAMP_DEV   := $(VENV)/.stamp-dev
STAMP_DOCS  := $(VENV)/.stamp-docs
STAMP_HVD   := $(VENV)/.stamp-horovod$(if $(filter 1,$(HOROVOD_GPU)),-nccl,)
# The oldest supported Keras (keras_sngm.SUPPORTED_KERAS), beside the pinned newest: the
# optimizer tests also run with it first on PYTHONPATH.
KERAS_OLDEST := 3.12.0
STAMP_OLD   := $(VENV)/keras-oldest/.stamp-$(KERAS_OLDEST)

# The JAX engine's second venv: Python >= 3.12 (JAX 0.11 needs it), no TensorFlow. PYTHON_JAX: a
# python3.13 or python3.12 that runs, else one that pyenv installed.
VENV_JAX    := .venv-jax
STAMP_JAX   := $(VENV_JAX)/.stamp
PYTHON_JAX  ?= $(firstword $(foreach p,python3.13 python3.12,$(shell $(p) -c 'import sys; print(sys.executable)' 2>/dev/null)) \
                 $(wildcard $(HOME)/.pyenv/versions/3.1[2-9]*/bin/python3))

.PHONY: gpu-preflight install install-dev test test-fast demo bench bench-gpu gpu-paper wheelhouse study planning notebooks docs dist screenshot clean help

help:
	@echo "make test   - set up .venv (TF, Keras, Horovod) and .venv-jax (Python 3.12, JAX 0.11) and run the whole test suite"
	@echo "make demo   - set up .venv and run the main job (ResNet-20 + SNGM under horovodrun -np 2)"
	@echo "make bench  - run the benchmarks in bench/"
	@echo "make bench-gpu - every GPU number on this GPU host into docs/benchmarks-gpu.md (SMOKE=1: the CPU, toy sizes;"
	@echo "                 BACKEND=jax|torch: the host's own JAX or PyTorch, nothing installed)"
	@echo "make gpu-paper - v1 Table 2's ResNet-20 column at B=4096 (SNGM, MSGD, LARS) on one GPU, on the host's own JAX,"
	@echo "                 into docs/results-gpu.md (TIME_LIMIT=480 s; resumable; SMOKE=1: the CPU, toy sizes)"
	@echo "make wheelhouse - the wheels an offline GPU host lacks, into wheelhouse/"
	@echo "make study  - the CPU large-batch studies behind docs/results.md (hours on 2 cores; resumable)"
	@echo "make planning - the runs and measurements behind docs/planning.md, and the page (30 min; resumable)"
	@echo "make notebooks - execute the notebooks at their small size and save them with their outputs"
	@echo "make docs   - the documentation site (MkDocs, API reference from the docstrings) into site/, --strict"
	@echo "make dist   - the sdist and the wheel in dist/ (python -m build)"
	@echo "make screenshot - docs/images/custom_scalars.png: TensorBoard in headless Chromium (needs chromium)"

$(BIN)/python: | gpu-preflight
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel

# What the trainers and `make demo` need: TensorFlow, Keras, TFDS, TensorBoard (and Horovod below).
# GPU=1, before any download or build: a CUDA compiler of TensorFlow 2.21's CUDA major (12).
gpu-preflight:
ifeq ($(BENCH_ON_GPU),1)
	@nvidia-smi -L 2>/dev/null | grep -q "^GPU" || { echo "make bench-gpu: error: no GPU on this host (nvidia-smi lists none)." \
	  "\`make bench-gpu SMOKE=1\` runs the same code paths on the CPU at toy sizes." >&2; exit 2; }
endif
ifeq ($(HOROVOD_GPU)$(wildcard $(STAMP_HVD)),1)
	$(PYTHON) tools/find_cuda.py --tf-cuda 12 --compiler-only $(if $(SNGM_CUDA_MISMATCH),--allow-mismatch,) $(if $(SNGM_CUDA_PREFER),--prefer $(SNGM_CUDA_PREFER),)
endif

# The two TensorFlow builds share their files: switching flavour removes the other one first.
OTHER_TF    := $(if $(filter 1,$(GPU)),tensorflow-cpu,tensorflow)
$(STAMP_BASE): $(BIN)/python requirements.txt setup.py | gpu-preflight
	$(BIN)/pip uninstall -q -y $(OTHER_TF) 2>/dev/null || true
	$(BIN)/pip install -q "$(TF_PACKAGE)" -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

# What only the tests and benchmarks need: pytest, the notebook runner, JAX and PyTorch (the
# optimizers' other backends), Pillow.
$(STAMP_DEV): $(STAMP_BASE) requirements-dev.txt
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

# The documentation site's tools (MkDocs, Material, mkdocstrings); the suite builds the site.
$(STAMP_DOCS): $(BIN)/python requirements-docs.txt
	$(BIN)/pip install -q -r requirements-docs.txt
	touch $@

$(STAMP_HVD): $(STAMP_BASE) tools/install_horovod.sh
ifeq ($(HOROVOD),1)
	HOROVOD_GPU=$(HOROVOD_GPU) PIP="$(BIN)/pip" PYTHON="$(BIN)/python" bash tools/install_horovod.sh
endif
	touch $@

$(STAMP_OLD): $(STAMP_DEV)
	rm -rf $(VENV)/keras-oldest
	$(BIN)/pip install -q --no-deps --target $(VENV)/keras-oldest keras==$(KERAS_OLDEST)
	touch $@

$(STAMP_JAX): requirements-jax.txt setup.py
	@test -n "$(PYTHON_JAX)" || { echo "make: error: the JAX engine's tests need Python >= 3.12 (JAX 0.11 needs it)," \
	  "and none was found: install one (pyenv install 3.12), or name it: make test PYTHON_JAX=/path/to/python3.12" >&2; exit 2; }
	$(PYTHON_JAX) -m venv $(VENV_JAX)
	$(VENV_JAX)/bin/python -m pip install -q --upgrade pip
	$(VENV_JAX)/bin/pip install -q -r requirements-jax.txt
	$(VENV_JAX)/bin/pip install -q --no-deps -e .
	touch $@

install: $(STAMP_BASE) $(STAMP_HVD)

install-dev: install $(STAMP_DEV) $(STAMP_OLD) $(STAMP_DOCS) $(STAMP_JAX)

# Two pytest workers (pytest-xdist): most of a test's time is single-threaded (interpreter and
# TensorFlow start-up in its subprocesses), so two cores run two tests. A file stays on one worker
# (--dist loadfile): dealing tests one by one (loadgroup) measured slower on a fresh clone (2026-12-08),
# with two multi-process tests of one file running at once on the two cores.
PYTEST      := $(BIN)/python -m pytest -q -n 2 --dist loadfile

# --durations=10: the slowest ten tests end the report, so the next regression in the suite's time shows.
# Then the JAX engine's tests again, in .venv-jax: Python 3.12, JAX 0.11, no TensorFlow.
test: install-dev
	$(PYTEST) --durations=10 tests
	KERAS_BACKEND=jax $(VENV_JAX)/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist load tests/test_jax_engine.py

test-fast: install-dev
	$(PYTEST) -m "not slow" tests

demo: install
	PATH="$(abspath $(BIN)):$$PATH" bash tools/demo.sh

bench: install-dev
	$(BIN)/python bench/optimizer_step.py
	KERAS_BACKEND=jax $(BIN)/python bench/optimizer_step_jax.py
	KERAS_BACKEND=torch $(BIN)/python bench/optimizer_step_torch.py
	$(BIN)/python bench/precision.py
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python bench/throughput.py
	$(BIN)/python bench/diagnostics_overhead.py
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python bench/criteo_input.py
	$(BIN)/python bench/image_input.py
	$(BIN)/python bench/adaptive_batch.py
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python bench/faults.py
	$(BIN)/python bench/callback_overhead.py
	KERAS_BACKEND=jax $(BIN)/python bench/callback_overhead.py
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python bench/engines.py

# Every GPU number, on this host, into docs/benchmarks-gpu.md (OUT= another page); resumes a cut
# run (the JSON beside the page); TIME_LIMIT caps it. SMOKE=1: the same code on the CPU, toy sizes.
# BACKEND=jax|torch: on the host's own JAX or PyTorch in HOST_PYTHON, with nothing installed and no
# network (keras-sngm and Keras from `make wheelhouse`'s folder), into docs/benchmarks-gpu-BACKEND.md;
# TIME_LIMIT defaults to 480 s there (8 minutes of one GPU, compilation included).
HOST_PYTHON ?= python3
ifneq ($(filter jax torch,$(BACKEND)),)
bench-gpu:
	$(HOST_PYTHON) bench/host_bench.py --backend $(BACKEND) $(if $(filter 1,$(SMOKE)),--smoke,) \
	  $(if $(OUT),--out $(OUT),) $(if $(TIME_LIMIT),--time-limit $(TIME_LIMIT),)
else ifneq ($(filter-out tensorflow,$(BACKEND)),)
bench-gpu:
	@echo "make bench-gpu: error: BACKEND=$(BACKEND): one of jax, torch (the host's own), tensorflow (the default)" >&2; exit 2
else
bench-gpu: gpu-preflight install-dev
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python bench/gpu_bench.py $(if $(filter 1,$(SMOKE)),--smoke,) \
	  $(if $(OUT),--out $(OUT),) --time-limit $(or $(TIME_LIMIT),3600) $(if $(GPUS),--gpus $(GPUS),)
endif

# v1 Table 2's ResNet-20 rows at B=4096 (SNGM 1.6, MSGD 0.4, LARS 0.8; micro-batch 128, 160 epochs) on one
# GPU: `sngm-train --engine jax` on the host's own JAX in HOST_PYTHON, no TensorFlow, nothing installed, the
# full CIFAR-10 from DATA (the JPEG tar). It probes an epoch's time first, runs the arms that fit TIME_LIMIT
# (default 480 s) in the order SNGM, MSGD, LARS, and keeps each finished arm (docs/results-gpu.json), so a
# second session resumes. SMOKE=1: the same code on the CPU, a few hundred images, 2 epochs.
DATA ?= ../shared/data/cifar10-jpeg.tar
gpu-paper:
	$(HOST_PYTHON) bench/gpu_paper.py --data $(DATA) $(if $(filter 1,$(SMOKE)),--smoke,) $(if $(OUT),--out $(OUT),) \
	  $(if $(TIME_LIMIT),--time-limit $(TIME_LIMIT),) $(if $(RUNS),--runs $(RUNS),)

# On a machine with network: every wheel a GPU host with its own JAX or PyTorch lacks (keras-sngm,
# Keras, the small packages they need, TensorBoard's writer) for WHEEL_PYTHON on WHEEL_PLATFORM, into
# wheelhouse/ (whole, or not at all). The README says how an offline host installs from it.
WHEEL_PYTHON   ?= 3.12
WHEEL_PLATFORM ?= manylinux_2_28_x86_64
wheelhouse: $(BIN)/python
	$(BIN)/python tools/wheelhouse.py --python-version $(WHEEL_PYTHON) --platform $(WHEEL_PLATFORM) --out wheelhouse

docs: $(STAMP_DOCS)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

dist: install-dev
	$(BIN)/python -m build --outdir dist

screenshot: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python tools/tensorboard_screenshot.py docs/images/custom_scalars.png

study: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/sngm-train study --preset cpu-cifar --out runs/study-cpu-cifar --data-dir ../shared/data/cifar10-jpeg.tar
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/sngm-train study --preset cpu-ctr --out runs/study-cpu-ctr
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/sngm-train study --preset cpu-ctr-paper --out runs/study-cpu-ctr-paper
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/sngm-train study --preset cpu-cifar-adaptive --out runs/study-cpu-cifar-adaptive --data-dir ../shared/data/cifar10-jpeg.tar
	$(BIN)/python tools/results_page.py cpu-cifar=runs/study-cpu-cifar cpu-ctr=runs/study-cpu-ctr cpu-ctr-paper=runs/study-cpu-ctr-paper cpu-cifar-adaptive=runs/study-cpu-cifar-adaptive published

planning: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python tools/planning_page.py --data-dir ../shared/data/cifar10-jpeg.tar

notebooks: install-dev
	DATA_DIR=../shared/data/cifar10-jpeg.tar $(BIN)/python tools/execute_notebooks.py

clean:
	rm -rf $(VENV) $(VENV_JAX) build *.egg-info site .pytest-jax-cache
