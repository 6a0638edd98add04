"""``python -m edgecompile`` (and ``torchrun -m edgecompile build ...``) runs the CLI."""
from .cli import main

if __name__ == "__main__":
    main()
