# The verbs a user types. `make repro` and `make test` work on a fresh clone: both create .venv
# with the pinned dependencies first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
INSTALLED := $(VENV)/.installed
BACKENDS := $(VENV)/.backends
TEAM := $(VENV)/.team
PORT ?= 5000
SERVE_PORT ?= 5001
MODEL ?= digits

# Stage commands in dvc.yaml say `python`; this makes it the project's interpreter.
export PATH := $(BIN):$(PATH)

.DEFAULT_GOAL := help
.PHONY: help install install-backends install-team repro test ui predict serve services services-stop lint format docs lock \
	bench bench-backends bench-prepare bench-scale bench-tracking bench-distributed

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(INSTALLED): requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip==26.3
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	touch $@

install: $(INSTALLED) ## Create .venv with the pinned dependencies

# JAX and PyTorch, pinned and constrained to the default install's versions of what they share.
$(BACKENDS): requirements-backends.lock $(INSTALLED)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-backends.lock -c requirements.lock
	touch $@

install-backends: $(BACKENDS) ## Add the JAX and PyTorch backends to .venv (train.backend: jax or torch)

# The PostgreSQL driver, the S3 clients and SeaweedFS, pinned like the backends; PostgreSQL's server
# comes from the system's packages (Debian's `postgresql`), installed here when run as root.
$(TEAM): requirements-team.lock $(INSTALLED)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-team.lock -c requirements.lock
	@if ! command -v pg_ctl >/dev/null && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null; \
		else \
			echo "make install-team: PostgreSQL's server is missing: install it (Debian/Ubuntu: sudo apt-get install postgresql)"; \
		fi; \
	fi
	touch $@

install-team: $(TEAM) ## Add shared tracking and the DVC S3 remote (psycopg, SeaweedFS, S3 clients) to .venv; PostgreSQL when root

repro: $(INSTALLED) ## Install, then run the whole pipeline on the embedded digits (dvc repro)
	dvc repro

# Two pytest workers (pytest-xdist), each taking whole test files in their order: most of a test's
# time is one process importing TensorFlow on one core, so two of them use both cores of the
# reference machine. `make test TEST_WORKERS=0` runs everything in one process.
TEST_WORKERS ?= 2

test: $(INSTALLED) $(BACKENDS) $(TEAM) ## Install all three backends and the team services, then run every test, slow ones included, offline
	python -m pytest $(if $(filter 0,$(TEST_WORKERS)),,--numprocesses $(TEST_WORKERS) --dist loadfile)

ui: $(INSTALLED) ## Open the MLflow UI on 127.0.0.1:$(PORT) against the project's store
	@echo "MLflow UI: http://127.0.0.1:$(PORT)/#/experiments (runs table: .../#/experiments/<id>/runs)"
	mlflow ui --backend-store-uri "sqlite:///$(CURDIR)/mlflow.db" --host 127.0.0.1 --port $(PORT)

predict: $(INSTALLED) ## Predict 8 test-split images, written as PNG files to samples/, with the exported SavedModel
	python -m image_classification.data.samples --dataset data/prepared --membership data/split/membership.npz \
		--count 8 --output samples/test
	python -m image_classification.serving.predict samples/test

serve: $(INSTALLED) ## Serve the registered $(MODEL)@champion over REST on 127.0.0.1:$(SERVE_PORT) (mlflow models serve)
	MLFLOW_TRACKING_URI="sqlite:///$(CURDIR)/mlflow.db" mlflow models serve -m "models:/$(MODEL)@champion" \
		--env-manager local --host 127.0.0.1 --port $(SERVE_PORT)

services: $(TEAM) ## Start PostgreSQL, a SeaweedFS S3 store and an MLflow server on 127.0.0.1 for shared tracking (docs/team.md)
	python -m image_classification.services.stack start

services-stop: $(INSTALLED) ## Stop what `make services` started (its data stays in .services/)
	python -m image_classification.services.stack stop

bench: $(INSTALLED) ## Benchmark training, dvc repro, memory and FLOPs against plain Keras (writes BENCHMARKS.md)
	python -m benchmarks.run --output BENCHMARKS.md

bench-prepare: $(INSTALLED) ## Time prepare on 70,000 generated 28x28 PNG files
	python benchmarks/prepare_images.py

bench-backends: $(BACKENDS) ## Train the default recipe on TensorFlow, JAX and PyTorch side by side (writes docs/backend-comparison.md)
	python -m benchmarks.backends --output docs/backend-comparison.md

bench-tracking: $(TEAM) ## Seconds each stage spends in MLflow calls: SQLite store against the shared server (writes docs/tracking-benchmark.md)
	python -m benchmarks.tracking --output docs/tracking-benchmark.md

bench-distributed: $(BACKENDS) ## Two JAX training processes against one: images per second and communication overhead (writes docs/distributed-benchmark.md)
	python -m benchmarks.distributed --output docs/distributed-benchmark.md

bench-scale: $(INSTALLED) ## Memory per stage, training speed and incremental prepare at 5,000 to 600,000 images, 64x64 RGB folders, the photo recipe (writes docs/scale.md)
	python -m benchmarks.scale --output docs/scale.md

lint: $(INSTALLED) ## Check style with ruff
	ruff check .
	ruff format --check .

format: $(INSTALLED) ## Fix what ruff can fix
	ruff check --fix .
	ruff format .

docs: $(INSTALLED) ## Regenerate docs/params.md from the typed params and params.yaml
	python -m image_classification.config --params params.yaml --output docs/params.md

lock: ## Re-resolve pyproject.toml's pins into requirements.lock, -backends.lock and -team.lock (needs the network)
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip==26.3
	.lock-venv/bin/python -m pip install --quiet ".[dev]"
	echo "# Every package of the tested install, pinned. Generated by \`make lock\` from pyproject.toml." > requirements.lock
	.lock-venv/bin/python -m pip freeze --exclude image-classification-pipeline >> requirements.lock
	.lock-venv/bin/python -m pip install --quiet ".[jax,torch]" -c requirements.lock
	printf '%s\n' "# The JAX and PyTorch backends and what they add to requirements.lock, pinned. Generated by \`make lock\`;" \
		"# \`make install-backends\` installs it on top of requirements.lock (docs/backends.md)." > requirements-backends.lock
	.lock-venv/bin/python -m pip freeze --exclude image-classification-pipeline | grep -vxFf requirements.lock \
		| sed 's/+cpu$$//' >> requirements-backends.lock
	.lock-venv/bin/python -m pip install --quiet ".[team]" -c requirements.lock
	printf '%s\n' "# Shared tracking and the DVC S3 remote (the \`team\` extra) and what they add to requirements.lock, pinned." \
		"# Generated by \`make lock\`; \`make install-team\` installs it on top of requirements.lock (docs/team.md)." > requirements-team.lock
	.lock-venv/bin/python -m pip freeze --exclude image-classification-pipeline | sed 's/+cpu$$//' \
		| grep -vxFf requirements.lock | grep -vxFf requirements-backends.lock >> requirements-team.lock
	rm -rf .lock-venv
