"""World benchmark: rendering speed, and how well each judge reads real renders per resolution.

The default resolution must be the smallest at which a judge trained on the training
combinations reads every attribute of the held-out combinations (never seen by it) with
>= 99 % accuracy. Measured for both judge designs at 16 and 32 pixels, on 4000 fresh renders.
Writes bench/results/world.json.
    python bench/world_bench.py
"""
import time

import mmtutor as mm
from common import write

N_RENDER = 4096


def render_rate(size: int) -> float:
    world = mm.World(image_size=size)
    world.sample(256, seed=0)                      # warm-up
    t = time.perf_counter()
    world.sample(N_RENDER, seed=1)
    return N_RENDER / (time.perf_counter() - t)


def judge_at(size: int, arch: str, steps: int) -> dict:
    world = mm.World(image_size=size)
    judge, hist = mm.judge.train_judge(world, steps=steps, device="cpu", progress=False, seed=0, arch=arch)
    acc = {s: mm.judge.judge_accuracy(judge, world, n=4000, split=s, seed=99) for s in ("train", "heldout")}
    worst = min(v for k, v in acc["heldout"].items() if k != "joint")
    return {"arch": arch, "steps": steps, "train_seconds": round(hist["seconds"], 1),
            "accuracy": {s: {k: round(v, 4) for k, v in a.items()} for s, a in acc.items()},
            "every_heldout_attribute_at_least_0.99": worst >= 0.99}


def main():
    prof = mm.runtime.profile("cpu")
    out = {"render_images_per_second": {}, "judges": {}}
    for size in (16, 32, 64):
        out["render_images_per_second"][str(size)] = round(render_rate(size))
        print(f"render {size}x{size}: {out['render_images_per_second'][str(size)]} images/s", flush=True)
    for arch, steps in (("cnn", prof.judge_steps), ("resnet", prof.judge2_steps)):
        for size in (16, 32):
            key = f"{arch}_{size}px"
            out["judges"][key] = judge_at(size, arch, steps)
            print(key, out["judges"][key], flush=True)
    ok = [int(k.split("_")[1][:-2]) for k, r in out["judges"].items()
          if r["every_heldout_attribute_at_least_0.99"] and k.startswith("cnn")]
    out["smallest_resolution_where_the_cnn_judge_reads_every_heldout_attribute_at_0.99"] = min(ok) if ok else None
    out["default_resolution"] = mm.World().image_size
    write("world", out, bf16=prof.bf16)


if __name__ == "__main__":
    main()
