"""Execute the book's chapters two at a time, into the execution cache the book build reads.

    python tools/execute_chapters.py --models   # make book: train the book's models and run the chapters
    python tools/execute_chapters.py            # the chapters only (after `python -m mmtutor prepare`)

``jupyter-book build`` executes the chapters one after another in one two-thread kernel. On a
CPU these small networks use a second thread poorly, and two one-thread processes side by side
get more done (bench/results/speed.json, "pair_threads1"), so this script first runs the
chapters in ``--jobs`` kernels of ``cores / jobs`` torch threads, the longest first, and stores
each executed notebook in the build's jupyter-cache (``_build/.jupyter_cache``) exactly as the
build would (myst-nb's "cache" execution mode). The build then finds every chapter there and
executes none; a chapter whose code changed afterwards is simply executed again by the build.
On a GPU (one device to share) it runs one kernel.

With ``--models`` the book's models (``mmtutor.prepare.BOOK_MODELS``) are trained in the same
kernels' slots, and each chapter starts as soon as the models it loads are in the model cache
(``models_needed`` reads which from its ``zoo.<model>(`` calls): the chapters that need few
models fill the time the others wait, instead of every chapter waiting for the last model.
Among the tasks that can start, the one with the longest chain of work behind it goes first
(``priorities``: its own seconds plus the longest chain of tasks that wait for it, from the
committed book timings). The pool's caption features are encoded first, with every thread, as
``python -m mmtutor prepare`` does.

Chapters already in the cache are skipped. A chapter that raises is reported with its
traceback and not cached, and the script exits with status 1 after running the others, so
``make book`` stops there. The wall time of the whole run, the number of kernels and their
threads go to ``$MMTUTOR_TIMING_FILE`` (under "chapters_run"; with ``--models``, also each
model's seconds under "models"), for the preface's table.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def chapters(toc: Path = ROOT / "_toc.yml") -> list[Path]:
    """The notebooks of the table of contents, in reading order."""
    import yaml
    files = []

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(yaml.safe_load(toc.read_text()))
    return [ROOT / f"{f}.ipynb" for f in files if (ROOT / f"{f}.ipynb").is_file()]


def _doc(path: Path) -> str:
    """A notebook's document name as the build and the timing files know it (notebooks/01_x)."""
    try:
        return path.relative_to(ROOT).with_suffix("").as_posix()
    except ValueError:                        # a notebook outside the book
        return path.with_suffix("").as_posix()


# What each ``mmtutor.zoo`` call a chapter makes needs trained (``mmtutor.prepare.BOOK_MODELS``
# names); calls that train nothing of the book's own (configs, the rendered pool, a note) need
# nothing. A call in neither list is an error (tests/test_execute_chapters.py): a new model call
# must say what it waits for.
ZOO_MODELS = {"gan": ("gan",), "vae": ("vae",), "diffusion": ("diffusion",), "captioner": ("captioner",),
              "aligner": ("aligner",), "judges": ("cnn-judge", "resnet-judge"),
              "judge": ("cnn-judge", "resnet-judge")}
ZOO_OTHER = ("gan_config", "vae_config", "diffusion_config", "captioner_config", "pool", "training_note")


def zoo_calls(path: Path) -> set[str]:
    """The ``zoo.<name>(`` calls in a notebook's code cells."""
    import nbformat
    nb = nbformat.read(str(path), as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    return set(re.findall(r"\bzoo\.(\w+)\(", code))


def models_needed(path: Path) -> set[str]:
    """The book models a chapter loads (it waits for them when ``--models`` trains them)."""
    calls = zoo_calls(path)
    unknown = calls - set(ZOO_MODELS) - set(ZOO_OTHER)
    if unknown:
        raise ValueError(f"{_doc(path)} calls zoo.{', zoo.'.join(sorted(unknown))}: add it to ZOO_MODELS (the "
                         "models it needs trained) or ZOO_OTHER (nothing) in tools/execute_chapters.py")
    return {m for c in calls for m in ZOO_MODELS.get(c, ())}


def priorities(seconds: dict[str, float], needs: dict[str, set[str]]) -> dict[str, float]:
    """Each task's priority: its own seconds plus the longest chain of tasks that need it (so the
    model behind the longest wait is trained first). ``needs[task]`` are the tasks it waits for."""
    memo: dict[str, float] = {}

    def chain(task: str) -> float:
        if task not in memo:
            after = [t for t, n in needs.items() if task in n]
            memo[task] = seconds.get(task, 0.0) + max((chain(t) for t in after), default=0.0)
        return memo[task]

    return {t: chain(t) for t in seconds}


def recorded_seconds(timings: list[Path]) -> dict[str, float]:
    """Seconds per chapter (its document name) and per model (its name) in the committed book
    timings, the larger where several files have one."""
    out: dict[str, float] = {}
    for t in timings:
        if t.is_file():
            data = json.loads(t.read_text())
            rows = [(doc, c["seconds"]) for doc, c in data.get("chapters", {}).items()]
            rows += [(m, v["seconds"]) for m, v in data.get("models", {}).get("models", {}).items()]
            for key, sec in rows:
                out[key] = max(out.get(key, 0.0), float(sec))
    return out


def _execute(args):
    """Run one notebook in a fresh kernel with ``threads`` torch threads (worker process)."""
    path, threads, timeout = args
    import nbformat
    from jupyter_cache.executors.utils import single_nb_execution
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):   # read by torch as the kernel starts
        os.environ[var] = str(threads)
    nb = nbformat.read(str(path), as_version=4)
    result = single_nb_execution(nb, cwd=str(path.parent), timeout=timeout, allow_errors=False, meta_override=True)
    return path, result.nb, result.time, result.exc_string if result.err is not None else None


def default_jobs() -> int:
    """Two kernels on a CPU with at least two cores; one where a GPU is present (one device)."""
    import torch
    if torch.cuda.is_available() or (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        return 1
    return max(1, min(2, os.cpu_count() or 1))


TIMINGS = [ROOT / "bench" / "results" / f for f in ("book_timing.json", "book_timing_amx.json")]


def _train(args):
    """Train (or find cached) one book model (worker process): (name, seconds, cached)."""
    sys.path.insert(0, str(ROOT))
    from mmtutor import prepare
    return prepare.train_model(*args)


class _Inline:
    """One job: run each task here, as it is submitted (an executor's ``submit``)."""

    def submit(self, fn, *args) -> Future:
        f = Future()
        try:
            f.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 -- handed to the caller, as a process pool would
            f.set_exception(e)
        return f

    def shutdown(self, wait: bool = True) -> None:
        pass


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("notebooks", nargs="*", type=Path, help="default: every chapter of _toc.yml")
    ap.add_argument("--models", action="store_true",
                    help="also train the book's models (as python -m mmtutor prepare), each chapter starting once "
                         "the models it loads are trained")
    ap.add_argument("--cache", type=Path, default=ROOT / "_build" / ".jupyter_cache",
                    help="the jupyter-cache folder the build uses (default: _build/.jupyter_cache)")
    ap.add_argument("--jobs", type=int, default=None, help="kernels at a time (default: 2 on a CPU, 1 on a GPU)")
    ap.add_argument("--timeout", type=int, default=1200, help="seconds per cell, as _config.yml's execute.timeout")
    args = ap.parse_args(argv)
    import nbformat
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    paths = [p.resolve() for p in args.notebooks] or chapters()
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f"error: no such notebook: {', '.join(missing)}", file=sys.stderr)
        return 2
    cores = os.cpu_count() or 1
    jobs = default_jobs() if args.jobs is None else args.jobs
    if not 1 <= jobs <= cores:
        print(f"error: --jobs must be between 1 and the {cores} cores of this machine, got {jobs}", file=sys.stderr)
        return 2
    threads = max(1, cores // jobs)
    try:
        needs = {_doc(p): models_needed(p) for p in paths}
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cache = get_cache(str(args.cache))
    todo = []
    for p in paths:
        try:
            cache.match_cache_notebook(nbformat.read(str(p), as_version=4))
            print(f"  {_doc(p)}: outputs already in the cache")
        except KeyError:
            todo.append(p)
    tasks = {_doc(p): (_execute, (p, threads, args.timeout)) for p in todo}
    t0 = time.perf_counter()
    if args.models:
        sys.path.insert(0, str(ROOT))
        from mmtutor import prepare, runtime
        dev = runtime.device()
        prof = runtime.profile(None, dev)
        models = list(prepare.BOOK_MODELS)
        n = prepare.encode_pool_captions(prof)                 # with every thread, before the workers start
        print(f"caption features of the training pool ({n} captions): {time.perf_counter() - t0:.0f} s")
        tasks.update({m: (_train, (m, prof.name, str(dev), threads, 0)) for m in models})
    else:
        models = []
    needs = {t: (needs[t] & set(models)) if t in needs else set() for t in tasks}
    known = recorded_seconds(TIMINGS)
    prio = priorities({t: known.get(t, float("inf")) for t in tasks}, needs)
    what = f"{len(models)} model(s) and {len(todo)} chapter(s)" if models else f"{len(todo)} chapter(s)"
    print(f"running {what}: {jobs} at a time x {threads} torch thread(s), the longest chain of work first")
    executor = (ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) if jobs > 1 and len(tasks) > 1
                else _Inline())
    pending, running, done, failed = set(tasks), {}, set(), []
    trained, models_end = {}, None
    try:
        while pending or running:
            for t in sorted(pending):
                lost = needs[t] & set(failed)
                if lost:
                    pending.discard(t)
                    failed.append(t)
                    print(f"  {t}: not run: it loads {', '.join(sorted(lost))}, which failed", file=sys.stderr)
            ready = sorted((t for t in pending if needs[t] <= done), key=lambda t: (-prio[t], t))
            for t in ready[:jobs - len(running)]:
                pending.discard(t)
                fn, a = tasks[t]
                running[executor.submit(fn, a)] = t
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in finished:
                t = running.pop(f)
                if f.exception() is not None:                  # a model's training raised
                    failed.append(t)
                    err = "".join(traceback.format_exception(f.exception()))
                    print(f"  {t}: FAILED\n{err}", file=sys.stderr)
                    continue
                if t in models:
                    name, seconds, cached = f.result()
                    trained[name] = {"seconds": round(seconds, 1), "cached": cached}
                    done.add(t)
                    print(f"  {name}: {'cached' if cached else f'trained in {seconds:.0f} s'}")
                    if len(trained) == len(models):
                        models_end = time.perf_counter() - t0
                    continue
                path, nb, seconds, error = f.result()
                if error is not None:
                    failed.append(t)
                    print(f"  {t}: FAILED after {seconds:.0f} s\n{error}", file=sys.stderr)
                    continue
                stage = cache.add_nb_to_project(str(path))
                cache.cache_notebook_bundle(CacheBundleIn(nb, stage.uri, data={"execution_seconds": seconds}),
                                            check_validity=False, overwrite=True)
                done.add(t)
                print(f"  {t}: executed in {seconds:.0f} s")
    finally:
        executor.shutdown(wait=True)
    wall = time.perf_counter() - t0
    print(f"done in {wall:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else ""))
    if models and models_end is not None:
        runtime.record_models({"seconds": round(models_end, 1), "jobs": jobs, "threads_per_job": threads,
                               "device": str(dev), "profile": prof.name, "side_by_side_with_chapters": True,
                               "models": {m: trained[m] for m in models}}, dev, prof)
    if todo:
        _record({"seconds": round(wall, 1), "jobs": jobs, "threads_per_job": threads, "chapters": len(todo),
                 "with_models": bool(models)})
    return 1 if failed else 0


def _record(info: dict) -> None:
    """Add this run's wall time to ``$MMTUTOR_TIMING_FILE`` (nothing without the variable)."""
    sys.path.insert(0, str(ROOT))
    from mmtutor import runtime
    runtime.record_chapters_run(info)


if __name__ == "__main__":
    sys.exit(main())
