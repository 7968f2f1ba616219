# The two commands of the README: `make run` and `make test`. Everything else is optional.
PYTHON ?= python3

.PHONY: install run test test-long test-fast fuzz bench bench-table bench-instructions load clean

# The C extension of routing (agent/pricing/_route.c), rebuilt in place when its source changes: the package
# is installed editable, and install.sh reinstalls only when pyproject.toml changes.
EXT_SUFFIX := $(shell $(PYTHON) -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")

install: agent/pricing/_route$(EXT_SUFFIX)
	@./devstack/install.sh

agent/pricing/_route$(EXT_SUFFIX): agent/pricing/_route.c setup.py
	$(PYTHON) setup.py -q build_ext --inplace

run: install
	$(PYTHON) -m devstack

test: install
	$(PYTHON) -m pytest -m "not long"

# the long fault and load-tool runs (CI runs them after make test): PostgreSQL stopped for 60 s under load
# instead of make test's 10 s, the Locust and `make load` runs
test-long: install
	$(PYTHON) -m pytest -m long
	RATING_FAULT_PG_OUTAGE=60 $(PYTHON) -m pytest tests/test_faults.py -k postgresql_stopped_under_load

test-fast: install
	$(PYTHON) -m pytest -m "not kamailio and not long" -x

# a longer fuzz run than make test's (tests/http/test_fuzz.py): 1,000 examples per call endpoint
fuzz: install
	RATING_FUZZ_EXAMPLES=1000 $(PYTHON) -m pytest tests/http/test_fuzz.py -s

bench: install
	$(PYTHON) loadtest/bench.py

bench-table: install
	$(PYTHON) loadtest/bench_table.py

bench-instructions: install
	command -v valgrind >/dev/null || apt-get install -y valgrind
	$(PYTHON) loadtest/bench_instructions.py

# the Locust call-flow scenario against the running `make run` stack (start it first, in another terminal):
# fitting data generated and imported, then call setups/s, latency percentiles and refusals printed
LOAD_USERS ?= 50
LOAD_SPAWN_RATE ?= 50
LOAD_DURATION ?= 30s
LOAD_HOLD ?= 1
LOAD_REFUSALS ?= 0.1
LOAD_PREFIXES ?= 100000
LOAD_ACCOUNTS ?= 1000
load: install
	$(PYTHON) loadtest/load.py --users $(LOAD_USERS) --spawn-rate $(LOAD_SPAWN_RATE) --duration $(LOAD_DURATION) \
		--hold $(LOAD_HOLD) --refusals $(LOAD_REFUSALS) --prefixes $(LOAD_PREFIXES) --accounts $(LOAD_ACCOUNTS)

clean:
	rm -rf .data .pytest_cache .hypothesis
