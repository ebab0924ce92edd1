import os
import sys

# The browser tests import their helper (e2e_support) and, through it, tests/integration/comfy_harness.py.
HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
