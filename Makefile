# The two commands in the README. Both set everything up first; both work on a fresh machine.
.PHONY: setup demo test lint dashboard screenshot images

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/python examples/demo/run_demo.py --workdir .sigma0

test: setup
	bash tests/cluster/build.sh
	bash tests/cluster/build-node.sh
	bash scripts/build-s3-server.sh
	bash scripts/build-images.sh
	bash scripts/build-previous-images.sh
	.venv/bin/python -m tests.helm.tools
	.venv/bin/ruff check operator tests bench examples
	.venv/bin/python -m pytest -q

# The operator, sandbox and trainer images, without a container engine (images/README.md): build/images/*.oci.tar
# and build/images/images.json. Cached by content: a second run returns at once.
images: setup
	bash scripts/build-images.sh

lint: setup
	.venv/bin/ruff check operator tests bench examples

# The read-only dashboard of the demo's workdir, on http://127.0.0.1:8765/ (docs/dashboard.md).
dashboard: setup
	.venv/bin/sigma0 dashboard --workdir .sigma0

# docs/dashboard.png, the README's screenshot, from the demo's workdir (run `make demo` first, twice or more).
screenshot: setup
	.venv/bin/python scripts/dashboard_screenshot.py --workdir .sigma0 --output docs/dashboard.png
