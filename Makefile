# Every install step lives here: a fresh clone needs only `make demo` or `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# The first interpreter >= 3.12 found (mitmproxy 12 needs it); pyenv versions included.
PYTHON_BASE ?= $(shell for p in python3.13 python3.12 $$HOME/.pyenv/versions/3.13*/bin/python3 $$HOME/.pyenv/versions/3.12*/bin/python3 python3; do \
  command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1 && { echo $$p; break; }; done)

.PHONY: containment-tools browser-tools venv demo test test-fast bench nginx lint typecheck clean postgres

$(STAMP): pyproject.toml
	@if [ -z "$(PYTHON_BASE)" ]; then echo "capgate needs Python >= 3.12 (mitmproxy 12); none found on PATH or under ~/.pyenv" >&2; exit 2; fi
	@test -x $(PY) || $(PYTHON_BASE) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	@touch $(STAMP)

# capgate exec contains the agent with bubblewrap (Debian's bubblewrap package); checked on
# every run (cheap), installed when missing and we are root with apt-get.
containment-tools:
	@command -v bwrap >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  (apt-get install -y -q bubblewrap >/dev/null || \
	    { apt-get update -q >/dev/null && apt-get install -y -q bubblewrap >/dev/null; }); } || \
	  echo "bubblewrap not installed: capgate exec needs it (or --no-contain)" >&2

# Node's fetch through the proxy: undici for capgate's preload, from the npm registry.
NODE_DEPS := proxy/contain/node/node_modules/.package-lock.json
$(NODE_DEPS): proxy/contain/node/package.json proxy/contain/node/package-lock.json
	@if command -v npm >/dev/null; then \
	  (cd proxy/contain/node && npm ci --no-audit --no-fund --omit=dev --loglevel=error) || \
	  echo "npm ci failed: Node's fetch will not use the proxy under capgate exec" >&2; \
	else echo "npm not found: Node's fetch will not use the proxy under capgate exec" >&2; fi

# The console's browser tests (tests/console): Debian's Chromium, driven by Playwright
# (never `playwright install`, which downloads a browser); checked on every run, installed
# when missing and we are root with apt-get.
browser-tools:
	@test -x /usr/bin/chromium || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  (apt-get install -y -q chromium >/dev/null || \
	    { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }); } || \
	  echo "chromium not installed: the console's browser tests need /usr/bin/chromium" >&2

# axe-core from the npm registry, injected into the console's pages by the accessibility test.
AXE_DEPS := tests/console/axe/node_modules/.package-lock.json
$(AXE_DEPS): tests/console/axe/package.json tests/console/axe/package-lock.json
	@if command -v npm >/dev/null; then \
	  (cd tests/console/axe && npm ci --no-audit --no-fund --loglevel=error) || \
	  echo "npm ci failed: the console's accessibility test will be skipped" >&2; \
	else echo "npm not found: the console's accessibility test will be skipped" >&2; fi

venv: $(STAMP) $(NODE_DEPS) $(AXE_DEPS) containment-tools browser-tools

demo: venv
	$(PY) examples/demo.py

# PostgreSQL server binaries for the tests' private cluster (tests/pg.py: initdb into a
# temporary folder, run as an unprivileged user on 127.0.0.1, stopped by PID). Debian's
# package; in CI (CI=true) the PostgreSQL tests fail if the cluster cannot start.
postgres:
	@ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null && (apt-get install -y -q postgresql >/dev/null || \
	    { apt-get update -q >/dev/null && apt-get install -y -q postgresql >/dev/null; }) || \
	    echo "PostgreSQL not installed: its tests will be skipped (errors in CI)" >&2; }

# Everything, slow tier included (the demo, the CLI-process e2e suites, the races).
test: venv nginx postgres
	$(VENV)/bin/pytest -q -p no:cacheprovider

# The tier for every edit: tests not marked slow (@pytest.mark.slow: more than ~5 s).
test-fast: venv nginx
	$(VENV)/bin/pytest -q -p no:cacheprovider -m "not slow"

bench: $(STAMP) nginx
	$(PY) -m tests.bench $(BENCH_ARGS)

# nginx: the bench's fast local upstream, and the e2e tests' two-virtual-host upstream
# (routing by request line; tests/e2e/nginx_vhosts.py). The bench falls back to its
# asyncio server without it; those e2e tests fail with a message saying to install it.
nginx:
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || \
	  { command -v apt-get >/dev/null && (apt-get install -y -q nginx-light >/dev/null || \
	    { apt-get update -q >/dev/null && apt-get install -y -q nginx-light >/dev/null; }) || \
	    echo "nginx not installed" >&2; }

lint: $(STAMP)
	$(VENV)/bin/ruff check caps broker proxy tests examples
	$(VENV)/bin/ruff format --check caps broker proxy tests examples

# mypy reads the code under its import names (capgate.caps, ...): it cannot follow the
# editable install's finder, so the three folders are linked where [tool.mypy] mypy_path
# points. The links are relative, so a moved or fresh clone works the same.
TYPECHECK := $(VENV)/typecheck/capgate

typecheck: $(STAMP)
	@mkdir -p $(TYPECHECK)
	@for pkg in caps broker proxy; do ln -sfn ../../../$$pkg $(TYPECHECK)/$$pkg; done
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build *.egg-info
