"""`python -m scratchdet ...` (and `torchrun -m scratchdet ...`) behave like the `scratchdet` console script."""

from scratchdet.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
