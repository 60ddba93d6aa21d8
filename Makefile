# The two commands: `make run` and `make test`. Both install what is missing into the repo first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV = $(shell bash scripts/bootstrap.sh | tail -n 1)

.PHONY: help prepare run test test-fast lint definitions

help:
	@echo "make run          install, migrate and start all services (http://127.0.0.1:8000)"
	@echo "make test         the whole suite against real RabbitMQ and PostgreSQL"
	@echo "make lint         ruff and mypy"
	@echo "make definitions  regenerate deploy/rabbitmq/definitions.json from the topology"

prepare:
	@bash scripts/ensure-services.sh

run: prepare
	@uv="$(UV)"; exec "$$uv" run --frozen reelflow run

test: prepare
	@bash scripts/ensure-browser.sh
	@uv="$(UV)"; "$$uv" run --frozen pytest

lint:
	@uv="$(UV)"; "$$uv" run --frozen ruff check . && "$$uv" run --frozen ruff format --check . \
	  && for member in shared/src services/*/src src shared/tests services/*/tests tests bench; do \
	    "$$uv" run --frozen mypy "$$member" || exit 1; done

definitions:
	@uv="$(UV)"; "$$uv" run --frozen python -m shared.topology > deploy/rabbitmq/definitions.json

.PHONY: asyncapi
asyncapi:  # docs/asyncapi.json: the message catalogue as AsyncAPI 3.0, from the code
	@uv="$(UV)"; "$$uv" run --frozen python -m shared.asyncapi > docs/asyncapi.json

.PHONY: chaos
chaos: prepare  ## the long fault-injection run: 200 generations through every fault in turn
	@uv="$(UV)"; PYTHONPATH=. "$$uv" run --frozen python -m tests.faults.chaos --generations 200

.PHONY: bench-veo
bench-veo: prepare  ## one worker holds 5,000 Veo operations of 30 s (fake) to the end; numbers in bench/README.md
	@uv="$(UV)"; "$$uv" run --frozen python bench/veo_wait.py --operations 5000 --seconds 30

.PHONY: bench-statements
bench-statements: prepare  ## statements and transactions per generation, counted by PostgreSQL (pg_stat_statements)
	@uv="$(UV)"; PYTHONPATH=. "$$uv" run --frozen python -m bench.statements

.PHONY: bench
bench: prepare  ## the benchmark suite (~10 min, private RabbitMQ/PostgreSQL): bench/results/*.json, bench/README.md
	@uv="$(UV)"; PYTHONPATH=. "$$uv" run --frozen python -m bench.run
