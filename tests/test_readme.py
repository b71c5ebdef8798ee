"""The README's results table is what bench/results/*.json say (issue: numbers never typed by hand)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_results_table_matches_the_benchmark_files():
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "results_table.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_benchmark_file_names_its_machine_and_script():
    import json
    for path in sorted((ROOT / "bench" / "results").glob("*.json")):
        data = json.loads(path.read_text())
        m = data.get("machine", {})
        assert {"cpu", "amx", "precision", "torch"} <= set(m), f"{path.name} does not name its machine"
        assert str(data.get("script", "")).split("/")[-1].endswith(".py"), f"{path.name} does not name its script"
