"""Measured choices, remembered per machine: which compute path ran fastest here.

CPU flags do not say which path is fastest (an AVX512-BF16 CPU without AMX runs bf16 matmuls at
0.6x fp32; an AMX CPU at 2-6x; an AVX2 CPU emulates bf16 at 0.01x), so `--precision auto` /
`--backend auto` time the paths once and this module remembers the answer in
`$FEATCACHE_HOME/plans.json`, keyed by the machine (CPU model, flags, thread count, library
versions) and by what was measured (the model). The next run on the same machine reads it
instead of measuring. An entry measured on another machine or set-up, or a file that cannot be
read, is re-planned, with a message saying so. No torch here: the measuring is the caller's.

    choice = planned("extract", {"encoder": key}, threads, measure, say)   # measure() -> dict, once
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable

LIBRARIES = ("torch", "openvino", "featcache")


def home() -> Path:
    return Path(os.environ.get("FEATCACHE_HOME") or Path.home() / ".cache" / "featcache")


def plans_file() -> Path:
    return home() / "plans.json"


def cpus() -> int:
    """The cores this process may run on (a container's or taskset's limit, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine(threads: int) -> dict:
    """What makes a measurement hold: the CPU (model and flags), the threads used, the libraries."""
    model, flags = "unknown", ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1].strip()
    except OSError:  # not Linux: the model and flags are unknown, the rest still keys the plan
        pass
    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = version(lib)
        except PackageNotFoundError:
            versions[lib] = None
    return {"cpu": model, "flags": hashlib.sha256(flags.encode()).hexdigest()[:12], "threads": threads,
            "versions": versions}


def _key(what: str, model: dict, mach: dict | None = None) -> str:
    blob = json.dumps({"what": what, "model": model, "machine": mach}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _read(say) -> dict:
    path = plans_file()
    if not path.exists():
        return {}
    try:
        plans = json.loads(path.read_text())
        if not isinstance(plans, dict) or not all(isinstance(v, dict) and "choice" in v for v in plans.values()):
            raise ValueError("not a plans file")
        return plans
    except (OSError, ValueError) as e:
        say(f"planner: {path} is unreadable ({type(e).__name__}); measuring again")
        return {}


def recall(what: str, model: dict, threads: int, say=print) -> dict | None:
    """The remembered choice for this machine, or None. An entry of the same model measured on
    another machine or set-up is named and not used."""
    plans, mach = _read(say), machine(threads)
    entry = plans.get(_key(what, model, mach))
    if entry is not None and entry.get("machine") == mach:
        return entry["choice"]
    others = [e["machine"] for k, e in plans.items() if e.get("model_key") == _key(what, model)]
    if others:
        differs = sorted({k for m in others for k in mach if m.get(k) != mach[k]})
        say(f"planner: {what} was measured on another machine or set-up (differs in: {', '.join(differs) or 'unknown'}); "
            "measuring again here")
    return None


def remember(what: str, model: dict, threads: int, choice: dict, say=print) -> None:
    """Written beside and renamed: a concurrent or killed run never leaves half a file."""
    plans, mach = _read(say), machine(threads)
    plans[_key(what, model, mach)] = {"what": what, "model": model, "model_key": _key(what, model), "machine": mach,
                                      "choice": choice}
    path = plans_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(plans, indent=1, sort_keys=True))
    os.replace(tmp, path)


def planned(what: str, model: dict, threads: int, measure: Callable[[], dict], say=print) -> tuple[dict, bool]:
    """(the choice, whether it was measured now): remembered, or measured once and remembered."""
    choice = recall(what, model, threads, say)
    if choice is not None:
        return choice, False
    choice = measure()
    remember(what, model, threads, choice, say)
    return choice, True


def rates_line(what: str, choice: dict, unit: str) -> str:
    """`extract: openvino fp32 167 img/s (torch fp32 60, openvino bf16 145) on this machine (measured in
    1.9 s, once; OpenVINO's conversion, 4.2 s, apart)`: the conversion is not the planner's cost, a
    run that names --backend openvino converts too."""
    rates = choice.get("rates", {})
    best = choice["path"]
    others = ", ".join(f"{p} {r:.0f}" for p, r in rates.items() if p != best)
    rejected = "; ".join(f"{p}: {why}" for p, why in choice.get("rejected", {}).items())
    return (f"{what}: {best} {rates.get(best, float('nan')):.0f} {unit}/s" + (f" ({others})" if others else "")
            + " on this machine" + (f"; not used: {rejected}" if rejected else "")
            + (f" (measured in {choice['seconds']:.1f} s, once" if "seconds" in choice else "")
            + (f"; OpenVINO's conversion, {choice['convert_seconds']:.1f} s, apart" if "convert_seconds" in choice else "")
            + (")" if "seconds" in choice else ""))
