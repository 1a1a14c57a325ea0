# Every target creates .venv when it is missing. torch and torchvision are installed as an exact pair first:
# the CPU-only torch wheel on our machines has no matching torchvision, the CUDA build of this pair runs on CPU.
PY      := .venv/bin/python
STAMP   := .venv/.installed
TORCH   := torch==2.14.1 torchvision==0.29.1

.PHONY: install test test-fast lint demo clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

# Everything, as CI runs it; the 20 slowest tests are listed at the end, so growth shows where it happens.
test: $(STAMP)
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/python -m pytest -q --durations=20

# The inner loop (under 3 minutes on 2 cores): everything but the end-to-end tests (launchers, SLURM, torchrun,
# learning, real COCO; marker e2e) and the learning tests (marker slow).
test-fast: $(STAMP)
	.venv/bin/ruff check .
	.venv/bin/python -m pytest -q -m "not e2e and not slow" --durations=10

demo: $(STAMP)
	bash scripts/demo.sh

clean:
	rm -rf .venv runs data/shapes demo_output
