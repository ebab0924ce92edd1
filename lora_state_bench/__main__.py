"""``python -m lora_state_bench [--quick] ...``: the core switching benchmark (see the package docstring)."""
import sys

from .cli import main

sys.exit(main(sys.argv[1:]))
