# The two commands a new user needs:
#   make run   generate sample data, train, register in MLflow, serve over gRPC and make real calls
#   make test  install everything the tests need (incl. a real redis-server) and run the whole suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export OPENBLAS_NUM_THREADS ?= 1
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1

.PHONY: run test venv protos load clean grpcload promtool mlflow java

$(STAMP): pyproject.toml
	$(BIN)/python -m pip --version >/dev/null 2>&1 || $(PYTHON) -m venv --clear $(VENV)  # also repairs a half-made venv
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[train,load,spark,dev]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/recsvc demo

test: $(STAMP) grpcload promtool java
	$(BIN)/python proto/generate.py --check
	$(BIN)/ruff check proto recsvc training pipelines bench load tests
	$(BIN)/ruff format --check proto recsvc training pipelines bench load tests
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

# The native load client (load/grpcload) needs libgrpc++-dev. Under CI (CI set) it is installed with
# apt when missing, so its tests run there; elsewhere, or if that fails, the build is skipped and
# its tests skip, saying so.
grpcload:
	@if ! pkg-config --exists grpc++ 2>/dev/null && [ -n "$$CI" ] && command -v apt-get >/dev/null; then \
		echo "installing libgrpc++-dev for the native load client"; \
		(apt-get install -y -q --no-install-recommends libgrpc++-dev pkg-config >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null 2>&1 && \
		  apt-get install -y -q --no-install-recommends libgrpc++-dev pkg-config >/dev/null 2>&1)) || true; \
	fi
	@$(MAKE) -s -C load/grpcload >/dev/null 2>&1 || echo "load/grpcload not built (needs libgrpc++-dev): its tests will skip"

# promtool (Debian package prometheus) checks the alert rules in docs/operations.md. Under CI it
# is installed with apt when missing; elsewhere that test skips, saying so.
promtool:
	@if ! command -v promtool >/dev/null && [ -n "$$CI" ] && command -v apt-get >/dev/null; then \
		echo "installing prometheus (for promtool)"; \
		(apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null 2>&1 && \
		  apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1)) || true; \
	fi
	@command -v promtool >/dev/null || echo "promtool not installed (package prometheus): the alert-rule check will skip"

# The MLflow UI on the store `make run` wrote (runs, plots, registered versions), from any folder.
mlflow: $(STAMP)
	$(BIN)/recsvc mlflow-ui --demo

# Spark training (training.engine = spark, its tests) needs a Java runtime (17 or 21 for Spark 4).
# Under CI it is installed with apt when missing (Debian 12: default-jre-headless = OpenJDK 17);
# elsewhere the Spark tests skip, saying so.
java:
	@if ! command -v java >/dev/null 2>&1 && [ -n "$$CI" ] && command -v apt-get >/dev/null; then \
		echo "installing a Java runtime for Spark training"; \
		(apt-get install -y -q --no-install-recommends default-jre-headless >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null 2>&1 && \
		  apt-get install -y -q --no-install-recommends default-jre-headless >/dev/null 2>&1)) || true; \
	fi
	@command -v java >/dev/null 2>&1 || echo "no java on the PATH: the Spark training tests will skip"

protos: $(STAMP)
	$(BIN)/python proto/generate.py

load: $(STAMP)
	$(BIN)/recsvc load run

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
