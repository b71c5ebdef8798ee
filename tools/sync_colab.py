"""Rewrite the install address in every notebook's Colab set-up cell from _config.yml.

The repository's address lives in one place, `repository.url` / `repository.branch` in
_config.yml. Colab opens a notebook on its own, so its first cell must carry the address
too; this script keeps those copies in step (tests/test_notebooks.py checks them).
    python tools/sync_colab.py
"""
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PATTERN = re.compile(r'"mmtutor @ git\+[^"@]+@[^"]+"')


def expected_spec() -> str:
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    repo = cfg["repository"]
    return f'"mmtutor @ git+{repo["url"]}@{repo.get("branch", "main")}"'


def main() -> int:
    spec = expected_spec()
    changed = 0
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = json.loads(path.read_text())
        cell = nb["cells"][1]
        src = "".join(cell["source"])
        if not PATTERN.search(src):
            print(f"{path.name}: no Colab install line found in cell 1", file=sys.stderr)
            return 1
        new = PATTERN.sub(spec, src)
        if new != src:
            cell["source"] = new.splitlines(keepends=True)
            path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
            changed += 1
    print(f"Colab cells point at {spec}; {changed} notebook(s) updated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
