# `make train` and `make test` each create .venv on first use and install the pinned
# dependencies (requirements.txt, requirements-no-deps.txt) and this project into it.
# GPU=1 (on a fresh clone, or after `make clean`) installs TensorFlow's CUDA build
# instead of the CPU one: `make train GPU=1`.

# The pinned packages (TensorFlow 2.15 with tensorflow-datasets 4.9.4 and onnxruntime 1.32)
# install on Python 3.11 only.
PYTHON ?= $(shell for candidate in python3.11 python3; do \
	command -v $$candidate >/dev/null 2>&1 && { echo $$candidate; break; }; done)
VENV := .venv
VENV_PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
TENSORFLOW_GPU := tensorflow[and-cuda]==2.15.1

.PHONY: train test second-environments docs test-profile keras3-env keras3-exports torch-env memory-benchmark reliability-trials cluster-trials cluster-benchmark clean

train: $(INSTALLED)
	$(VENV_PYTHON) bin/train --model=temporal_cnn_lstm

# One pytest worker per core the machine reports, one test file each at a time (module
# fixtures stay in one process), the longest files first (tests/conftest.py orders them)
# so that no worker is left with a long file at the end. A worker that crashes ends the run
# at once, naming the test it was running: a replaced worker can wait forever under
# --dist loadfile (pytest-xdist 3.8).
PYTEST_WORKERS := -n logical --dist loadfile --no-loadscope-reorder --max-worker-restart=0
test: second-environments $(INSTALLED)
	$(VENV_PYTHON) -m pytest $(PYTEST_WORKERS) tests

# The Keras 3 and PyTorch environments that tests use, made once per machine in the cache
# folder (they need nothing of this project but the standard library), start in the
# background while pip fills .venv: on a new machine about 90 s of installs beside the
# venv's, not a test worker's. Tests that need one wait for its lock; should making it
# fail, they make it and say why.
SECOND_ENVIRONMENTS := estimator_models.serving.keras3_environment estimator_models.benchmarks.torch_environment
second-environments:
	( for module in $(SECOND_ENVIRONMENTS); do "$(PYTHON)" -m $$module || exit; done ) >/dev/null 2>&1 &

# docs/hparams.md from the hparam declarations (tests/test_hparams_doc.py checks it is current).
docs: $(INSTALLED)
	$(VENV_PYTHON) -m estimator_models.running.hparams_doc > docs/hparams.md.tmp
	mv docs/hparams.md.tmp docs/hparams.md

# make test, reporting the 40 slowest tests and each file's CPU time (BENCHMARKS.md).
test-profile: second-environments $(INSTALLED)
	mkdir -p runs && rm -f runs/test_cpu_times.jsonl
	PYTHONPATH=tests $(VENV_PYTHON) -m pytest $(PYTEST_WORKERS) -p cpu_time_report \
		--cpu-times=runs/test_cpu_times.jsonl --durations=40 tests

$(INSTALLED): requirements.txt requirements-no-deps.txt setup.py estimator_models/layers/kernels/lstm_sequence.cc
	@"$(PYTHON)" -c 'import sys; ok = sys.version_info[:2] == (3, 11); \
		print(("" if ok else "error: ") + "this project installs on Python 3.11 only; found " \
		+ sys.version.split()[0] + " at " + sys.executable + ("" if ok else " (set PYTHON=/path/to/python3.11)"), \
		file=sys.stderr); sys.exit(0 if ok else 1)' \
		|| { [ -n "$(PYTHON)" ] || echo "error: no python3 found (set PYTHON=/path/to/python3.11)" >&2; exit 1; }
	"$(PYTHON)" -m venv $(VENV)
	$(VENV_PYTHON) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(VENV_PYTHON) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-no-deps.txt
	$(if $(GPU),$(VENV_PYTHON) -m pip uninstall --quiet --yes tensorflow-cpu)
	$(if $(GPU),$(VENV_PYTHON) -m pip install --quiet --disable-pip-version-check '$(TENSORFLOW_GPU)')
	$(VENV_PYTHON) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(VENV_PYTHON) -m estimator_models.layers.kernels
	touch $@

# The second Python environment of bin/export --format=keras3 (requirements-keras3.txt:
# Keras 3 on JAX), made once per machine in the cache folder (about 40 s, 700 MB) and
# its interpreter printed. bin/export and the tests make it on first use without this.
keras3-env: $(INSTALLED)
	$(VENV_PYTHON) -m estimator_models.serving.keras3_environment

# Keras 3 exports of every option the Keras 3 models express (13 variants, each trained
# 3 steps, exported, verified and answering held-out examples; docs/keras3.md); about
# 5 minutes. make test exports three of them.
keras3-exports: $(INSTALLED)
	KERAS3_EVERY_OPTION=1 $(VENV_PYTHON) -m pytest -p no:xdist -q tests/test_keras3_export.py -k each_model

# The PyTorch environment of bin/benchmark --train's PyTorch twins (requirements-torch.txt:
# torch's CPU build), made once per machine in the cache folder (about 50 s, 1 GB) and
# its interpreter printed. bin/benchmark and the tests make it on first use without this.
torch-env: $(INSTALLED)
	$(VENV_PYTHON) -m estimator_models.benchmarks.torch_environment

# Trains from 2 GB of TFRecord clips and reports the peak memory (BENCHMARKS.md); ~10 min.
MEMORY_RUN := runs/memory_benchmark
memory-benchmark: $(INSTALLED)
	mkdir -p $(MEMORY_RUN)
	[ -e $(MEMORY_RUN)/clips.metadata.json ] || \
		$(VENV_PYTHON) bin/benchmark --write_noise_clips=$(MEMORY_RUN)/clips --gigabytes=2
	du -sh $(MEMORY_RUN)
	rm -rf $(MEMORY_RUN)/run
	/usr/bin/time -v -o $(MEMORY_RUN)/time.txt $(VENV_PYTHON) bin/train --model=temporal_cnn_lstm \
		--data='$(MEMORY_RUN)/clips.tfrecord*' --model_dir=$(MEMORY_RUN)/run --train_steps=300 \
		--checkpoint_every=300 --hparams=height=32,width=32
	grep -E 'Maximum resident|Elapsed' $(MEMORY_RUN)/time.txt

# Ten SIGKILL-and-restart trials of bin/train at random moments, against an uninterrupted
# run (docs/reliability.md); about 15 minutes. make test runs one such trial.
reliability-trials: $(INSTALLED)
	$(VENV_PYTHON) tests/reliability/kill_trials.py --trials=10

# Real local clusters with a worker, the chief or a ps killed mid-run (docs/distributed.md);
# about 10 minutes. make test kills one worker once.
cluster-trials: $(INSTALLED)
	$(VENV_PYTHON) tests/reliability/cluster_trials.py

# Training rate of 1 worker, 2 workers + 1 ps and 2 all-reduce workers on this machine
# (BENCHMARKS.md); about 15 minutes.
cluster-benchmark: $(INSTALLED)
	$(VENV_PYTHON) bin/benchmark --cluster --model=pixel_row_lstm --steps=1500 \
		--json_out=runs/cluster_benchmark_pixel_row_lstm.json
	$(VENV_PYTHON) bin/benchmark --cluster --model=temporal_cnn_lstm --steps=800 \
		--json_out=runs/cluster_benchmark_temporal_cnn_lstm.json

clean:
	rm -rf $(VENV) runs
