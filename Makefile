# The two commands of the README: `make run` and `make test`. Everything else is optional.
PYTHON ?= python3

.PHONY: install run test test-fast fuzz bench bench-table bench-instructions clean

install:
	@./devstack/install.sh

run: install
	$(PYTHON) -m devstack

test: install
	$(PYTHON) -m pytest

test-fast: install
	$(PYTHON) -m pytest -m "not kamailio" -x

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

clean:
	rm -rf .data .pytest_cache .hypothesis
