# Two commands set everything up on a fresh machine:
#   make demo   venv + install + a real tiny MoE-vs-dense sweep on this machine
#   make test   venv + test extras + system packages the tests need + the tests
PYTHON ?= python3.11
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
RESULTS ?= edgefarm-results

.PHONY: demo test faults lint install system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/edgefarm inventory validate -i inventory/local.yaml
	$(BIN)/edgefarm sweep run sweeps/quickstart.yaml -i inventory/local.yaml -r $(RESULTS)

# sshd, prometheus (and its promtool), tmux, compose (to validate
# dashboards/docker-compose.yml, no engine needed), chromium (opens the HTML
# report headless) and iproute2 (network namespaces for the two-site test) are
# real parts of the test suite; install them when missing (needs root and apt,
# as on CI).
system-deps:
	@missing=""; \
	command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || missing="$$missing openssh-server"; \
	command -v prometheus >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v ip >/dev/null 2>&1 || missing="$$missing iproute2"; \
	command -v tmux >/dev/null 2>&1 || missing="$$missing tmux"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 \
	  || missing="$$missing docker-compose"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

test: install system-deps lint
	$(BIN)/python -m pytest -q

# The fault-injection suite alone (make test runs it too): each case injects
# one fault and prints jobs planned / done / duplicated / lost at the end.
faults: install system-deps
	$(BIN)/python -m pytest -q tests/faults

# ruff (style), mypy (types: orchestrator/ and agents/, see [tool.mypy] in
# pyproject.toml) and vermin (the agent runs on Python 3.8).
lint: install
	$(BIN)/ruff check orchestrator agents tests bench
	$(BIN)/mypy
	$(BIN)/vermin -q --no-tips --violations -t=3.8- agents

clean:
	rm -rf $(VENV) $(RESULTS) .pytest_cache
