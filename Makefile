# Velocity — developer entry points. `make demo` runs the main job; `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup kafka kafka-stop worker simulate demo test test-eos-repeat test-unit lint clean bench bench-quick bench-scale bench-export model redis

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $(STAMP)

## setup: the virtualenv in .venv with the project installed editable, with its dev and bench extras
setup: $(STAMP)

## kafka: start the local single-node Kafka (idempotent)
kafka:
	KAFKA_SASL_SSL_PORT=$${KAFKA_SASL_SSL_PORT:-$$(( $${KAFKA_PORT:-9092} + 2 ))} scripts/kafka.sh start

kafka-stop:
	scripts/kafka.sh stop

## worker: one worker in the foreground
worker: setup kafka
	$(BIN)/faust -A app worker -l info

## simulate: simulated traffic in the foreground (ARGS="--rate 500 --duration 60")
simulate: setup kafka
	$(BIN)/faust -A app simulate $(ARGS)

## demo: local Kafka + a worker + simulated traffic, with the URLs to look at
demo: setup kafka
	scripts/demo.sh $(ARGS)

## test: every test (unit, agent, integration against the local Kafka)
test: setup kafka
	$(BIN)/pytest

## test-eos-repeat: the exactly-once scenarios N times in a row (default 10), stopping at the first failure
test-eos-repeat: setup kafka
	@for i in $$(seq 1 $(or $(N),10)); do \
	  echo "exactly-once round $$i"; \
	  $(BIN)/pytest -x -q tests/integration/test_exactly_once.py tests/integration/test_broker_restart.py \
	    tests/integration/test_restart.py -k "exactly or test_one or test_a_" || exit 1; \
	done

test-unit: setup
	$(BIN)/pytest tests/unit tests/agent

## bench: the full benchmark suite (bench/run.py; installs redis-server if it can); writes bench/results/
bench: setup kafka redis
	$(BIN)/python -m bench.run --size full

## bench-quick: the same scenarios on a smaller stream, under 5 minutes
bench-quick: setup kafka redis
	$(BIN)/python -m bench.run --size quick

## bench-scale: memory, disk, restore and takeover against users in state (100k, 1M, 5M; about 20 minutes)
bench-scale: setup kafka
	$(BIN)/python -m bench.scale

## bench-export: faust -A app export of 1M transactions to Parquet and CSV: rows/s and peak RSS (a few minutes)
bench-export: setup kafka
	$(BIN)/python -m bench.export

## model: retrain the bundled fraud model (app/models/fraud-logreg.json): 150 s of simulated traffic
## with its fraud labels, exported and trained through the project's own commands (about 3 minutes)
model: setup kafka
	@tag=$$(date +%s); mkdir -p data; \
	export SCORING=off APP_ID=velocity-train-$$tag TRANSACTIONS_TOPIC=train-$$tag LABELS_TOPIC=train-$$tag-labels; \
	$(BIN)/faust -A app simulate --rate 200 --duration 150 --fraud-every 400 --label-delay 5 --seed 11 && \
	$(BIN)/faust -A app export --output data/train-$$tag.parquet --labels-topic train-$$tag-labels && \
	$(BIN)/faust -A app train --input data/train-$$tag.parquet --output app/models/fraud-logreg.json

# The seed's Redis design needs redis-server: installed with apt-get when missing, else said in one line.
redis:
	@command -v redis-server >/dev/null 2>&1 || { echo "bench: redis-server missing; installing it with apt-get" && \
	  apt-get install -y -qq redis-server >/dev/null 2>&1; } || \
	  echo "bench: redis-server could not be installed: the seed_redis row will be '-' with a note saying why"

## lint: ruff (rules + format), mypy --strict on the package, tests and bench, the layer contracts
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf data .pytest_cache .mypy_cache .ruff_cache
