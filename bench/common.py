"""Shared helpers for the benchmark scripts: the machine description and JSON output.

Every JSON file starts with the machine it was measured on (CPU model, AMX yes/no, cores,
threads, device, precision, torch), the git commit, the date, and the script that wrote it.
"""
import json
import multiprocessing as mp
import subprocess
import sys
import time
from pathlib import Path

import mmtutor as mm

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def commit(root: Path = ROOT) -> str:
    """The short commit of the checkout at ``root``, marked "+uncommitted" when its mmtutor/ has
    changes git has not committed."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "mmtutor"], cwd=root, capture_output=True, text=True)
        if out.returncode != 0:
            return "unknown"
        return out.stdout.strip() + ("+uncommitted" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def machine(bf16: bool = True) -> dict:
    return {**mm.runtime.machine(bf16=bf16), "mmtutor": mm.__version__, "commit": commit(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def write(name: str, data: dict, bf16: bool = True) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    script = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "?"
    path.write_text(json.dumps({"machine": machine(bf16), "script": f"bench/{script}", **data}, indent=2,
                               default=lambda o: list(o) if isinstance(o, tuple) else str(o)) + "\n")
    print(f"wrote {path}")
    return path


def side_by_side(fn, tasks: list, jobs: int) -> list:
    """``[fn(t) for t in tasks]``, ``jobs`` processes at a time (spawned, so each imports torch
    afresh; ``fn`` sets its own torch threads), results in the order of ``tasks``."""
    with mp.get_context("spawn").Pool(jobs) as pool:
        return list(pool.imap(fn, tasks, chunksize=1))
