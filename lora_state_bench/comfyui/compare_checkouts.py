"""Two checkouts of the pack side by side on one model, in one process: does a change to the pack make reconciles
faster? Quieter than two server runs (one model load, the checkouts alternating, no sampling in between).

    cd $COMFYUI_PATH && python <repo>/lora_state_bench/comfyui/compare_checkouts.py <bench assets> <rounds> <mode> \
        <checkout A> <checkout B> [...]

<bench assets>: a folder prepared by assets.py (e.g. /tmp/lora_state_bench_sdxl); PROBE_ARGS as for gpu_probe.py
(sdxl: "--fp16-unet --fp16-text-enc"). Each checkout (e.g. a `git worktree add` of an earlier commit) gets a fresh
manager on the same UNet: the 5 LoRAs applied, then `rounds` changes of one LoRA's strength (1.0 <-> 0.5), then a
reset; twice, the checkouts alternating. Prints each reconcile's time, the keys per path and the largest drift
bound (ulps), then the medians. One thread, as the benchmark's servers."""
import statistics
import sys
import time

import torch

from gpu_probe import import_pack, load_comfy_model


def main():
    assets, rounds, mode, repos = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
    torch.set_num_threads(1)
    model, loras = load_comfy_model(assets)
    checkouts = [import_pack(repo, f"checkout_{index}")[:2] for index, repo in enumerate(repos)]
    changes = {repo: [] for repo in repos}
    firsts = {repo: [] for repo in repos}

    def stack(core, strength):
        return [core.StackEntry(path=path, strength_model=strength if index == 1 else 1.0, strength_clip=1.0)
                for index, path in enumerate(loras)]

    def synchronized_reconcile(manager, entries):
        report = manager.reconcile(entries)
        if torch.cuda.is_available():
            torch.cuda.synchronize()     # a checkout that queues GPU work without waiting is timed to its end too
        return report

    for _ in range(2):
        for repo, (host_module, core) in zip(repos, checkouts):
            host = host_module.ComfyModelHost(model.model, False, backup_of=lambda: model.backup,
                                              compute_device=model.load_device)
            manager = core.LoraStateManager(host, mode=mode, backup="cpu")
            started = time.perf_counter()
            synchronized_reconcile(manager, stack(core, 1.0))
            firsts[repo].append(time.perf_counter() - started)
            paths = []
            for number in range(rounds):
                started = time.perf_counter()
                report = synchronized_reconcile(manager, stack(core, 0.5 if number % 2 == 0 else 1.0))
                changes[repo].append(time.perf_counter() - started)
                paths.append(",".join(f"{count} {path}" for path, count in sorted(report.paths.items())))
            drift = max((state.drift / state.ulp if state.ulp else 0.0) for state in manager.ledger.keys.values())
            manager.reset()
            print(f"{repo}: first {firsts[repo][-1]:.2f} s; changes "
                  + " ".join(f"{seconds:.2f}" for seconds in changes[repo][-rounds:])
                  + f" s; largest drift bound {drift:.2f} ulp; keys {' / '.join(paths[:3])}", flush=True)
    for repo in repos:
        ordered = sorted(changes[repo])
        print(f"{repo}: first application median {statistics.median(firsts[repo]):.2f} s; change median "
              f"{statistics.median(ordered):.3f} s (min {ordered[0]:.3f}, max {ordered[-1]:.3f})")


if __name__ == "__main__":
    main()
