# The two commands in the README. Both set everything up first; both work on a fresh machine.
.PHONY: setup demo test lint

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/python examples/demo/run_demo.py --workdir .sigma0

test: setup
	bash tests/cluster/build.sh
	.venv/bin/python -m tests.helm.tools
	.venv/bin/ruff check operator tests bench examples
	.venv/bin/python -m pytest -q

lint: setup
	.venv/bin/ruff check operator tests bench examples
