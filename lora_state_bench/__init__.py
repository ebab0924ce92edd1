"""Switching benchmark and precision check: ``python -m lora_state_bench`` (or ``python -m lora_state bench``).

Builds models with the real shapes of the layers LoRAs target (SD1.5 / SDXL UNets: every Linear/Conv2d inside
their Transformer2DModels, listed from diffusers' UNet2DConditionModel instantiated on the meta device and filled
with random weights), writes kohya-named LoRA files into a temporary folder, and times, side by side in one
process, LoRA State's modes (exact, delta, auto) against the baselines users have today:

- full re-patch: restore every touched key from a clean copy and recompute every LoRA of the stack on it, with
  the library's own math (what ComfyUI, Forge and stable-diffusion.cpp do on any change);
- PEFT fuse/unfuse (what diffusers' fuse_lora/unfuse_lora do): unmerge every adapter, merge the new stack.

Each change is also set against its lower bound on this machine (bytes it must read and write at the measured copy
bandwidth + its LoRA matmuls at the measured matmul rate; bounds.py).

Errors are measured against the exact oracle: a fresh clean copy reconciled in exact mode to the same stack.
Two units, both in ulps of the weight's dtype:
- key ulps: |live - oracle| / ulp at the key's largest magnitude (LoRA State's drift unit; max over keys, and
  the mean over all elements),
- element ulps: |live - oracle| / ulp at each element's own magnitude (stricter, for information).

Timings are medians of several runs; every ratio is taken between runs in the same process, interleaved.
A benchmark prints figures, it is not a test: targets are reported as met or missed, never asserted.

    python -m lora_state_bench                 # default run, a few minutes
    python -m lora_state_bench --quick         # under a minute
    python -m lora_state_bench --json docs/bench/results.json --plots docs/bench/

Layout (one concern per module): machine.py (machine info, measured copy bandwidth and matmul rate), workload.py
(layer shapes, clean weights, LoRA files and stacks), runners.py (LoRA State per mode, full re-patch, PEFT),
precision.py (errors against the exact oracle), bounds.py (lower bound of a change), scenarios/ (switching,
cycles, noop), targets.py, report.py (tables, Markdown, plots), profiles.py, cli.py. comfyui/ is the benchmark in
a real ComfyUI server (``python -m lora_state_bench.comfyui``, see its docstring).

The runtime (lora_state/, nodes/) never imports this package.
"""
