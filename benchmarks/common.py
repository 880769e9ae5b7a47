"""What the side-by-side benchmarks share: alternated runs with medians, and the JSON record of a measurement."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def alternate(runs: dict[str, Callable[[], float]], repeats: int, unit: str) -> tuple[dict[str, list[float]],
                                                                                         dict[str, float]]:
    """Each of ``runs`` (name -> one measurement) ``repeats`` times, taking turns so that drifts of a shared
    machine hit every variant alike; prints each value. Returns ``(values, medians)`` by name."""
    values: dict[str, list[float]] = {name: [] for name in runs}
    width = max(len(name) for name in runs)
    for repeat in range(repeats):
        for name, run in runs.items():
            values[name].append(run())
            print(f"repeat {repeat + 1}/{repeats}  {name:{width}s}  {values[name][-1]:9.2f} {unit}", flush=True)
    return values, {name: statistics.median(v) for name, v in values.items()}


def write_json(path: Path | None, args: argparse.Namespace, **results: Any) -> None:
    """``results`` with the arguments and the machine, torch and device they were measured on (nothing if no path)."""
    if path is None:
        return
    device = torch.cuda.get_device_name() if getattr(args, "device", "cpu") == "cuda" else "cpu"
    record = {"args": {k: str(v) for k, v in vars(args).items()}, **results, "machine": platform.platform(),
              "cpus": os.cpu_count(), "device": device, "torch": torch.__version__, "threads": torch.get_num_threads()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2))
