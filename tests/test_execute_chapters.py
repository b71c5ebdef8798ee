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


def test_recorded_seconds_take_the_larger_of_the_files(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"chapters": {"notebooks/a": {"seconds": 5}},
                             "models": {"models": {"gan": {"seconds": 200}}}}))
    b.write_text(json.dumps({"chapters": {"notebooks/a": {"seconds": 9}}}))
    assert ex.recorded_seconds([a, b, tmp_path / "missing.json"]) == {"notebooks/a": 9.0, "gan": 200.0}


def test_priorities_put_the_model_behind_the_longest_wait_first():
    seconds = {"gan": 100, "vae": 150, "judge": 10, "ch_big": 200, "ch_small": 20, "ch_free": 60}
    needs = {"ch_big": {"gan", "judge"}, "ch_small": {"vae"}, "ch_free": set(), "gan": set(), "vae": set(),
             "judge": set()}
    prio = ex.priorities(seconds, needs)
    assert prio == {"gan": 300, "vae": 170, "judge": 210, "ch_big": 200, "ch_small": 20, "ch_free": 60}
    # a chapter whose time is unknown goes before everything, and so do the models it waits for
    prio = ex.priorities({**seconds, "ch_big": float("inf")}, needs)
    assert prio["gan"] == prio["judge"] == float("inf") and prio["vae"] == 170


def test_every_chapter_says_which_models_it_loads():
    needs = {ex._doc(p): ex.models_needed(p) for p in ex.chapters()}     # raises on an unclassified zoo call
    assert needs["notebooks/04_three_families"] >= {"gan", "vae", "diffusion", "cnn-judge", "resnet-judge"}
    assert "captioner" in needs["notebooks/05_image_to_text"]
    from mmtutor.prepare import BOOK_MODELS
    assert set().union(*needs.values()) == set(BOOK_MODELS)            # every model is some chapter's


def test_an_unclassified_zoo_call_is_refused(tmp_path):
    nb = _notebook(tmp_path / "odd.ipynb", "import mmtutor as mm\nm = mm.zoo.newmodel(world)")
    with pytest.raises(ValueError, match="zoo.newmodel: add it to ZOO_MODELS"):
        ex.models_needed(nb)


def test_with_models_each_chapter_waits_for_the_models_it_loads(tmp_path, monkeypatch, capsys):
    """--models, one job: the models are trained (here: a stand-in) before the chapters that load
    them, a chapter that loads nothing may go first, and a model that fails leaves its chapters
    out; the timing file says that models and chapters ran side by side."""
    from mmtutor import prepare
    timing = tmp_path / "timing.json"
    monkeypatch.setenv("MMTUTOR_TIMING_FILE", str(timing))
    monkeypatch.setattr(prepare, "encode_pool_captions", lambda prof, seed=0: 0)
    order = []

    def fake_train(args):
        order.append(args[0])
        if args[0] == "captioner":
            raise RuntimeError("captioner diverged")
        return args[0], 1.0, False

    monkeypatch.setattr(ex, "_train", fake_train)
    gan = _notebook(tmp_path / "gan.ipynb", "print('gan chapter')\nif False:\n    zoo.gan(None)")
    cap = _notebook(tmp_path / "cap.ipynb", "if False:\n    zoo.captioner(None)")
    free = _notebook(tmp_path / "free.ipynb", "print('free chapter')")
    known = {**{m: 10.0 for m in prepare.BOOK_MODELS}, ex._doc(free): 500.0, ex._doc(gan): 50.0, ex._doc(cap): 50.0}
    monkeypatch.setattr(ex, "recorded_seconds", lambda files: known)
    rc = ex.main([str(gan), str(cap), str(free), "--models", "--jobs", "1", "--cache", str(tmp_path / "c")])
    out, err = capsys.readouterr()
    assert rc == 1 and "captioner: FAILED" in err and "captioner diverged" in err
    assert f"{ex._doc(cap)}: not run: it loads captioner, which failed" in err
    assert sorted(order) == sorted(prepare.BOOK_MODELS)
    done = [line.strip().rsplit(": ", 1)[0] for line in out.splitlines()
            if ": executed in " in line or ": trained in " in line]
    assert done[0] == ex._doc(free)                              # loads nothing and is the longest: first
    assert done.index(ex._doc(gan)) == done.index("gan") + 1     # the chapter right after its model
    data = json.loads(timing.read_text())
    assert data["chapters_run"]["with_models"] is True and data.get("models") is None   # a model failed


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
    beside = bt.table_rows({**data, "chapters_run": {"seconds": 120.0, "jobs": 2, "threads_per_job": 1,
                                                      "with_models": True}}, titles)
    assert beside[-1][1].startswith("120 s") and "chapter running beside" in beside[0][0].replace("chapters", "chapter")
    assert "each chapter once its models were trained" in beside[-2][0]
