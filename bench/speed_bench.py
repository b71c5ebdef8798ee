"""Training speed of every model the book trains, per step, under the settings issue 7 asks
to measure: the thread count (one process with all threads, one with one thread, two
one-thread processes side by side), the memory format (channels_last), fused Adam/AdamW
kernels and ``torch.compile`` (its compile time counted). Writes bench/results/speed.json.

Each (model, variant) runs in its own process (so a compiled graph or a patched optimizer
cannot leak into the next one), training ``--steps`` updates of the ``cpu`` profile's model
at its batch size, and reports the median seconds per step after ``--skip`` warm-up steps;
``--rounds`` interleaves the variants that many times, because a shared machine's speed drifts
by 10-20 % over minutes. The models are built and trained exactly as ``mmtutor.zoo`` does, but
saved nowhere (a fresh temporary folder per process).

    python bench/speed_bench.py                       # all models, all variants
    python bench/speed_bench.py --models gan diffusion --variants book fused
    python bench/speed_bench.py --variants book pair_threads1 --name speed_amx   # a CPU with AMX

speed.json is measured on a CPU without AMX (fp32), speed_amx.json on one with AMX (bf16), so
that the thread setting ``make book`` uses is checked on both kinds.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS = ("gan", "vae", "diffusion", "cnn_judge", "resnet_judge", "aligner", "captioner")
# name -> what it changes (the library's settings are the "book" variant)
VARIANTS = {
    "book": "as the library trains: all torch threads, bf16 autocast on a CPU with AMX and fp32 elsewhere, "
            "channels_last where the library sets it (the GAN's inputs; since c862ec8 also the other models' "
            "weights through runtime.channels_last, which since ebfcbe2 keeps the VAE, the autoencoder and the "
            "residual judge contiguous on a CPU with AMX)",
    "threads1": "one torch thread",
    "pair_threads1": "two one-thread processes of the same model at once (per-process step time)",
    "fp32": "float32 where the library uses bf16 autocast (CPUs with AMX); elsewhere the same as book",
    "pair_threads1_fp32": "pair_threads1 in float32",
    "memory_format": "each network in the other memory format: the GAN without its channels_last inputs, every "
                     "network built through runtime.channels_last in the order it does not choose on this machine "
                     "(contiguous where it chooses channels_last, and channels_last where it keeps a network "
                     "contiguous: the VAE, autoencoder and residual judge on a CPU with AMX)",
    "pair_threads1_layout": "pair_threads1 with memory_format's change",
    "fused_adam": "Adam/AdamW with fused=True (one kernel per step instead of one per parameter)",
    "compile": "torch.compile on every trained network (nn.Module.compile), a fresh compiler cache per process; "
               "compile time reported apart (a network trained through methods other than forward, such as "
               "the aligner, is not compiled by it)",
}


# ------------------------------------------------------------------ one measurement (child)
def child(model: str, variant: str, steps: int, skip: int) -> dict:
    import torch

    import mmtutor as mm
    from mmtutor import loop as L
    from mmtutor import zoo

    if variant in ("threads1", "pair_threads1", "pair_threads1_fp32", "pair_threads1_layout"):
        torch.set_num_threads(1)
    if variant == "fused_adam":
        for name in ("Adam", "AdamW"):
            base = getattr(torch.optim, name)
            fused = type(name, (base,), {"__init__": lambda self, *a, _b=base, **k: _b.__init__(
                self, *a, **{**k, "fused": True})})
            setattr(torch.optim, name, fused)
    flip = variant in ("memory_format", "pair_threads1_layout")
    gan_contiguous = flip and model == "gan"
    if gan_contiguous:                    # the GAN asks for channels_last in Tensor.to(...): drop it
        to = torch.Tensor.to

        def to_default(self, *a, **k):
            k.pop("memory_format", None)
            return to(self, *a, **k)
        torch.Tensor.to = to_default

    if flip and not gan_contiguous:       # the models that call runtime.channels_last: the other order
        chosen = mm.runtime.channels_last

        def other_order(module, dev=None, amx_contiguous=False):
            kept = chosen(torch.nn.Conv2d(2, 3, 3), dev, amx_contiguous).weight.is_contiguous()
            return module.to(memory_format=torch.channels_last if kept else torch.contiguous_format)
        mm.runtime.channels_last = other_order

    stamps: dict[str, list[float]] = {}
    init, it = L.Loop.__init__, L.Loop.__iter__

    def loop_init(self, name, train, modules, *a, **k):
        for key, m in modules.items():
            if variant == "compile" and key != "ema":
                m.compile()
        init(self, name, train, modules, *a, **k)

    def loop_iter(self):
        times = stamps.setdefault(self.name, [])
        times.append(time.perf_counter())
        for step in it(self):
            yield step
            times.append(time.perf_counter())

    L.Loop.__init__, L.Loop.__iter__ = loop_init, loop_iter
    tmp = tempfile.mkdtemp(prefix="speed-")
    zoo._path = lambda kind, module, payload: Path(tmp) / f"{kind}.pt"      # train every time, keep nothing

    world = mm.World()
    prof = replace(mm.runtime.profile("cpu"), gan_steps=steps, vae_steps=steps, diffusion_steps=steps,
                   diffusion_ae_steps=steps, judge_steps=steps, judge2_steps=steps, align_steps=steps,
                   caption_steps=steps)
    if variant.endswith("fp32"):
        prof = replace(prof, bf16=False)
    zoo.pool(world, prof)                                                  # rendered before the clock
    kw = dict(device="cpu", progress=False)
    if model == "gan":
        zoo.gan(world, prof, **kw)
    elif model == "vae":
        zoo.vae(world, prof, **kw)
    elif model == "diffusion":
        zoo.diffusion(world, prof, **kw)
    elif model in ("cnn_judge", "resnet_judge"):
        zoo.judge(world, prof, arch=model.split("_")[0], **kw)
    elif model == "aligner":
        zoo.aligner(world, prof, **kw)
    elif model == "captioner":
        zoo.captioner(world, prof, **kw)
    out = {}
    for name, t in stamps.items():
        d = [b - a for a, b in zip(t, t[1:])]
        warm = d[skip:]
        out[name] = {"ms_per_step": round(1000 * statistics.median(warm), 1),
                     "first_steps_s": round(sum(d[:skip]), 2), "steps": len(d)}
        if variant == "compile":           # what the first steps cost beyond ordinary steps
            out[name]["compile_s"] = round(sum(d[:skip]) - skip * statistics.median(warm), 1)
    return {"threads": torch.get_num_threads(), "loops": out}


# ------------------------------------------------------------------ the driver
def run(model: str, variant: str, args) -> list[dict]:
    cmd = [sys.executable, __file__, "--child", model, variant, "--steps", str(args.steps), "--skip", str(args.skip)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    if variant == "compile":              # a fresh compiler cache: count the compile a new machine pays
        env["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(2 if variant.startswith("pair") else 1)]
    results = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode:
            raise SystemExit(f"{model}/{variant} failed (exit {p.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--steps", type=int, default=60, help="updates per measurement")
    ap.add_argument("--skip", type=int, default=10, help="warm-up steps left out of the median")
    ap.add_argument("--rounds", type=int, default=2, help="times every variant is measured, interleaved")
    ap.add_argument("--merge", action="store_true",
                    help="replace only the measured (model, variant) entries of an existing NAME.json")
    ap.add_argument("--name", default="speed", help="results file bench/results/NAME.json (default speed)")
    ap.add_argument("--child", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.steps, args.skip)))
        return
    if args.steps <= args.skip + 5:
        ap.error(f"--steps ({args.steps}) must exceed --skip ({args.skip}) by more than 5")
    from common import write

    t0 = time.perf_counter()
    raw: dict = {m: {v: [] for v in args.variants} for m in args.models}
    for r in range(args.rounds):
        for m in args.models:
            for v in args.variants:
                res = run(m, v, args)
                raw[m][v].extend(res)
                ms = {k: [x["loops"][k]["ms_per_step"] for x in res] for k in res[0]["loops"]}
                print(f"round {r + 1}: {m:13s} {v:14s} {ms}", flush=True)
    models, merged = {}, {}
    path = HERE / "results" / f"{args.name}.json"
    if args.merge and path.is_file():
        old = json.loads(path.read_text())
        models = old["models"]
        merged = old.get("merged", {})
    for m, per in raw.items():
        models.setdefault(m, {})
        for v, runs in per.items():
            loops = {}
            for name in runs[0]["loops"]:
                vals = [x["loops"][name]["ms_per_step"] for x in runs]
                loops[name] = {"ms_per_step_median": round(statistics.median(vals), 1), "ms_per_step_all": vals}
                if v == "compile":
                    loops[name]["compile_s_all"] = [x["loops"][name]["compile_s"] for x in runs]
            models[m][v] = loops
            if args.merge:
                merged[f"{m}/{v}"] = time.strftime("%Y-%m-%d %H:%M")
    for m in models:                      # throughput against the library's settings (>1: faster; two
        book = models[m].get("book")      # one-thread processes count both processes' steps)
        for v, loops in models[m].items():
            for name, d in loops.items():
                if book:
                    factor = book[name]["ms_per_step_median"] / d["ms_per_step_median"]
                    d["throughput_vs_book"] = round(factor * (2 if v.startswith("pair") else 1), 3)
    extra = {"merged": merged} if merged else {}
    write(args.name, {"steps": args.steps, "skip": args.skip, "rounds": args.rounds, "variants": VARIANTS,
                    "models": models, "bench_seconds": round(time.perf_counter() - t0), **extra})


if __name__ == "__main__":
    main()
