# The two commands of the README: `make demo` and `make test`. Both set
# everything up on a fresh Debian machine (venv, Python packages, Debian tools).
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
NB     := $(VENV)/bin/nomad-build

.PHONY: demo test tools lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

# Debian tools the tests use as oracles (lintian, mmdebstrap, signify, qemu, ...).
tools:
	scripts/setup-tools scripts/debian-packages.txt

demo: $(STAMP)
	$(NB) check -c examples/bi-sbg.toml --state state
	$(NB) build -c examples/bi-sbg.toml --state state --out dist
	@echo "artifacts in dist/ (secrets stay in state/); for nomad-build on your PATH: . .venv/bin/activate"

test: $(STAMP) tools
	$(VENV)/bin/ruff check builder tests bench
	$(VENV)/bin/ruff format --check builder tests bench
	$(VENV)/bin/mypy builder tests bench
	$(VENV)/bin/pytest -q -ra

bench: $(STAMP)
	$(VENV)/bin/python bench/bench.py

clean:
	rm -rf dist state $(VENV) .cache
