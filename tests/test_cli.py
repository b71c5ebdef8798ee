"""The command line: python -m mmtutor train / generate / evaluate, and its error handling."""

import contextlib
import io
import json
import os

import pytest
import torch
from PIL import Image

import mmtutor as mm
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
    # bf16 where the CPU has AMX (runtime.bf16_supported), fp32 otherwise
    assert "profile: smoke" in err and f"precision: {mm.runtime.precision(torch.device('cpu'))}" in err
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


def _run_expecting_error(capsys, argv, message):
    """Run the CLI: a usage error exits 2 via SystemExit, a run-time error returns 2; either way
    one line on stderr that contains ``message``, and no traceback."""
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert message in err, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 or "profile:" in err.splitlines()[0], err
    return err


@pytest.mark.parametrize("option, value, message", [
    ("--n", "0", "argument --n: must be at least 1, got 0"),
    ("--n", "1000000000", "argument --n: must be at most 4096"),
    ("--n", "two", "argument --n: expected a whole number"),
    ("--scale", "0", "argument --scale: must be at least 1, got 0"),
    ("--scale", "-2", "argument --scale: must be at least 1, got -2"),
    ("--scale", "100", "argument --scale: must be at most 16"),
    ("--seed", "-1", "argument --seed: must be at least 0"),
    ("--seed", "1.5", "argument --seed: expected a whole number"),
])
def test_generate_bad_numbers_exit_2(cli_checkpoint, tmp_path, capsys, option, value, message):
    _run_expecting_error(capsys, ["generate", APPLE, "--checkpoint", str(cli_checkpoint[0]),
                                  "--out", str(tmp_path / "x.png"), option, value, *SMOKE], message)


@pytest.mark.parametrize("option, value, message", [
    ("--steps", "0", "argument --steps: must be at least 1, got 0"),
    ("--max-seconds", "-1", "argument --max-seconds: must be a positive number of seconds"),
    ("--max-seconds", "0", "argument --max-seconds: must be a positive number of seconds"),
    ("--max-seconds", "nan", "argument --max-seconds: must be a positive number of seconds"),
])
def test_train_bad_numbers_exit_2(tmp_path, capsys, option, value, message):
    _run_expecting_error(capsys, ["train", "--out", str(tmp_path / "g.pt"), option, value, *SMOKE], message)
    assert not (tmp_path / "g.pt").exists()


def test_unwritable_out_exits_2_before_any_work(cli_checkpoint, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):                     # running as root: permissions do not bind
            pytest.skip("this user can write anywhere (root); the permission check cannot be exercised")
        _run_expecting_error(capsys, ["generate", APPLE, "--checkpoint", str(cli_checkpoint[0]),
                                      "--out", str(locked / "x.png"), *SMOKE], "is not writable")
        _run_expecting_error(capsys, ["train", "--out", str(locked / "g.pt"), *SMOKE], "is not writable")
    finally:
        locked.chmod(0o700)


def test_out_that_is_a_directory_exits_2(cli_checkpoint, tmp_path, capsys):
    _run_expecting_error(capsys, ["generate", APPLE, "--checkpoint", str(cli_checkpoint[0]), "--out", str(tmp_path),
                                  *SMOKE], "is a directory")
    _run_expecting_error(capsys, ["train", "--out", str(tmp_path), *SMOKE], "is a directory")


def test_out_under_a_file_exits_2(cli_checkpoint, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _run_expecting_error(capsys, ["generate", APPLE, "--checkpoint", str(cli_checkpoint[0]),
                                  "--out", str(blocker / "x.png"), *SMOKE], "cannot create the folder")


def test_out_must_be_png(cli_checkpoint, tmp_path, capsys):
    _run_expecting_error(capsys, ["generate", APPLE, "--checkpoint", str(cli_checkpoint[0]),
                                  "--out", str(tmp_path / "x.jpg"), *SMOKE], "must name a .png file")


def test_caption_longer_than_minilm_reads_exits_2(cli_checkpoint, tmp_path, capsys):
    long = "a red apple on the table " + "very " * 600
    _run_expecting_error(capsys, ["generate", long, "--checkpoint", str(cli_checkpoint[0]),
                                  "--out", str(tmp_path / "x.png"), *SMOKE], "reads at most 512")


def test_checkpoint_with_an_edited_config_exits_2(cli_checkpoint, tmp_path, capsys):
    ckpt = torch.load(cli_checkpoint[0], weights_only=True)
    ckpt["config"]["model"]["g_channels"] = 24
    bad = tmp_path / "edited.pt"
    torch.save(ckpt, bad)
    err = _run_expecting_error(capsys, ["generate", APPLE, "--checkpoint", str(bad), "--out", str(tmp_path / "x.png"),
                                        *SMOKE], "do not fit the config stored with them")
    assert "shape" in err


def test_checkpoint_without_state_exits_2(cli_checkpoint, tmp_path, capsys):
    ckpt = torch.load(cli_checkpoint[0], weights_only=True)
    del ckpt["state"]
    bad = tmp_path / "nostate.pt"
    torch.save(ckpt, bad)
    _run_expecting_error(capsys, ["generate", APPLE, "--checkpoint", str(bad), "--out", str(tmp_path / "x.png"),
                                  *SMOKE], "is incomplete: it has no 'state' entry")


def test_seed_picks_noise_not_the_model(cli_checkpoint, tmp_path, capsys, monkeypatch):
    """--seed changes the samples of the same model; without --checkpoint the cached default
    model is chosen by --model-seed, so a new --seed never trains a new model."""
    calls = []
    monkeypatch.setattr(mm.zoo, "gan", lambda world, prof, seed=0, **k: (calls.append(seed) or
                                                                         (ConditionalGAN.load(cli_checkpoint[0], device="cpu"), {})))
    for seed in ("1", "2"):
        assert main(["generate", APPLE, "--out", str(tmp_path / f"s{seed}.png"), "--seed", seed, "--n", "2", *SMOKE]) == 0
    assert calls == [0, 0]                                  # the same default model both times
    assert (tmp_path / "s1.png").read_bytes() != (tmp_path / "s2.png").read_bytes()


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
    rc = main(["evaluate", "--checkpoint", str(cli_checkpoint[0]), "--n", "2", "--json", str(report_path), *SMOKE])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    report = json.loads(report_path.read_text())
    assert report == json.loads(captured.out)
    judges = {"cnn judge", "resnet judge"}
    assert set(report["judge_accuracy_real"]) == judges
    assert all(set(v) == {"train", "heldout"} for v in report["judge_accuracy_real"].values())
    assert set(report["consistency"]) == {"seen", "heldout", "size_coverage"}
    for split in ("seen", "heldout"):
        r = report["consistency"][split]
        assert set(r) == judges | {"range", "agreement"}
        for j in judges:
            assert {"color", "object", "relation", "size", "joint"} <= set(r[j])
            assert all(0.0 <= r[j][k] <= 1.0 for k in ("color", "object", "relation", "size", "joint"))
        assert r["range"][0] <= r["range"][1]
    assert 0 <= report["consistency"]["size_coverage"]["tv"] <= 1
    assert len(set(tmp_cache.glob("judge-*.pt")) - before) == 2    # both judges went to the test cache


# ------------------------------------------------------------------------ caption (image -> text)
@pytest.fixture()
def scene_png(world, tmp_path):
    path = tmp_path / "scene.png"
    mm.viz.save_grid(world.sample(1, seed=3)[0], path, nrow=1, scale=1)
    return path


def test_caption_missing_image_exits_2(tmp_path, capsys):
    _run_expecting_error(capsys, ["caption", str(tmp_path / "none.png"), *SMOKE], "no image file at")


def test_caption_file_that_is_not_an_image_exits_2(tmp_path, capsys):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    _run_expecting_error(capsys, ["caption", str(bad), *SMOKE], "error:")


def test_caption_wrong_size_is_refused_without_resize(world, tmp_path, capsys):
    from PIL import Image as PILImage
    path = tmp_path / "big.png"
    PILImage.new("RGB", (48, 48), (120, 120, 120)).save(path)
    _run_expecting_error(capsys, ["caption", str(path), *SMOKE], "--resize")   # refused before any training


def test_caption_missing_checkpoint_exits_2(scene_png, tmp_path, capsys):
    _run_expecting_error(capsys, ["caption", str(scene_png), "--checkpoint", str(tmp_path / "none.pt"), *SMOKE],
                         "no captioner checkpoint at")


def test_caption_greedy_with_several_captions_exits_2(scene_png, tmp_path, capsys):
    _run_expecting_error(capsys, ["caption", str(scene_png), "--checkpoint", str(tmp_path / "c.pt"), "--n", "3",
                                  *SMOKE], "--n > 1 needs --method beam or --method sample")
