# The two commands of the README: `make demo` and `make test`. Both set
# everything up on a fresh Debian machine (venv, Python packages, Debian tools).
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
NB     := $(VENV)/bin/nomad-build

.PHONY: demo test tools lint bench binary clean

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

# The one-file binary: build/nomad-build (not dist/, the default artifact directory
# that every build replaces). It carries recipes/, packaging/ and images/ as
# builder/_data (found through builder/data.py) and every writer module.
BINARY_STAMP := $(VENV)/.binary-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

$(BINARY_STAMP): $(STAMP)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[test,binary]'
	touch $@

binary: build/nomad-build

build/nomad-build: $(BINARY_STAMP) $(shell find builder recipes packaging images -type f -not -path '*/__pycache__/*')
	mkdir -p build/pyinstaller
	printf 'from builder.cli import main\n\nmain()\n' > build/pyinstaller/nomad-build.py
	$(VENV)/bin/pyinstaller --noconfirm --clean --log-level WARN --onefile \
	  --name nomad-build --distpath build --workpath build/pyinstaller \
	  --specpath build/pyinstaller --paths . --collect-submodules builder \
	  --add-data "$(CURDIR)/recipes:builder/_data/recipes" \
	  --add-data "$(CURDIR)/packaging:builder/_data/packaging" \
	  --add-data "$(CURDIR)/images:builder/_data/images" \
	  build/pyinstaller/nomad-build.py
	@ls -l build/nomad-build

clean:
	rm -rf dist .dist.spare state build $(VENV) .cache
