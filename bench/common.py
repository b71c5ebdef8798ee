"""Shared helpers for the benchmark scripts: machine description and JSON output."""
import json
import os
import platform
import time
from pathlib import Path

import torch

import mmtutor as mm

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    dev = mm.runtime.device()
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else dev.type,
            "bf16_autocast": mm.runtime.bf16_supported(dev), "torch": torch.__version__,
            "python": platform.python_version(), "mmtutor": mm.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def write(name: str, data: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2) + "\n")
    print(f"wrote {path}")
    return path
