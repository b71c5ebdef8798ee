"""tools/execute_chapters.py: chapters executed into the build's execution cache, where the book
build (myst-nb's "cache" mode) finds them; failures reported and left out."""
import importlib.util
import json
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("execute_chapters", ROOT / "tools" / "execute_chapters.py")
ex = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ex)


def _notebook(path: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nbformat.write(nb, str(path))
    return path


def test_the_chapters_are_the_notebooks_of_the_table_of_contents():
    docs = [ex._doc(p) for p in ex.chapters()]
    assert docs == sorted(docs) and len(docs) == len(list((ROOT / "notebooks").glob("*.ipynb")))
    assert docs[0] == "notebooks/01_core_concepts"


def test_longest_first_by_the_recorded_seconds_unknown_first(tmp_path):
    timing = tmp_path / "t.json"
    timing.write_text(json.dumps({"chapters": {"notebooks/a": {"seconds": 5}, "notebooks/b": {"seconds": 50}}}))
    paths = [ROOT / "notebooks" / f"{n}.ipynb" for n in ("a", "b", "c")]
    assert [p.stem for p in ex.longest_first(paths, [timing, tmp_path / "missing.json"])] == ["c", "b", "a"]


def test_executed_notebooks_are_found_by_the_build_and_failures_are_not(tmp_path, monkeypatch, capsys):
    from jupyter_cache import get_cache
    monkeypatch.delenv("MMTUTOR_TIMING_FILE", raising=False)
    good = _notebook(tmp_path / "good.ipynb", "import os\nprint(os.environ['OMP_NUM_THREADS'])")
    bad = _notebook(tmp_path / "bad.ipynb", "raise ValueError('broken chapter')")
    cache_dir = tmp_path / "cache"
    assert ex.main([str(good), str(bad), "--cache", str(cache_dir), "--jobs", "1"]) == 1
    err = capsys.readouterr().err
    assert "bad: FAILED" in err and "broken chapter" in err
    cache = get_cache(str(cache_dir))
    record = cache.match_cache_notebook(nbformat.read(str(good), as_version=4))   # what myst-nb asks
    _, merged = cache.merge_match_into_notebook(nbformat.read(str(good), as_version=4))
    assert record is not None and merged.cells[0].outputs[0]["text"].strip() == str(ex.os.cpu_count() or 1)
    with pytest.raises(KeyError):
        cache.match_cache_notebook(nbformat.read(str(bad), as_version=4))
    # run again: the good one is skipped, the bad one tried (and reported) again
    assert ex.main([str(good), str(bad), "--cache", str(cache_dir), "--jobs", "1"]) == 1
    assert "good: outputs already in the cache" in capsys.readouterr().out


def test_bad_jobs_is_refused(tmp_path, capsys):
    assert ex.main(["--jobs", "0", "--cache", str(tmp_path / "c")]) == 2
    assert "--jobs must be between 1" in capsys.readouterr().err


def test_the_preface_total_counts_the_wall_time_of_chapters_that_overlapped():
    spec = importlib.util.spec_from_file_location("build_timing", ROOT / "_ext" / "build_timing.py")
    bt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bt)
    ch = {"device": "cpu", "profile": "cpu", "precision": "fp32", "torch_threads": 1, "matmul_gflops": 99.0}
    data = {"models": {"seconds": 100.0, "jobs": 2, "threads_per_job": 1, "device": "cpu", "profile": "cpu",
                       "models": {"gan": {"cached": False}}},
            "chapters": {"notebooks/01_a": {**ch, "seconds": 30.0}, "notebooks/02_b": {**ch, "seconds": 40.0}}}
    titles = {"notebooks/01_a": "A", "notebooks/02_b": "B"}
    serial = bt.table_rows(data, titles)
    assert serial[-1][1].startswith("170 s") and serial[1][2] == "cpu, cpu, fp32, 1 thread"
    side_by_side = bt.table_rows({**data, "chapters_run": {"seconds": 45.0, "jobs": 2, "threads_per_job": 1}}, titles)
    assert side_by_side[-1][1].startswith("145 s") and "2 at a time" in side_by_side[-2][0]
