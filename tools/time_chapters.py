"""Time every chapter on this machine's device without Jupyter: each notebook's code cells
(the Colab cell excepted) run in order as one script in a fresh Python process, as a kernel
would run them. Used to measure the `gpu` profile on a GPU machine.

    python tools/time_chapters.py [--budget 600] [--out timing/]

Writes <out>/times.json (seconds and exit status per chapter) and <out>/log.txt (each
chapter's printed output) after every chapter; exits 1 if a chapter fails or time runs out.
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

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
    ap.add_argument("--budget", type=float, default=600.0, help="seconds for all chapters together (default 600)")
    ap.add_argument("--out", type=Path, default=Path("timing"), help="folder for times.json and log.txt")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    times: dict = {}
    t_all = time.perf_counter()
    with open(args.out / "log.txt", "w") as log:
        for nb in sorted((ROOT / "notebooks").glob("[0-9]*.ipynb")):
            left = args.budget - (time.perf_counter() - t_all)
            if left < 1:
                times[nb.stem] = {"seconds": None, "status": "not run: out of time"}
                continue
            script = args.out / f"{nb.stem}.py"
            script.write_text(chapter_script(nb))
            t = time.perf_counter()
            try:
                p = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True,
                                   timeout=left)
                status, output = ("ok" if p.returncode == 0 else f"failed (exit {p.returncode})"), p.stdout + p.stderr
            except subprocess.TimeoutExpired as e:
                out = e.stdout or b""
                status, output = "stopped: out of time", out.decode(errors="replace") if isinstance(out, bytes) else out
            times[nb.stem] = {"seconds": round(time.perf_counter() - t, 1), "status": status}
            times["total_seconds"] = round(time.perf_counter() - t_all, 1)
            log.write(f"===== {nb.stem}: {status}, {times[nb.stem]['seconds']} s\n{output}\n")
            log.flush()
            (args.out / "times.json").write_text(json.dumps(times, indent=1))
            print(nb.stem, times[nb.stem], flush=True)
    ok = all(v["status"] == "ok" for k, v in times.items() if k != "total_seconds")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
