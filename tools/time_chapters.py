"""Time every chapter on this machine's device without Jupyter: each notebook's code cells
(the Colab cell excepted) run in order as one script in a fresh Python process, as a kernel
would run them. Used to measure the book on a GPU, and to write bench/results/book_timing.json.

    python tools/time_chapters.py [--budget 1800] [--out timing/] [--json bench/results/book_timing.json]

Writes <out>/times.json (seconds and exit status per chapter, and the machine: CPU model, AMX
yes/no, precision, torch) and <out>/log.txt (each chapter's printed output) after every
chapter, and the same JSON to --json when given; exits 1 if a chapter fails or time runs out.
Set MMTUTOR_CACHE to an empty folder to time a fresh clone (every model trained).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import mmtutor as mm  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def chapter_script(notebook: Path) -> str:
    cells = json.loads(notebook.read_text())["cells"]
    parts = ["import matplotlib\nmatplotlib.use('Agg')"]
    for cell in cells:
        if cell["cell_type"] != "code" or "remove-cell" in cell["metadata"].get("tags", []):
            continue
        src = cell["source"]
        parts.append("".join(src) if isinstance(src, list) else src)
        parts.append("import matplotlib.pyplot as _plt\n_plt.close('all')")   # free each cell's figures
    return "\n\n".join(parts) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=float, default=1800.0, help="seconds for all chapters together (default 1800)")
    ap.add_argument("--out", type=Path, default=Path("timing"), help="folder for times.json and log.txt")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here (bench/results/book_timing.json)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    dev = mm.runtime.device()
    prof = mm.runtime.profile(dev=dev)
    times: dict = {"machine": {**mm.runtime.machine(dev, prof.bf16), "date": time.strftime("%Y-%m-%d %H:%M")},
                   "profile": prof.name, "model_cache": os.environ.get("MMTUTOR_CACHE", "~/.cache/mmtutor"),
                   "chapters": {}}
    t_all = time.perf_counter()
    with open(args.out / "log.txt", "w") as log:
        for nb in sorted((ROOT / "notebooks").glob("[0-9]*.ipynb")):
            left = args.budget - (time.perf_counter() - t_all)
            if left < 1:
                times["chapters"][nb.stem] = {"seconds": None, "status": "not run: out of time"}
                continue
            script = args.out / f"{nb.stem}.py"
            script.write_text(chapter_script(nb))
            t = time.perf_counter()
            try:
                p = subprocess.run([sys.executable, str(script.resolve())], cwd=ROOT / "notebooks", capture_output=True, text=True,
                                   timeout=left)
                status, output = ("ok" if p.returncode == 0 else f"failed (exit {p.returncode})"), p.stdout + p.stderr
            except subprocess.TimeoutExpired as e:
                out = e.stdout or b""
                status, output = "stopped: out of time", out.decode(errors="replace") if isinstance(out, bytes) else out
            times["chapters"][nb.stem] = {"seconds": round(time.perf_counter() - t, 1), "status": status}
            times["total_seconds"] = round(time.perf_counter() - t_all, 1)
            log.write(f"===== {nb.stem}: {status}, {times['chapters'][nb.stem]['seconds']} s\n{output}\n")
            log.flush()
            (args.out / "times.json").write_text(json.dumps(times, indent=1))
            if args.json:
                args.json.write_text(json.dumps(times, indent=1) + "\n")
            print(nb.stem, times["chapters"][nb.stem], flush=True)
    ok = all(v["status"] == "ok" for v in times["chapters"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
