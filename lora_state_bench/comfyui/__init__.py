"""Benchmark in a real ComfyUI server (not a test): a 5-LoRA stack, one LoRA's strength changed again and again,
ComfyUI's native chain of LoraLoaders against LoRA Stack + LoRA Reconcile, in every mode, at real model sizes.

One command runs it all (from a checkout of this repository: it uses the integration tests' harness in
tests/integration/comfy_harness.py; COMFYUI_PATH / COMFYUI_PYTHON as for those tests, see
tests/integration/SETUP_COMFYUI.md):

    COMFYUI_PATH=... COMFYUI_PYTHON=... python -m lora_state_bench.comfyui --size sd15 sdxl \\
        --modes exact delta auto --rounds 8 --memory \\
        --json docs/bench/comfyui.json --plot docs/bench/comfyui_switch.png

    python -m lora_state_bench.comfyui --size tiny --rounds 2     # a check of the whole thing in a minute or two

Sizes (assets.py): tiny (the integration tests' one-level SD1.5 and mixed-format LoRAs), sd15 (full SD1.5,
fp32 UNet on CPU) and sdxl (full SDXL, UNet and CLIP-L + CLIP-G in fp16 as on GPUs: --fp16-unet --fp16-text-enc):
random weights of the real shapes, built once with ComfyUI's own classes by build.py (sdxl: 7.9 GB on disk, 10 GB
of memory and about 5 minutes of CPU to build), kept under /tmp/lora_state_bench_<size> (or --assets-root).

Per size, one server; per mode: the first application (whole prompt) of each side, twice, once in each order,
each time on fresh models (POST /free) whose checkpoints an untimed prompt without LoRAs has loaded (the mean is
reported: the side applying second pays page faults the first did not), then one untimed change each, then --rounds rounds, each: change one LoRA's model strength (1.0 <-> 0.5) and time the
prompt, then change only the seed and time it, for native and ours in turn (the order alternates). Native prompts
load the checkpoint, ours load the same file under a second name (`<name>_ours.safetensors`, a hard link), so
that the native chain's patching and LoRA State's in-place writes never share one cached model.

Reported per size and mode, native vs ours: the first application; the switch overhead of every change (prompt
time after the strength change minus the median prompt time after a seed-only change), its median and range, and
the largest change over the median; their ratios; LoRA State's own reconcile time (GET /lora_state/ledger,
`last_change.seconds`); the unchanged re-run: the time of LoRA State's sync in a seed-only prompt, where the stack
is unchanged (timer_node/ times it, the ledger does not record no-ops); the server's VmRSS/VmHWM after each mode.
--memory adds a fair peak-memory comparison: a fresh server running only native (first application + 2 changes),
then a fresh server per mode running only ours, VmHWM of each. The machine line names the CPU, ComfyUI and torch.
--json writes every raw number, --plot a PNG of the switch overhead per change number (every change a point).

Memory: each side holds its loaded model plus a second copy of the keys the LoRAs touch (native: the patched
tensors next to the originals; LoRA State in exact/auto: clean copies; delta: none). At SDXL size that is about
6.8 + 5.8 GB per side, so both sides on one server need about 26 GB in exact/auto. Where a size's two sides do
not fit in the memory available at the start (--separate auto, the default; yes/no force it), native and LoRA
State run on consecutive servers (native once, set against every mode) instead of alternating on one; on a quiet
machine the loss of interleaving matters little, and the table says which was done.

A benchmark prints figures, it is not a test: nothing is asserted.
"""
