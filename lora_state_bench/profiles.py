"""Run profiles: which models, dtypes and how many repetitions (default, --quick, and a tiny one for tests)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Profile:
    name: str
    switch_models: tuple[tuple[str, tuple[str, ...]], ...]   # (model, dtypes) for scenarios 1-3, 5, 6
    mixed: tuple[tuple[str, str], ...]                        # (model, dtype) for the mixed-rank stack
    peft: tuple[tuple[str, str], ...]                         # (model, dtype) where PEFT is timed too
    reps: int
    cycles: int
    cycle_dtypes: tuple[str, ...]
    noop: tuple[str, str, int]                                # (model, dtype, rank): no-op measurement
    noop_runs: int


PROFILES = {
    "default": Profile("default", (("sd15", ("fp16", "bf16", "fp32")), ("sdxl-first", ("fp16",))),
                       mixed=(("sd15", "fp16"),), peft=(("sd15", "fp16"),), reps=3, cycles=1000,
                       cycle_dtypes=("fp16", "bf16", "fp32"), noop=("sdxl", "bf16", 8), noop_runs=300),
    # --quick: the 640-wide block of SD1.5 for the switches, in each dtype (so that the table against the lower
    # bound has every dtype x mode), and the no-op on SD1.5's full key set (setting up the SDXL key set alone,
    # 2.2 G parameters, takes minutes on a small CPU machine).
    "quick": Profile("quick", (("sd15-level1", ("fp16", "bf16", "fp32")),), mixed=(),
                     peft=(("sd15-level1", "fp16"),), reps=3, cycles=100, cycle_dtypes=("fp16", "bf16", "fp32"),
                     noop=("sd15", "fp16", 8), noop_runs=200),
    "tiny": Profile("tiny", (("cycle", ("fp16", "fp32")),), mixed=(("cycle", "fp16"),), peft=(("cycle", "fp16"),),
                    reps=2, cycles=5, cycle_dtypes=("fp16", "bf16"), noop=("cycle", "fp16", 4), noop_runs=20),
}
