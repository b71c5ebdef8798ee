"""World benchmark: rendering speed, and the judge's accuracy on real renders per resolution.

The default resolution must be the smallest at which the judge reads every attribute of
held-out real renders with >= 99 % accuracy. Writes bench/results/world.json.
    python bench/world_bench.py
"""
import time

import torch

import mmtutor as mm
from common import write

N_RENDER = 4096


def render_rate(size: int) -> float:
    world = mm.World(image_size=size)
    world.sample(256, seed=0)                      # warm-up
    t = time.perf_counter()
    world.sample(N_RENDER, seed=1)
    return N_RENDER / (time.perf_counter() - t)


def main():
    prof = mm.runtime.profile("cpu")
    out = {"render_images_per_second": {}, "judge": {}}
    for size in (16, 32, 64):
        out["render_images_per_second"][str(size)] = round(render_rate(size))
        print(f"render {size}x{size}: {out['render_images_per_second'][str(size)]} images/s")
    for size in (16, 32):
        world = mm.World(image_size=size)
        torch.manual_seed(0)
        judge, hist = mm.metrics.train_judge(world, steps=prof.judge_steps, device="cpu", progress=False)
        acc = {split: mm.metrics.judge_accuracy(judge, world, n=4000, split=split, seed=99)
               for split in ("train", "heldout")}
        worst = min(min(v for k, v in a.items() if k != "joint") for a in acc.values())
        out["judge"][str(size)] = {"train_seconds": round(hist["seconds"], 1), "steps": prof.judge_steps,
                                   "accuracy_seen_combinations": acc["train"],
                                   "accuracy_heldout_combinations": acc["heldout"],
                                   "every_attribute_at_least_0.99": worst >= 0.99}
        print(f"judge {size}x{size}: {hist['seconds']:.0f} s; held-out {acc['heldout']}")
    ok = [int(s) for s, r in out["judge"].items() if r["every_attribute_at_least_0.99"]]
    out["smallest_resolution_meeting_0.99"] = min(ok) if ok else None
    out["default_resolution"] = mm.World().image_size
    write("world", out)


if __name__ == "__main__":
    main()
