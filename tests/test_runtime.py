"""Runtime: profiles, the MMTUTOR_PROFILE override, seeding, devices, config checks and
checkpoint files; and the model cache of ``zoo``."""

import dataclasses
import os
import random

import numpy as np
import pytest
import torch

import mmtutor as mm
from mmtutor import checkpoint, runtime
from mmtutor.checkpoint import CheckpointError


# ------------------------------------------------------------------------ profiles
def test_profile_by_name():
    smoke, cpu, gpu = (runtime.profile(n) for n in ("smoke", "cpu", "gpu"))
    assert (smoke.name, cpu.name, gpu.name) == ("smoke", "cpu", "gpu")
    assert smoke.gan_steps < cpu.gan_steps < gpu.gan_steps
    assert smoke.pool_size < cpu.pool_size and smoke.g_channels <= cpu.g_channels
    assert gpu.image_size == 64 and cpu.image_size == smoke.image_size == 32


def test_unknown_profile_lists_the_choices():
    with pytest.raises(ValueError, match="unknown profile 'nope'; choose one of: smoke, cpu, gpu"):
        runtime.profile("nope")


def test_profile_env_override(monkeypatch):
    monkeypatch.setenv(runtime.PROFILE_ENV, "smoke")
    assert runtime.PROFILE_ENV == "MMTUTOR_PROFILE"
    assert runtime.profile().name == "smoke"
    assert runtime.profile(dev=torch.device("cpu")).name == "smoke"
    assert runtime.profile("gpu").name == "gpu"            # an explicit name wins
    monkeypatch.setenv(runtime.PROFILE_ENV, "bogus")
    with pytest.raises(ValueError, match="unknown profile 'bogus'.*MMTUTOR_PROFILE"):
        runtime.profile()


def test_profile_default_follows_device(monkeypatch):
    monkeypatch.delenv(runtime.PROFILE_ENV, raising=False)
    assert runtime.profile(dev=torch.device("cpu")).name == "cpu"
    assert runtime.profile(dev=torch.device("cuda")).name == "gpu"


# ------------------------------------------------------------------------ seeding and devices
def test_seed_everything_makes_randomness_reproducible():
    g1 = runtime.seed_everything(123)
    a = (torch.randn(5), random.random(), np.random.rand(), torch.randn(3, generator=g1))
    g2 = runtime.seed_everything(123)
    b = (torch.randn(5), random.random(), np.random.rand(), torch.randn(3, generator=g2))
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2] and torch.equal(a[3], b[3])
    runtime.seed_everything(124)
    assert not torch.equal(torch.randn(5), a[0])


def test_device_cpu_and_unknown():
    assert runtime.device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'; choose one of: cpu, cuda, mps"):
        runtime.device("tpu")


def test_device_cuda_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        assert runtime.device("cuda").type == "cuda"
        return
    with pytest.raises(ValueError, match="'cuda' requested but no CUDA GPU is available"):
        runtime.device("cuda")


def test_describe_names_device_profile_and_seed():
    line = runtime.describe(torch.device("cpu"), runtime.profile("smoke"), 7)
    assert "device: cpu" in line and "profile: smoke" in line and "seed: 7" in line


def test_matmul_rate_is_a_plausible_speed():
    rate = runtime.matmul_rate(torch.device("cpu"), n=256, repeats=3)
    assert 0.1 < rate < 1e6          # GFLOP/s: a CPU core does at least 0.1, no machine a petaflop


def test_record_chapter_keeps_seconds_and_the_machine_speed(tmp_path, monkeypatch):
    path = tmp_path / "timing.json"
    monkeypatch.setenv("MMTUTOR_TIMING_FILE", str(path))
    runtime.record_chapter("notebooks/01_x", 12.34, torch.device("cpu"), runtime.profile("smoke"))
    runtime.record_chapter("notebooks/02_y", 5.0, torch.device("cpu"), runtime.profile("smoke"))
    import json
    data = json.loads(path.read_text())
    assert set(data["chapters"]) == {"notebooks/01_x", "notebooks/02_y"}
    ch = data["chapters"]["notebooks/01_x"]
    assert ch["seconds"] == 12.3 and ch["profile"] == "smoke" and ch["matmul_gflops"] > 0
    assert data["machine"]["cpu"] and "amx" in data["machine"]


def test_record_chapter_without_the_variable_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("MMTUTOR_TIMING_FILE", raising=False)
    monkeypatch.chdir(tmp_path)
    runtime.record_chapter("notebooks/01_x", 1.0, torch.device("cpu"), runtime.profile("smoke"))
    assert not list(tmp_path.iterdir())


def test_inference_batch_is_smaller_on_a_cpu():
    assert runtime.inference_batch("cpu") == 128
    assert runtime.inference_batch(torch.device("cuda")) == 512      # naming a device needs no GPU


def test_autocast_disabled_is_a_no_op():
    with runtime.autocast(torch.device("cpu"), enabled=False):
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.float32


# ------------------------------------------------------------------------ configs and checkpoints
def test_check_config_names_the_differing_field():
    checkpoint.check_config({"a": 1, "b": (1, 2)}, {"a": 1, "b": [1, 2]})       # tuple == list: fine
    with pytest.raises(CheckpointError, match="saved with b=2, but this model has b=3"):
        checkpoint.check_config({"a": 1, "b": 2}, {"a": 1, "b": 3}, source="x.pt")
    with pytest.raises(CheckpointError, match="has no config field 'c'"):
        checkpoint.check_config({"a": 1}, {"a": 1, "c": 0})
    with pytest.raises(CheckpointError, match="unexpected config field 'd'=4"):
        checkpoint.check_config({"a": 1, "d": 4}, {"a": 1})


def test_dataclass_from_dict():
    c = checkpoint.dataclass_from_dict(mm.GANConfig, {"z_dim": 16, "betas": [0.5, 0.9]})
    assert c.z_dim == 16 and c.betas == (0.5, 0.9)
    with pytest.raises(CheckpointError, match=r"unknown fields for GANConfig: \['colour'\]"):
        checkpoint.dataclass_from_dict(mm.GANConfig, {"colour": 1})


def test_checkpoint_round_trip(tmp_path):
    state = {"m": {"w": torch.arange(6.0).view(2, 3)}}
    path = checkpoint.save(tmp_path / "sub" / "c.pt", "demo", {"x": 1, "t": [1, 2]}, state, note="hi")
    assert path.is_file() and not path.with_name("c.pt.tmp").exists()
    ckpt = checkpoint.load(path, kind="demo", expect_config={"x": 1, "t": (1, 2)})
    assert torch.equal(ckpt["state"]["m"]["w"], state["m"]["w"]) and ckpt["note"] == "hi"
    with pytest.raises(CheckpointError, match="holds a 'demo' checkpoint, expected 'gan'"):
        checkpoint.load(path, kind="gan")
    with pytest.raises(CheckpointError, match="saved with x=1, but this model has x=2"):
        checkpoint.load(path, expect_config={"x": 2, "t": [1, 2]})


def test_load_checkpoint_rejects_foreign_files(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not an mmtutor checkpoint"):
        checkpoint.load(tmp_path / "plain.pt")
    (tmp_path / "text.pt").write_text("hello, I am not a checkpoint\n")
    with pytest.raises(CheckpointError, match="text.pt is not"):
        checkpoint.load(tmp_path / "text.pt")
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        checkpoint.load(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="is a directory"):
        checkpoint.load(tmp_path)                      # a folder is not a checkpoint


# ------------------------------------------------------------------------ zoo: the model cache
def test_cache_dir_is_the_test_temp_folder(tmp_cache):
    assert mm.zoo.cache_dir() == tmp_cache
    assert os.environ["MMTUTOR_CACHE"] == str(tmp_cache)


def test_zoo_trains_once_then_loads(world, smoke, tmp_cache):
    prof = dataclasses.replace(smoke, judge_steps=2)
    j1, info1 = mm.zoo.judge(world, prof, device="cpu", progress=False)
    assert info1["cached"] is False
    assert os.path.dirname(info1["path"]) == str(tmp_cache) and os.path.isfile(info1["path"])
    j2, info2 = mm.zoo.judge(world, prof, device="cpu", progress=False)
    assert info2["cached"] is True and info2["path"] == info1["path"]
    images, _, _ = world.sample(8, seed=0)
    assert torch.equal(j1.predict(images), j2.predict(images))
    # another budget is another model
    _, info3 = mm.zoo.judge(world, dataclasses.replace(prof, judge_steps=1), device="cpu", progress=False)
    assert info3["path"] != info1["path"] and info3["cached"] is False


# ------------------------------------------------------------------------ zoo: keys follow the code
def test_cache_key_changes_when_the_code_that_trains_a_model_changes(tmp_path):
    import shutil
    copy = tmp_path / "mmtutor"
    shutil.copytree(mm.zoo.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert mm.zoo.source_fingerprint("gan", copy) == mm.zoo.source_fingerprint("gan")
    assert "loop" in mm.zoo.dependencies("gan") and "viz" not in mm.zoo.dependencies("gan")
    viz = copy / "viz.py"
    viz.write_text(viz.read_text() + "\n# a change that cannot affect a trained model\n")
    assert mm.zoo.source_fingerprint("gan", copy) == mm.zoo.source_fingerprint("gan")
    loop = copy / "loop.py"                                   # imported by gan.py: every GAN is retrained
    loop.write_text(loop.read_text().replace("self.n += 1", "self.n += 2"))
    assert mm.zoo.source_fingerprint("gan", copy) != mm.zoo.source_fingerprint("gan")
    assert mm.zoo.source_fingerprint("judge", copy) != mm.zoo.source_fingerprint("judge")   # judge.py uses loop too


def test_cache_key_includes_the_torch_version(monkeypatch):
    before = mm.zoo.source_fingerprint("judge")
    monkeypatch.setattr(torch, "__version__", "0.0.0-other")
    assert mm.zoo.source_fingerprint("judge") != before


def _record_many(args):
    path, worker = args
    import os
    os.environ["MMTUTOR_TIMING_FILE"] = path
    for i in range(15):
        runtime.record_chapter(f"notebooks/{worker}_{i:02d}", float(i), torch.device("cpu"), runtime.profile("smoke"))


def test_chapters_recorded_side_by_side_all_land(tmp_path):
    # tools/execute_chapters.py runs two kernels that write the same timing file at once
    import json
    import multiprocessing as mp
    path = str(tmp_path / "timing.json")
    with mp.get_context("spawn").Pool(2) as pool:
        pool.map(_record_many, [(path, "a"), (path, "b")])
    chapters = json.loads((tmp_path / "timing.json").read_text())["chapters"]
    assert len(chapters) == 30
    assert all(c["torch_threads"] >= 1 for c in chapters.values())


def test_record_chapters_run_keeps_the_wall_time(tmp_path, monkeypatch):
    import json
    path = tmp_path / "timing.json"
    monkeypatch.setenv("MMTUTOR_TIMING_FILE", str(path))
    runtime.record_chapter("notebooks/01_x", 3.0, torch.device("cpu"), runtime.profile("smoke"))
    runtime.record_chapters_run({"seconds": 7.25, "jobs": 2, "threads_per_job": 1, "chapters": 1})
    data = json.loads(path.read_text())
    assert data["chapters_run"]["jobs"] == 2 and data["chapters_run"]["seconds"] == 7.25
    assert data["chapters"]["notebooks/01_x"]["seconds"] == 3.0 and "machine" in data


def test_describe_names_device_profile_precision_and_threads():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        line = runtime.describe(torch.device("cpu"), runtime.profile("smoke"), 3)
    finally:
        torch.set_num_threads(before)
    assert line.startswith("device: cpu | profile: smoke | precision: ") and "| seed: 3 |" in line
    assert line.endswith(", 1 thread)")


def _is_channels_last(module: torch.nn.Module) -> bool:
    w = next(p for p in module.parameters() if p.dim() == 4)
    return w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()


@pytest.mark.parametrize("amx", [False, True])
def test_channels_last_keeps_marked_networks_contiguous_only_on_an_amx_cpu(monkeypatch, amx):
    monkeypatch.setattr(runtime, "_cpu_has_amx", lambda: amx)
    conv = lambda: torch.nn.Conv2d(3, 8, 3)                                  # noqa: E731
    assert _is_channels_last(runtime.channels_last(conv(), "cpu"))          # unmarked: channels_last everywhere
    assert _is_channels_last(runtime.channels_last(conv(), "cpu", amx_contiguous=True)) is not amx
    # on a GPU the host CPU's AMX does not matter
    assert _is_channels_last(runtime.channels_last(conv(), torch.device("cuda"), amx_contiguous=True))


@pytest.mark.parametrize("amx", [False, True])
def test_the_library_marks_the_vae_autoencoder_and_residual_judge(monkeypatch, amx):
    from mmtutor import vae as V
    from mmtutor.judge import Judge
    monkeypatch.setattr(runtime, "_cpu_has_amx", lambda: amx)
    monkeypatch.setattr(runtime, "device", lambda prefer=None: torch.device("cpu"))   # as on a CPU-only machine
    world = mm.World(image_size=16)
    assert _is_channels_last(Judge(world, arch="cnn"))
    assert _is_channels_last(Judge(world, arch="resnet")) is not amx
    ae = V.Autoencoder(V.VAEConfig(image_size=16, conditional=False, latent_size=4, latent_channels=4))
    assert _is_channels_last(ae.net) is not amx
