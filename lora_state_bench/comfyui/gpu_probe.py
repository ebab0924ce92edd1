"""Where does an in-place reconcile spend its time on a GPU? A probe, in one process, without a server.

    cd $COMFYUI_PATH && python <repo>/lora_state_bench/comfyui/gpu_probe.py <repo> <bench assets> [rounds] \
        [modes: exact,delta]

<bench assets>: a folder prepared by assets.py (e.g. /tmp/lora_state_bench_sd15). It loads that checkpoint with
ComfyUI's own loader onto the load device (the GPU, or --cpu where torch has no CUDA), builds the pack's
ComfyModelHost + LoraStateManager for the UNet as nodes/runtime.py does (clean copies on the offload device),
applies the 5 LoRAs, then changes one LoRA's strength `rounds` times per mode, timing each reconcile
(synchronized); two passes. Then a torch.profiler table and a cProfile table of one exact change.
PROBE_ARGS: ComfyUI flags to set, as the bench's servers get them (sdxl: "--fp16-unet --fp16-text-enc").
PROBE_PATHS=1 also prints each reconcile's time and keys per path (exact, delta, ...); PROBE_PROFILE=0 skips the
profile. Another checkout of the pack against this one: compare_checkouts.py.
docs/bench/gpu_probe_h200_sd15.txt has a run on an H200, at 02715a8, with the variants this probe then
monkeypatched (clean copies page-locked, factors on the GPU): the pack has since taken up page-locked clean copies
and packed factor copies (lora_state/transfers.py)."""
import cProfile
import importlib
import io
import json
import os
import pstats
import sys
import time
import types

import torch

def load_comfy_model(assets: str):
    """The bench checkpoint loaded by ComfyUI onto its load device (run from a ComfyUI checkout)."""
    sys.path.insert(0, os.getcwd())
    import comfy.cli_args

    comfy.cli_args.args.cpu = not torch.cuda.is_available()
    for flag in os.environ.get("PROBE_ARGS", "").split():     # e.g. "--fp16-unet" as the bench's sdxl server
        setattr(comfy.cli_args.args, flag.lstrip("-").replace("-", "_"), True)
    import comfy.model_management
    import comfy.sd

    with open(os.path.join(assets, "bench_manifest.json"), encoding="utf-8") as handle:
        manifest = json.load(handle)
    path = os.path.join(assets, "models", "checkpoints", manifest["checkpoint"])
    started = time.perf_counter()
    model = comfy.sd.load_checkpoint_guess_config(path, output_vae=False, output_clip=False)[0]
    comfy.model_management.load_models_gpu([model])
    choose = getattr(comfy.model_management, "lora_compute_dtype", lambda device: torch.float32)
    print(f"loaded in {time.perf_counter() - started:.1f} s; load device {model.load_device}; "
          f"compute dtype {choose(model.load_device)}", flush=True)
    return model, [os.path.join(assets, "models", "loras", name) for name in manifest["loras"]]


def import_pack(repo: str, name: str = "lora_state_pack"):
    """The pack's modules under a package `name`, without its __init__ (no nodes, no load hook)."""
    pack = types.ModuleType(name)
    pack.__path__ = [repo]
    sys.modules[name] = pack
    return (importlib.import_module(f"{name}.nodes.comfy_host"),
            importlib.import_module(f"{name}.lora_state"),
            importlib.import_module(f"{name}.lora_state.backups"))


class Probe:
    def __init__(self, repo: str, assets: str, rounds: int):
        self.model, self.loras = load_comfy_model(assets)
        self.host_mod, self.core, _ = import_pack(repo)
        self.cuda = self.model.load_device.type == "cuda"
        self.rounds = rounds
        self.paths = []          # per reconcile of the last run: keys per path ("96 delta,96 exact")
        self.show_paths = os.environ.get("PROBE_PATHS") == "1"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def stack(self, strength):
        return [self.core.StackEntry(path=path, strength_model=strength if i == 1 else 1.0, strength_clip=1.0)
                for i, path in enumerate(self.loras)]

    def timed(self, manager, strength):
        self.sync()
        started = time.perf_counter()
        report = manager.reconcile(self.stack(strength))
        self.sync()
        self.paths.append(",".join(f"{n} {path}" for path, n in sorted(report.paths.items())))
        return time.perf_counter() - started

    def run(self, mode):
        host = self.host_mod.ComfyModelHost(self.model.model, False, backup_of=lambda: self.model.backup,
                                            compute_device=self.model.load_device)
        manager = self.core.LoraStateManager(host, mode=mode, backup="cpu")
        self.paths = []
        first = self.timed(manager, 1.0)
        changes = [self.timed(manager, 0.5 if r % 2 == 0 else 1.0) for r in range(self.rounds)]
        ordered = sorted(changes)
        print(f"{mode:5s} first {first:.3f} s; changes median {ordered[len(ordered) // 2]:.3f} s "
              f"(min {ordered[0]:.3f}, max {ordered[-1]:.3f}); clean copies page-locked: "
              f"{manager.status()['pinned_bytes'] / 2**20:.0f} of {manager.backup_bytes / 2**20:.0f} MiB", flush=True)
        if self.show_paths:
            for number, (seconds, paths) in enumerate(zip([first] + changes, self.paths)):
                print(f"    {'first' if number == 0 else f'change {number}'}: {seconds:.3f} s, keys {paths}")
        return manager

    def profile_exact(self):
        from torch.profiler import ProfilerActivity, profile

        manager = self.run("exact")
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        with profile(activities=activities) as prof:
            self.timed(manager, 0.5)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
        profiler = cProfile.Profile()
        profiler.enable()
        self.timed(manager, 1.0)
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(14)
        print(out.getvalue()[-4000:])
        self.finish(manager)

    def finish(self, manager):
        manager.reset()
        self.sync()


def main():
    repo, assets = sys.argv[1], sys.argv[2]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    modes = sys.argv[4].split(",") if len(sys.argv) > 4 else ["exact", "delta"]
    probe = Probe(repo, assets, rounds)
    for _ in range(2):      # two passes
        for mode in modes:
            probe.finish(probe.run(mode))
    if os.environ.get("PROBE_PROFILE", "1") == "1":
        probe.profile_exact()


if __name__ == "__main__":
    main()
