# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
JS     := tests/js/node_modules/.installed
DEMO_JS := web_demo/node_modules/.installed
ADMIN_JS := admin_ui/node_modules/.installed
BENCH_JS := bench/node_modules/.installed
APT_PACKAGES := redis-server:redis-server redis-cli:redis-tools nginx:nginx chromium:chromium

.PHONY: run test lint venv system-deps js-deps dist bench screenshot clean

run: $(STAMP) $(DEMO_JS) $(ADMIN_JS)
	$(BIN)/ticketgate serve --demo

test: system-deps $(STAMP) $(JS) $(DEMO_JS) $(ADMIN_JS) lint
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,dev]'
	touch $@

js-deps: $(JS) $(DEMO_JS) $(ADMIN_JS)

$(DEMO_JS): web_demo/package.json web_demo/package-lock.json
	cd web_demo && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The operator UI's prebuilt page (@socket.io/admin-ui) and its icon font (@mdi/font).
$(ADMIN_JS): admin_ui/package.json admin_ui/package-lock.json
	cd admin_ui && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(JS): tests/js/package.json tests/js/package-lock.json
	cd tests/js && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# dist/: a wheel and an sdist that carry the web demo and its pinned socket.io-client
# bundle, and the operator UI's page and icon font (setup.py copies them from
# web_demo/node_modules and admin_ui/node_modules), so an installed ticketgate
# serves --demo and admin_ui with no checkout, node or npm. The wheel is built
# from the sdist, which proves the sdist complete too.
dist: $(STAMP) $(DEMO_JS) $(ADMIN_JS)
	rm -rf dist build
	$(BIN)/python -m build --outdir dist .

# Installs the servers the integration tests start (as root, from Debian's packages).
system-deps:
	@missing=""; \
	for pair in $(APT_PACKAGES); do \
	  cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  PATH="$$PATH:/usr/sbin:/sbin" command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# docs/demo.png: the demo page after a full login, in Debian's Chromium (as the tests drive it).
screenshot: system-deps $(STAMP) $(DEMO_JS) $(ADMIN_JS)
	$(BIN)/python -m tests.demo.screenshot

$(BENCH_JS): bench/package.json bench/package-lock.json
	cd bench && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Never part of `make test`: figures are measured by hand, against Node socket.io in the same run.
bench: system-deps $(STAMP) $(BENCH_JS)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) tests/js/node_modules web_demo/node_modules admin_ui/node_modules bench/node_modules .pytest_cache .mypy_cache .ruff_cache
	rm -rf dist build ticketgate.egg-info
