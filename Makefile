# sharpcxr: every target installs what it needs (uv is bootstrapped when missing).
SHELL := /bin/bash
.DEFAULT_GOAL := help
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
# the full development install: CPU ONNX Runtime, the training stack and the dev group.
# The serving install is smaller (no torch): `uv sync --frozen --no-dev --extra cpu`.
EXTRAS ?= --extra cpu --extra train
RUN := $(UV) run --frozen $(EXTRAS)
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: help uv install serve test test-all models bench bench-vs bench-gpu lint audit fuzz soak soak-short openapi study study-antialias loadtest locust cost-report triton-repo install-sizes deploy-check image image-gpu compose-up contact-sheet screenshots clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

uv:  ## make sure uv is available (pip-installs it when missing)
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	@$(UV) --version

install: uv  ## create .venv from uv.lock (frozen: the lock is the truth)
	@$(UV) sync --frozen $(EXTRAS)

test: install  ## run the default test suite (no slow, no gpu)
	$(RUN) pytest

test-all: install  ## run every test, slow ones included (gpu tests skip without a GPU)
	$(RUN) pytest -m "not gpu"
	$(RUN) pytest -m gpu || test $$? -eq 5

bench: install  ## run the benchmarks (writes benchmarks/results/*.json and prints tables)
	$(RUN) python -m benchmarks.bench_decode --out benchmarks/results/decode.json
	$(RUN) python -m benchmarks.bench_training --out benchmarks/results/training.json --budget-s 6
	$(RUN) python -m benchmarks.bench_service --out benchmarks/results/service.json
	$(RUN) python -m benchmarks.bench_pacs --out benchmarks/results/pacs.json
	$(RUN) python -m benchmarks.bench_bombs --out benchmarks/results/bombs.json
	$(RUN) python -m benchmarks.bench_decode_isolation --out benchmarks/results/decode_isolation.json
	$(RUN) python -m benchmarks.bench_rle --out benchmarks/results/rle.json
	$(RUN) python -m benchmarks.bench_j2k_reduce --mode accurate --auroc-n 100 --out benchmarks/results/j2k_reduce_accurate.json
	$(RUN) python -m benchmarks.bench_j2k_reduce --mode fast --auroc-n 100 --out benchmarks/results/j2k_reduce.json

BASE ?= HEAD~1
bench-vs: install  ## this tree's service against commit $(BASE) (default HEAD~1), same run, same models: 1, 4, 8 clients at 1024 px
	$(RUN) python -m benchmarks.bench_vs_commit --base $(BASE) --resolution 1024 --concurrency 1,4,8 --requests 64 --rounds 2 --out benchmarks/results/vs_commit.json

bench-gpu: install  ## DenseNet-121 model-only on CUDA: eager fp32 vs the torch fast path (and ONNX Runtime CUDA where installed); a smoke run without a GPU
	$(RUN) python -m benchmarks.bench_torch_gpu

lint: install  ## ruff + mypy (strict on imaging/ and service/) + the lockfile audit (findings fail; packages without data are listed)
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy
	$(MAKE) --no-print-directory audit AUDIT_ARGS=--allow-unaudited

# AUDIT_ARGS=--allow-unaudited: report packages without vulnerability data loudly, exit 0
AUDIT_ARGS ?=
audit: install  ## known vulnerabilities of every package pinned in uv.lock (pip-audit; strict: also fails when data is missing, README "Supply chain")
	$(RUN) python tools/audit_lock.py $(AUDIT_ARGS)

fuzz: install  ## the long fuzz runs: 10,000 decoder cases -> benchmarks/results/decoder_fuzz.json, then the slow schemathesis run
	$(RUN) python -m benchmarks.fuzz_decoders --cases 10000 --seed 16 --out benchmarks/results/decoder_fuzz.json
	$(RUN) pytest -m slow tests/fuzz/test_api_schema_fuzz.py -q

soak: install  ## 30-minute soak of a real service at 4 req/s on the test models -> benchmarks/results/soak_30min.{json,png}
	$(RUN) python -m benchmarks.soak --duration-s 1800 --out benchmarks/results/soak_30min.json

soak-short: install  ## 3-minute soak, looser bounds (RSS growth < 15%, p95 drift <= 50%) -> /tmp/sharpcxr-soak-3min.{json,png}
	$(RUN) python -m benchmarks.soak --duration-s 180 --sample-s 5 --rss-growth 0.15 --p95-drift 0.5 --out /tmp/sharpcxr-soak-3min.json

screenshots: install  ## redraw the viewer screenshots in docs/viewer/ (the browser tests, in Chromium)
	SHARPCXR_SCREENSHOTS=docs/viewer $(RUN) pytest tests/e2e/test_viewer.py -q

contact-sheet: install  ## redraw docs/contact_sheet.png from phantoms
	$(RUN) python -m imaging.phantoms.contact_sheet docs/contact_sheet.png

serve: install  ## build demo models if missing and serve on $(HOST):$(PORT)
	@test -f $${SHARPCXR_MODELS_DIR:-models}/manifest.json || $(MAKE) models
	@echo "sharpcxr: serving on http://$(HOST):$(PORT)  (docs http://$(HOST):$(PORT)/docs, metrics http://$(HOST):$(PORT)/metrics)"
	$(RUN) sharpcxr serve --host $(HOST) --port $(PORT)

models: install  ## build the demo models (compact DenseNet on phantoms, 256/512/1024) and models/manifest.json
	$(RUN) python -m training.demo --models-dir models --summary models/demo-summary.json

openapi: install  ## regenerate openapi/openapi.json from the app
	$(RUN) python -m service.openapi openapi/openapi.json

study: install  ## the CPU resolution study (compact, 64-512 px, 3 folds; ~45 min): reports/phantom-compact/
	$(RUN) sharpcxr study $(STUDY_ARGS)

study-antialias: install  ## add blurpool and flc beside standard to the same study (reuses finished runs; ~1 h)
	$(RUN) sharpcxr study --downsamples standard,blurpool,flc --no-shift-ablation $(STUDY_ARGS)

loadtest: install  ## per-resolution cost sweep against a running service (make serve first; extra flags via LOADTEST_ARGS)
	$(RUN) python -m load_tests.sweep --url http://$(HOST):$(PORT) --out load_tests/results/sweep.json $(LOADTEST_ARGS)

LOCUST_RESOLUTIONS ?= 256,512,1024
locust: install  ## Locust, headless, per resolution against a running service (LOCUST_RESOLUTIONS, LOCUST_ARGS): CSV in load_tests/results/
	SHARPCXR_LOCUST_RESOLUTIONS=$(LOCUST_RESOLUTIONS) $(RUN) locust -f load_tests/locustfile.py --headless -u 4 -r 4 -t 30s --host http://$(HOST):$(PORT) --csv load_tests/results/locust --only-summary $(LOCUST_ARGS)

# COST_SWEEP=file reuses a sweep (e.g. load_tests/results/sweep.json, the committed one);
# without it the running service is swept into a temporary file, which the report copies
# into its new folder (sweep.json) before the temporary one is removed.
COST_SWEEP ?=
cost-report: install  ## cost per 1,000 studies vs AUROC per resolution from one sweep -> a new reports/cost/<time>-<sha>/ (COST_SWEEP, LOADTEST_ARGS, COST_ARGS)
	@set -e; sweep="$(COST_SWEEP)"; \
	if [ -z "$$sweep" ]; then \
	  tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; sweep="$$tmp/sweep.json"; \
	  $(RUN) python -m load_tests.sweep --url http://$(HOST):$(PORT) --out "$$sweep" $(LOADTEST_ARGS); \
	fi; \
	$(RUN) python -m load_tests.cost_report --sweep "$$sweep" --study reports/phantom-compact/results.json $(COST_ARGS)

triton-repo: install  ## a Triton model repository (config.pbtxt, dynamic batching) from models/ -> triton_repo/ (TRITON_ARGS, e.g. --gpu --force)
	$(RUN) sharpcxr triton-export --models-dir models --out triton_repo $(TRITON_ARGS)

install-sizes: install  ## measure the serving, GPU and full installs (fresh venvs from uv.lock) -> benchmarks/results/install_sizes.*
	$(RUN) python -m benchmarks.install_sizes --out benchmarks/results/install_sizes.json

deploy-check: install  ## only the deployment checks: serving install, hadolint, Compose + Kubernetes schemas, promtool, the live Prometheus
	$(RUN) pytest tests/deploy tests/e2e/test_prometheus.py -q

# These three need a Docker engine (none runs on the machines this was built on; see README).
image:  ## docker build the cpu image (sharpcxr:cpu)
	docker build --target cpu -t sharpcxr:cpu .

image-gpu:  ## docker build the gpu image (sharpcxr:gpu; CUDA 13, onnxruntime-gpu, TensorRT 10)
	docker build --target gpu -t sharpcxr:gpu .

compose-up:  ## sharpcxr + Prometheus + Grafana (models/ must exist: make models); profiles via COMPOSE_PROFILES=pacs,gpu
	docker compose up -d --build

clean:  ## remove caches (keeps .venv and models)
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis
