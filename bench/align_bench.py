"""Alignment benchmark: train the dual encoder (cpu profile) and measure retrieval on 1000
held-out pairs. Target: attribute-match ("semantic") text->image R@1 >= 0.98 within 60 s.
Writes bench/results/align.json.
    python bench/align_bench.py
"""
import time

import torch

import mmtutor as mm
from common import write


def main():
    prof = mm.runtime.profile("cpu")
    world = mm.World(image_size=prof.image_size)
    out = {}
    for text_encoder in ("bert", "minilm"):
        torch.manual_seed(0)
        mm.zoo._pool.cache_clear()            # each encoder's wall time includes rendering its pool
        mm.text._MINILM.clear()               # ... and loading MiniLM
        t0 = time.perf_counter()
        pool = mm.zoo.pool(world, prof, seed=0)
        model = mm.DualEncoder(mm.AlignConfig(text_encoder=text_encoder, image_size=world.image_size), world)
        hist = mm.align.train_alignment(model, pool, steps=prof.align_steps, batch_size=prof.align_batch,
                                        bf16=prof.bf16, progress=False)
        wall = time.perf_counter() - t0
        ret = mm.align.evaluate_retrieval(model, world, n=1000, split="heldout", seed=1234)
        out[text_encoder] = {"steps": prof.align_steps, "batch_size": prof.align_batch,
                             "train_seconds": round(hist["total_seconds"], 1),
                             "wall_seconds_including_data_and_model_setup": round(wall, 1),
                             "heldout_retrieval_1000_pairs": {k: round(v, 4) for k, v in ret.items()},
                             "target_t2i_semantic_R@1_0.98_within_60s":
                                 ret["t2i_semantic_R@1"] >= 0.98 and wall <= 60}
        print(text_encoder, out[text_encoder])
    write("align", out, bf16=prof.bf16)


if __name__ == "__main__":
    main()
