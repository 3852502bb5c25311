# faceaudit: `make demo` and `make test` set everything up on a fresh clone (Python >= 3.11, pip, make).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUM := $(shell cat pyproject.toml | cksum | cut -d' ' -f1)
BASE := $(VENV)/.base-$(SUM)
STAMP := $(VENV)/.installed-$(SUM)
LFW := ../shared/data/lfw

.PHONY: demo test lint typecheck pytest browser postgres bench calibrate lfw-compare clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# What faceaudit itself needs (the demo needs nothing more); the comparison kernel is compiled once here,
# into Numba's cache beside the source, so no command pauses to compile it on first use.
$(BASE): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/python -c "from faceaudit.scoring.compare import warm_up; warm_up()"
	rm -f $(VENV)/.base-* && touch $@

# The test tools and the dlib engine on top.
$(STAMP): $(BASE)
	$(BIN)/python -m pip install --quiet -e '.[test,dlib]'
	# face_recognition, the reference the dlib engine is tested and timed against: --no-deps because its
	# metadata asks for the source package dlib (a C++ build); dlib-bin provides the same module.
	$(BIN)/python -m pip install --quiet --no-deps face_recognition==1.3.0
	rm -f $(VENV)/.installed-* && touch $@

demo: $(BASE)
	$(BIN)/faceaudit demo --out faceaudit-demo
	@echo "Open faceaudit-demo/report.html in a browser; check it with: $(BIN)/faceaudit verify-report faceaudit-demo"

test: $(STAMP) lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) browser postgres
	$(BIN)/pytest

# The PostgreSQL tests start a throw-away server of their own from Debian's server binaries (tests/pgserver.py).
# Installed here when missing (as root, with apt-get); where they cannot be, those tests skip and say why.
postgres:
	@if command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql) \
	    >/tmp/faceaudit-apt-postgresql.log 2>&1 \
	    || echo "note: installing postgresql failed (see /tmp/faceaudit-apt-postgresql.log)"; \
	else echo "note: PostgreSQL (initdb) is missing; the PostgreSQL tests will skip"; fi

# The report test renders report.html in Debian's headless Chromium. Installed here when missing (as root,
# with apt-get); where it cannot be, the test skips and says why.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver) \
	    >/tmp/faceaudit-apt.log 2>&1 || echo "note: installing chromium failed (see /tmp/faceaudit-apt.log)"; \
	else echo "note: chromium and chromium-driver are missing; the browser test will skip"; fi

# The default engine and dlib side by side on LFW (../shared/data/lfw), by sex and race: one report folder.
lfw-compare: $(STAMP)
	$(BIN)/faceaudit audit --config examples/lfw-compare.toml --out lfw-compare
	@echo "Open lfw-compare/report.html in a browser"

# Long measurements (LFW accuracy, throughput, cache, memory); results go to benchmarks/results/.
bench: $(STAMP)
	$(BIN)/python benchmarks/lfw_view2.py
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/memory.py
	$(BIN)/python benchmarks/evaluate_scale.py
	$(BIN)/python benchmarks/lfw_vs_pyeer.py
	$(BIN)/python benchmarks/audit_lfw.py
	$(BIN)/python benchmarks/audit_scores_memory.py
	$(BIN)/python benchmarks/dlib_engine.py
	$(BIN)/python benchmarks/dlib_variants.py
	$(BIN)/python benchmarks/onnx_engine_lfw.py
	$(BIN)/python benchmarks/compare_lfw.py
	$(BIN)/python benchmarks/distributed_scale.py
	$(BIN)/python benchmarks/gallery_enrol.py
	$(BIN)/python benchmarks/gallery_search.py
	$(BIN)/python benchmarks/first_run.py
	$(BIN)/python benchmarks/service_load.py
	$(BIN)/python benchmarks/mitigation_lfw.py
	bash benchmarks/bob/run.sh

# Rebuild the bundled engines' verification calibrations from LFW (all pairs, about 87.5 million).
calibrate: $(STAMP)
	for engine in yunet-sface dlib-resnet; do \
	  $(BIN)/faceaudit embed $(LFW)/manifest.csv --engine $$engine --out build/lfw-$$engine.parquet && \
	  $(BIN)/faceaudit calibrate --embeddings build/lfw-$$engine.parquet --manifest $(LFW)/manifest.csv \
		--dataset "LFW deep-funneled, all 13,233 images (../shared/data/lfw)" \
		--out src/faceaudit/engines/calibration/$$engine.json || exit 1; \
	done

clean:
	rm -rf $(VENV) build faceaudit-demo lfw-compare .pytest_cache .mypy_cache .ruff_cache
