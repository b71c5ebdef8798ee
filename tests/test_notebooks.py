"""Notebook hygiene: chapters are committed without outputs (the book build and nbval run them).

Parametrized over notebooks/*.ipynb; with no notebooks there is nothing to check."""

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_has_no_outputs(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert nb.get("nbformat") == 4
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, f"{path.name} has no code cells"
    for i, cell in enumerate(code):
        assert cell.get("outputs", []) == [], f"{path.name}: code cell {i} has outputs"
        assert cell.get("execution_count") is None, f"{path.name}: code cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_colab_cell_installs_from_the_configured_repository(path):
    """The repository address lives in _config.yml; each notebook's hidden Colab cell must
    install mmtutor from exactly that address (tools/sync_colab.py keeps them in step)."""
    import yaml
    cfg = yaml.safe_load((path.parents[1] / "_config.yml").read_text())
    spec = f'mmtutor @ git+{cfg["repository"]["url"]}@{cfg["repository"]["branch"]}'
    cell = json.loads(path.read_text(encoding="utf-8"))["cells"][1]
    src = "".join(cell["source"])
    assert cell["cell_type"] == "code" and "remove-cell" in cell["metadata"].get("tags", [])
    assert '"google.colab" in sys.modules' in src
    assert spec in src, f"{path.name}: Colab cell does not install {spec!r}; run `make sync-colab`"


def test_config_points_launch_buttons_at_this_repository():
    """Without repository.url/branch/path_to_book, Jupyter Book's Colab button silently points
    at the jupyter-book project itself."""
    import yaml
    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "_config.yml").read_text())
    assert cfg["launch_buttons"]["colab_url"].startswith("https://colab.research.google.com")
    assert cfg["repository"]["url"].startswith("https://github.com/")
    assert "executablebooks" not in cfg["repository"]["url"]
    assert cfg["repository"]["branch"] and "path_to_book" in cfg["repository"]
    assert cfg["sphinx"]["config"]["nb_execution_raise_on_error"] is True


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_chapter_script_for_timing_is_valid_python_without_the_colab_cell(path):
    """tools/time_chapters.py runs each chapter's code cells as one script (for GPU timing)."""
    import ast
    import importlib.util
    spec = importlib.util.spec_from_file_location("time_chapters", path.parents[1] / "tools" / "time_chapters.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    script = mod.chapter_script(path)
    ast.parse(script)
    assert "google.colab" not in script
    assert "mm.runtime.device()" in script


def _bib_keys() -> set[str]:
    import re
    import yaml
    root = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((root / "_config.yml").read_text())
    keys = set()
    for f in cfg["bibtex_bibfiles"]:
        keys |= set(re.findall(r"^@\w+\{([^,\s]+),", (root / f).read_text(encoding="utf-8"), re.M))
    return keys


def _cited_keys() -> set[str]:
    """Keys cited anywhere in the book, without the per-page prefix (c01-, bg-, ...)."""
    import re
    root = Path(__file__).resolve().parents[1]
    texts = [p.read_text(encoding="utf-8") for p in [*NOTEBOOKS, *(root / "book").glob("*.md")]]
    cited = set()
    for text in texts:
        for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", text.replace('\\"', '"')):
            cited |= {k.strip().split("-", 1)[1] for k in group.split(",")}
    return cited


def test_every_citation_has_an_entry_and_every_entry_is_cited():
    """The references page lists the whole bibliography (`:all:`), so an entry nobody cites would
    appear as if the book relied on it, and a citation without an entry is a broken link."""
    keys, cited = _bib_keys(), _cited_keys()
    assert cited, "no citation found: the pattern no longer matches the book's {cite:p} roles"
    assert not cited - keys, f"cited but not in the bibliography: {sorted(cited - keys)}"
    assert not keys - cited, f"in the bibliography but cited nowhere: {sorted(keys - cited)}"
