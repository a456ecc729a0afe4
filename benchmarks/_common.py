"""Helpers shared by the benchmarks: the machine's description and the sections of RESULTS.md."""

from __future__ import annotations

import os
import platform
import re
from importlib.metadata import version
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    """CPU model and the number of cores this process may use, e.g. "AMD EPYC, 2 cores available, 24 GiB RAM"."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        with open("/proc/meminfo") as handle:
            memory = f", {int(handle.readline().split()[1]) / 1024**2:.0f} GiB RAM"
    except OSError:
        memory = ""
    return f"{model}, {cores} cores available{memory}"


def environment(*packages: str) -> str:
    """The machine, OS, Python, jax/jaxlib and ``packages`` versions, and JAX's backend with its devices."""
    import jax

    versions = ", ".join(f"{p} {version(p)}" for p in ("jax", "jaxlib", *packages))
    devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
    return (f"{machine()}; {platform.platform()}; Python {platform.python_version()}; {versions}; "
            f"JAX backend `{jax.default_backend()}` ({devices})")


def write_section(section: str, heading: str) -> None:
    """Replace the section ``heading`` of RESULTS.md (up to the next ``## `` heading), keeping the others."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip() + "\n\n", text, count=1)
    else:
        text = text.rstrip() + "\n\n" + section.rstrip() + "\n"
    RESULTS.write_text(text.rstrip() + "\n")
