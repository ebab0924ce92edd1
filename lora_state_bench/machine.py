"""The machine: what it is (CPU, cores, threads, torch) and its measured rates, against which the lower bound
of a change is computed: fp32 matmul FLOP/s and copy bandwidth (bytes read + written by a large copy)."""
from __future__ import annotations

import os
import platform
import time

import torch


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform knows."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    return cpu


def memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def machine_info() -> dict:
    cpu, memory = cpu_name(), memory_bytes()
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average_at_start": load_average(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "memory_bytes": memory, "device": "cpu"}


def load_average():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def best_of(fn, runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def measure_machine(quick: bool) -> dict:
    """fp32 GEMM rate and memory bandwidth (bytes read + written by a large copy), best of a few runs."""
    n = 1024 if quick else 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    gemm = best_of(lambda: torch.mm(a, b), 5)
    size = (64 if quick else 256) << 20
    src = torch.ones(size // 4)
    dst = torch.empty_like(src)
    copy = best_of(lambda: dst.copy_(src), 5)
    return {"matmul_flops_per_s": 2 * n ** 3 / gemm, "matmul_size": n,
            "bandwidth_bytes_per_s": 2 * size / copy, "bandwidth_copy_bytes": size}


def machine_line(machine: dict) -> str:
    """One line naming the machine and its measured rates."""
    line = (f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['torch_threads']} torch threads, torch "
            f"{machine['torch']}")
    if machine.get("matmul_flops_per_s"):
        line += (f"; fp32 matmul {machine['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s, copy bandwidth "
                 f"{machine['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s (read + write)")
    return line
