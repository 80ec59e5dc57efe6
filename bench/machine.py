"""What machine a benchmark ran on: every bench script prints this beside its figures."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any


def machine_info() -> dict[str, Any]:
    """CPU model, usable cores, memory, GPU (from nvidia-smi), Python, torch (if loaded) and load average."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    gpu = None
    if shutil.which("nvidia-smi"):  # asking torch would cost its import in scripts that do not use it
        try:
            names = subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.split("\n")
            gpu = ", ".join(n.strip() for n in names if n.strip()) or None
        except (OSError, subprocess.SubprocessError):
            pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch = sys.modules.get("torch")
    return {
        "host": platform.node(),
        "cpu": cpu,
        "cores": cores,
        "memory_gb": mem_gb,
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": getattr(torch, "__version__", None),
        "load_avg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def machine_line(m: dict[str, Any]) -> str:
    """One line from :func:`machine_info`'s dict."""
    gpu = m.get("gpu") or "no GPU"
    load = " ".join(f"{x:.1f}" for x in m["load_avg"]) if m.get("load_avg") else "n/a"
    torch = f", torch {m['torch']}" if m.get("torch") else ""
    return (
        f"{m['cpu']}, {m['cores']} usable cores, {m.get('memory_gb')} GB RAM, {gpu}, "
        f"Python {m['python']}{torch}; load average {load}"
    )


def machine() -> str:
    """``host: cpu, cores, memory, GPU, versions; load average`` for printing."""
    m = machine_info()
    return f"{m['host']}: {machine_line(m)}"
