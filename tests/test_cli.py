"""The command line: python -m mmtutor train / generate / evaluate, and its error handling."""

import contextlib
import io
import json

import pytest
from PIL import Image

from mmtutor.__main__ import main
from mmtutor.gan import ConditionalGAN

APPLE = "a red apple on the table"
SMOKE = ["--profile", "smoke", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def cli_checkpoint(tmp_path_factory, cache_root):
    """`train --profile smoke --steps 5` once for the module."""
    path = tmp_path_factory.mktemp("cli") / "gan.pt"
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        mp.setenv("MMTUTOR_CACHE", str(cache_root))
        rc = main(["train", "--out", str(path), "--steps", "5", *SMOKE])
    return path, rc, out.getvalue(), err.getvalue()


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "generate", "evaluate"):
        assert command in out
    assert "MMTUTOR_PROFILE" in out


def test_generate_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--checkpoint" in out and "--n" in out


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_unknown_profile_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", APPLE, "--out", "x.png", "--profile", "nope"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "nope" in err and "smoke" in err


def test_train_writes_a_checkpoint(cli_checkpoint):
    path, rc, out, err = cli_checkpoint
    assert rc == 0, err
    assert "trained 5 steps" in out and str(path) in out
    assert "profile: smoke" in err
    gan = ConditionalGAN.load(path, device="cpu")
    assert gan.steps_done == 5
    assert gan.config.g_channels == 16 and gan.config.text_encoder == "minilm"


def test_generate_writes_a_png(cli_checkpoint, tmp_path, capsys):
    png = tmp_path / "apple.png"
    rc = main(["generate", APPLE, "--checkpoint", str(cli_checkpoint[0]), "--out", str(png), "--n", "2", *SMOKE])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as im:
        # two 32x32 images enlarged 4x, 2 px padding: 2 * (128 + 2) + 2 by 1 * (128 + 2) + 2
        assert im.size == (262, 132)
    assert "wrote 2 images" in captured.out


def test_generate_two_captions_one_row_each(cli_checkpoint, tmp_path, capsys):
    png = tmp_path / "two.png"
    rc = main(["generate", APPLE, "a small blue box under the table", "--checkpoint", str(cli_checkpoint[0]),
               "--out", str(png), "--n", "3", "--scale", "1", *SMOKE])
    assert rc == 0, capsys.readouterr().err
    with Image.open(png) as im:
        assert im.size == (3 * 34 + 2, 2 * 34 + 2)


@pytest.mark.parametrize("caption, message", [
    ("", "empty"),
    ("   ", "empty"),
    ("a red zebra on the table", "no object"),
    ("a big red on the table", "no object"),
])
def test_generate_bad_caption_exits_2(cli_checkpoint, tmp_path, capsys, caption, message):
    png = tmp_path / "x.png"
    rc = main(["generate", caption, "--checkpoint", str(cli_checkpoint[0]), "--out", str(png), *SMOKE])
    err = capsys.readouterr().err
    assert rc == 2
    assert "error:" in err and message in err
    assert "Traceback" not in err
    assert not png.exists()


def test_generate_bad_n_exits_2(cli_checkpoint, tmp_path, capsys):
    rc = main(["generate", APPLE, "--checkpoint", str(cli_checkpoint[0]), "--out", str(tmp_path / "x.png"),
               "--n", "0", *SMOKE])
    assert rc == 2
    assert "error: n_per_caption must be a positive integer" in capsys.readouterr().err


def test_generate_missing_checkpoint_exits_2(tmp_path, capsys):
    rc = main(["generate", APPLE, "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "x.png"),
               *SMOKE])
    assert rc == 2
    assert "error: no checkpoint at" in capsys.readouterr().err


def test_generate_corrupt_checkpoint_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 this is not a real zip archive" * 10)
    rc = main(["generate", APPLE, "--checkpoint", str(bad), "--out", str(tmp_path / "x.png"), *SMOKE])
    assert rc == 2
    assert "error:" in capsys.readouterr().err


def test_evaluate_writes_a_report(cli_checkpoint, tmp_path, capsys, tmp_cache):
    report_path = tmp_path / "report.json"
    before = set(tmp_cache.glob("judge-*.pt"))
    rc = main(["evaluate", "--checkpoint", str(cli_checkpoint[0]), "--n", "1", "--json", str(report_path), *SMOKE])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    report = json.loads(report_path.read_text())
    assert report == json.loads(captured.out)
    assert set(report["judge_accuracy_real"]) == {"train", "heldout"}
    assert set(report["consistency"]) == {"seen", "heldout"}
    for split in ("seen", "heldout"):
        assert set(report["consistency"][split]) == {"color", "object", "relation", "size", "joint"}
        assert all(0.0 <= v <= 1.0 for v in report["consistency"][split].values())
    assert len(set(tmp_cache.glob("judge-*.pt")) - before) == 1    # the judge went to the test cache
