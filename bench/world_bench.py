"""World benchmark: rendering speed, and how well a judge reads real renders per resolution.

The default resolution must be the smallest at which the judge reads every attribute of
held-out real renders with >= 99 % accuracy. Two protocols are measured at each size:
  * "judge" (the book's): trained on the training combinations only, tested on fresh renders
    of the held-out combinations it has never seen -- attributes must be legible, not memorised;
  * "lenient": trained on renders of every combination, tested on fresh held-out renders.
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


def judge_at(size: int, split: str, steps: int) -> dict:
    world = mm.World(image_size=size)
    judge, hist = mm.metrics.train_judge(world, steps=steps, device="cpu", progress=False, split=split, seed=0)
    acc = mm.metrics.judge_accuracy(judge, world, n=4000, split="heldout", seed=99)
    worst = min(v for k, v in acc.items() if k != "joint")
    return {"trained_on": split, "steps": steps, "train_seconds": round(hist["seconds"], 1),
            "accuracy_on_heldout_combinations": {k: round(v, 4) for k, v in acc.items()},
            "every_attribute_at_least_0.99": worst >= 0.99}


def main():
    prof = mm.runtime.profile("cpu")
    out = {"render_images_per_second": {}, "judge": {}, "lenient": {}}
    for size in (16, 32, 64):
        out["render_images_per_second"][str(size)] = round(render_rate(size))
        print(f"render {size}x{size}: {out['render_images_per_second'][str(size)]} images/s", flush=True)
    for size in (16, 32):
        out["judge"][str(size)] = judge_at(size, "train", prof.judge_steps)
        out["lenient"][str(size)] = judge_at(size, "all", prof.judge_steps)
        print(size, out["judge"][str(size)], out["lenient"][str(size)], flush=True)
    for proto in ("judge", "lenient"):
        ok = [int(s) for s, r in out[proto].items() if r["every_attribute_at_least_0.99"]]
        out[f"smallest_resolution_meeting_0.99_{proto}"] = min(ok) if ok else None
    out["default_resolution"] = mm.World().image_size
    write("world", out)


if __name__ == "__main__":
    main()
