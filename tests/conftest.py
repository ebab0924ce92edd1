import os
import sys

# Tests import their helpers (lora_factory, peft_oracle) as top-level modules.
sys.path.insert(0, os.path.dirname(__file__))
