"""Run every benchmark and write bench/results/*.json (about 2 hours on two CPU cores; the
data-size sweep alone is about half of it)."""
import runpy
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
sys.path.insert(0, str(here))
for script in ("world_bench.py", "align_bench.py", "gan_bench.py", "data_size_bench.py", "families_bench.py",
               "caption_bench.py"):
    print(f"== {script}", flush=True)
    sys.argv = [script]
    runpy.run_path(str(here / script), run_name="__main__")
