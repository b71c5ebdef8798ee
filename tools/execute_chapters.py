"""Execute the book's chapters two at a time, into the execution cache the book build reads.

    python tools/execute_chapters.py            # make book runs this after `python -m mmtutor prepare`

``jupyter-book build`` executes the chapters one after another in one two-thread kernel. On a
CPU these small networks use a second thread poorly, and two one-thread processes side by side
get more done (bench/results/speed.json, "pair_threads1"), so this script first runs the
chapters in ``--jobs`` kernels of ``cores / jobs`` torch threads, the longest first, and stores
each executed notebook in the build's jupyter-cache (``_build/.jupyter_cache``) exactly as the
build would (myst-nb's "cache" execution mode). The build then finds every chapter there and
executes none; a chapter whose code changed afterwards is simply executed again by the build.
On a GPU (one device to share) it runs one kernel.

Chapters already in the cache are skipped. A chapter that raises is reported with its
traceback and not cached, and the script exits with status 1 after running the others, so
``make book`` stops there. The wall time of the whole run, the number of kernels and their
threads go to ``$MMTUTOR_TIMING_FILE`` (under "chapters_run"), for the preface's table.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
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


def longest_first(paths: list[Path], timings: list[Path]) -> list[Path]:
    """``paths`` ordered by the seconds their chapters took in the committed book timings
    (the longest first, so that no long chapter starts last); unknown ones first of all."""
    seconds: dict[str, float] = {}
    for t in timings:
        if t.is_file():
            for doc, c in json.loads(t.read_text()).get("chapters", {}).items():
                seconds[doc] = max(seconds.get(doc, 0.0), float(c["seconds"]))
    return sorted(paths, key=lambda p: -seconds.get(_doc(p), float("inf")))


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("notebooks", nargs="*", type=Path, help="default: every chapter of _toc.yml")
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
    cache = get_cache(str(args.cache))
    todo = []
    for p in paths:
        try:
            cache.match_cache_notebook(nbformat.read(str(p), as_version=4))
            print(f"  {_doc(p)}: outputs already in the cache")
        except KeyError:
            todo.append(p)
    todo = longest_first(todo, [ROOT / "bench" / "results" / f for f in ("book_timing.json", "book_timing_amx.json")])
    print(f"executing {len(todo)} chapter(s): {jobs} kernel(s) x {threads} torch thread(s), the longest first")
    t0, failed = time.perf_counter(), []
    work = [(p, threads, args.timeout) for p in todo]
    pool = mp.get_context("spawn").Pool(jobs) if jobs > 1 and len(todo) > 1 else None
    results = pool.imap_unordered(_execute, work, chunksize=1) if pool else map(_execute, work)
    try:
        for path, nb, seconds, error in results:
            name = _doc(path)
            if error is not None:
                failed.append(name)
                print(f"  {name}: FAILED after {seconds:.0f} s\n{error}", file=sys.stderr)
                continue
            stage = cache.add_nb_to_project(str(path))
            cache.cache_notebook_bundle(CacheBundleIn(nb, stage.uri, data={"execution_seconds": seconds}),
                                        check_validity=False, overwrite=True)
            print(f"  {name}: executed in {seconds:.0f} s")
    finally:
        if pool:
            pool.close()
            pool.join()
    wall = time.perf_counter() - t0
    print(f"done in {wall:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else ""))
    if todo:
        _record(wall, jobs, threads, len(todo))
    return 1 if failed else 0


def _record(wall: float, jobs: int, threads: int, n: int) -> None:
    """Add this run's wall time to ``$MMTUTOR_TIMING_FILE`` (nothing without the variable)."""
    sys.path.insert(0, str(ROOT))
    from mmtutor import runtime
    runtime.record_chapters_run({"seconds": round(wall, 1), "jobs": jobs, "threads_per_job": threads, "chapters": n})


if __name__ == "__main__":
    sys.exit(main())
