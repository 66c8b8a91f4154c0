# Two commands do everything on a fresh Debian machine:
#   make demo   install what is missing, run the default job (local Ray, digits, CPU)
#   make test   install what is missing, run the default test suite
# Both install every extra (.[all,dev]: FFCV, Ray, the web app); `pip install .` alone runs
# every stage in one process without them (docs/getting-started.md).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_SPEC ?= torch==2.13.0
APT_PKGS := pkg-config libopencv-dev libturbojpeg0-dev
# tests/report/test_report.py opens the HTML report in headless Chromium
TEST_APT_PKGS := chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
RUN ?= runs/digits
# test processes (pytest-xdist); each test file runs whole in one of them
TEST_WORKERS ?= 2

.PHONY: setup demo test test-slow lint bench docs clean

$(STAMP): pyproject.toml
	@dpkg -s $(APT_PKGS) >/dev/null 2>&1 || { \
	  echo "installing system packages FFCV builds against: $(APT_PKGS)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT_PKGS) >/dev/null; }
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[all,dev]'
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/datamodels run configs/digits.yaml --out $(RUN)
	$(BIN)/datamodels query $(RUN) "SELECT plan, count(*) AS models, avg(eval_accuracy) AS test_accuracy FROM models GROUP BY plan ORDER BY plan"
	$(BIN)/datamodels lds-curve $(RUN)
	$(BIN)/datamodels alpha-effect $(RUN)
	$(BIN)/datamodels report $(RUN)

test: setup
	@dpkg -s $(TEST_APT_PKGS) >/dev/null 2>&1 || { \
	  echo "installing the browser the report test opens: $(TEST_APT_PKGS)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(TEST_APT_PKGS) >/dev/null; }
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-slow: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m slow

lint: setup
	$(BIN)/ruff check datamodels tests benchmarks

bench: setup
	$(BIN)/python benchmarks/train_throughput.py

# the documentation site (docs/, mkdocs.yml) into site/; open site/index.html
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf runs .pytest_cache

# the serve screenshots the docs show (analysis/figures/serve_*.png), via headless Chromium
.PHONY: docs-screenshots
docs-screenshots: setup
	DATAMODELS_SERVE_SCREENSHOTS=analysis/figures $(BIN)/python -m pytest -q tests/browse/test_playwright.py
