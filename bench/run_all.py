"""Run every benchmark (about 10 minutes on two CPU cores) and write bench/results/*.json."""
import runpy
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
sys.path.insert(0, str(here))
for script in ("world_bench.py", "align_bench.py", "gan_bench.py"):
    print(f"== {script}", flush=True)
    sys.argv = [script]
    runpy.run_path(str(here / script), run_name="__main__")
