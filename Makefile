# Every target creates .venv when it is missing. torch and torchvision are installed as an exact pair first:
# the CPU-only torch wheel on our machines has no matching torchvision, the CUDA build of this pair runs on CPU.
PY      := .venv/bin/python
STAMP   := .venv/.installed
TORCH   := torch==2.14.1 torchvision==0.29.1

.PHONY: install test lint demo clean

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

test: $(STAMP)
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/python -m pytest -q

demo: $(STAMP)
	bash scripts/demo.sh

clean:
	rm -rf .venv runs data/shapes demo_output
