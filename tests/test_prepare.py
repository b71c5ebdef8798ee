"""python -m mmtutor prepare: the book's models trained ahead, in parallel processes, into the
very cache entries the chapters read."""
import contextlib
import io
import json

import pytest
import torch

import mmtutor as mm
from mmtutor import prepare, zoo
from mmtutor.__main__ import main

SMOKE = ["--profile", "smoke", "--device", "cpu"]


def run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture
def two_threads():
    """Two torch threads for the test (make test runs the unit tests in one-thread workers;
    prepare may start as many processes as its threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_prepare_trains_in_two_processes_what_the_chapters_then_load(world, tmp_path, monkeypatch, two_threads):
    timing = tmp_path / "timing.json"
    monkeypatch.setenv("MMTUTOR_TIMING_FILE", str(timing))
    monkeypatch.setenv("MMTUTOR_CACHE", str(tmp_path / "cache"))   # its own: other tests count what they train
    rc, _, err = run(["prepare", *SMOKE, "--jobs", "2", "--models", "cnn-judge", "aligner"])
    assert rc == 0, err
    assert "2 process(es) x 1 thread(s)" in err and "cnn-judge: trained" in err and "aligner: trained" in err
    data = json.loads(timing.read_text())["models"]
    assert data["jobs"] == 2 and data["threads_per_job"] == 1 and data["profile"] == "smoke"
    assert data["models"]["cnn-judge"]["cached"] is False and data["seconds"] > 0
    assert torch.get_num_threads() >= 1
    # the chapters' own calls find exactly these models
    smoke = mm.runtime.profile("smoke")
    _, info = mm.zoo.judge(world, smoke, device="cpu", progress=False)
    assert info["cached"] is True
    _, info = mm.zoo.aligner(world, smoke, device="cpu", progress=False)
    assert info["cached"] is True
    # and a second prepare trains nothing
    rc, _, err = run(["prepare", *SMOKE, "--jobs", "1", "--models", "cnn-judge"])
    assert rc == 0 and "cnn-judge: cached" in err


def test_prepare_bad_model_name_lists_the_choices():
    rc, _, err = run(["prepare", *SMOKE, "--models", "gann"])
    assert rc == 2 and "unknown model(s) 'gann'" in err and "diffusion" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("jobs", ["0", "x"])
def test_prepare_bad_jobs_is_a_usage_error(jobs, capsys):
    with pytest.raises(SystemExit) as e:
        main(["prepare", *SMOKE, "--jobs", jobs])
    assert e.value.code == 2 and "--jobs" in capsys.readouterr().err


def test_prepare_more_jobs_than_threads_is_refused():
    with pytest.raises(ValueError, match="jobs must be between 1 and"):
        prepare.prepare("smoke", "cpu", jobs=torch.get_num_threads() + 1, models=("cnn-judge",))


def test_default_jobs():
    assert prepare.default_jobs(torch.device("cuda")) == 1
    assert 1 <= prepare.default_jobs(torch.device("cpu")) <= 2


def test_book_models_are_the_ones_the_chapters_load():
    """Every zoo call of a chapter notebook is one of prepare's models (or a configuration helper)."""
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    called = set()
    for nb in (root / "notebooks").glob("*.ipynb"):
        src = "\n".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code")
        called |= set(re.findall(r"zoo\.(\w+)\(", src))
    helpers = {"pool", "gan_config", "vae_config", "diffusion_config", "captioner_config", "training_note"}
    covered = {m.replace("cnn-judge", "judges").replace("resnet-judge", "judges") for m in prepare.BOOK_MODELS}
    assert called - helpers <= covered, f"chapters load models prepare does not train: {called - helpers - covered}"


def test_training_note_says_what_was_trained_now_and_what_came_from_the_cache():
    now = {"cached": False, "train_seconds": 41.6, "torch_threads": 2}
    before = {"cached": True, "train_seconds": 73.2, "torch_threads": 1}
    assert zoo.training_note({"the GAN": now}) == "Trained in this run: the GAN 42 s on 2 torch threads"
    assert zoo.training_note({"the GAN": before}) == (
        "Loaded from the model cache, trained before this page ran: the GAN 73 s on 1 torch thread")
    both = zoo.training_note({"alignment": now, "the GAN": before})
    assert both.startswith("Trained in this run: alignment 42 s") and "; loaded from the model cache" in both
    old = {"cached": True, "train_seconds": 5.0, "torch_threads": None}  # a model trained before threads were kept
    assert zoo.training_note({"m": old}).endswith("m 5 s")
    with pytest.raises(ValueError, match="at least one"):
        zoo.training_note({})
