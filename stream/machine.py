"""What machine a benchmark ran on: CPU, memory, GPU and driver, library versions, and on
Jetson the power mode and clocks. Everything is read best-effort; unknown is ``None``."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def cpu_jiffies() -> tuple[int, ...] | None:
    """The machine's CPU time since boot, all cores, in clock ticks: (user, nice, system,
    idle, iowait, irq, softirq, steal), from the first line of ``/proc/stat``; None where
    there is none (not Linux). Fields an old kernel lacks read as 0."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return tuple(fields + [0] * (8 - len(fields)))


def _cmd(*argv: str, timeout: float = 5.0) -> str | None:
    if not shutil.which(argv[0]):
        return None
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    info = _read("/proc/cpuinfo") or ""
    for line in info.splitlines():
        if line.lower().startswith(("model name", "hardware", "cpu model")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def gpu_info() -> list[dict[str, str]]:
    """One dict per NVIDIA GPU from nvidia-smi (empty without one)."""
    out = _cmd("nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
               "--format=csv,noheader")
    gpus = []
    for line in (out or "").splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 4:
            gpus.append({"name": parts[0], "driver": parts[1], "memory": parts[2],
                         "compute_capability": parts[3]})
    return gpus


def jetson_info() -> dict[str, Any] | None:
    """L4T release, nvpmodel power mode and current CPU/GPU/EMC clocks on a Jetson."""
    release = _read("/etc/nv_tegra_release")
    if release is None:
        return None
    clocks = {}
    for name, path in (("gpu_hz", "/sys/devices/gpu.0/devfreq/17000000.ga10b/cur_freq"),
                       ("emc_hz", "/sys/kernel/debug/bpmp/debug/clk/emc/rate"),
                       ("cpu0_khz", "/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")):
        v = _read(path)
        if v and v.isdigit():
            clocks[name] = int(v)
    return {"l4t": release.splitlines()[0], "power_mode": _cmd("nvpmodel", "-q"),
            "clocks": clocks}


def machine_info() -> dict[str, Any]:
    """Everything above, as one JSON-able dict."""
    mem = None
    meminfo = _read("/proc/meminfo") or ""
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            mem = round(int(line.split()[1]) / 1024 / 1024, 1)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        cores = os.cpu_count()
    versions = {d: _version(d) for d in ("onnxruntime", "torch", "tensorrt", "pycuda",
                                           "numpy", "opencv-python-headless", "pyzmq")}
    try:
        import gi

        gi.require_version("Gst", "1.0")
        from gi.repository import Gst

        Gst.init(None)
        versions["gstreamer"] = Gst.version_string().split()[-1]
    except (ImportError, ValueError):
        versions["gstreamer"] = None
    return {
        "hostname": platform.node(), "platform": platform.platform(),
        "python": platform.python_version(), "cpu": cpu_model(), "cores": cores,
        "memory_gib": mem, "gpus": gpu_info(), "jetson": jetson_info(),
        "versions": {k: v for k, v in versions.items() if v},
    }
