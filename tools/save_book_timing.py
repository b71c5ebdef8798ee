"""Keep a ``make book`` run's chapter times as bench/results/book_timing.json (a CPU without AMX) or book_timing_amx.json (with AMX).

    /usr/bin/time -f %e make book 2> wall.txt      # in a fresh clone, with an empty MMTUTOR_CACHE
    python tools/save_book_timing.py _build/timing.json --wall "$(tail -1 wall.txt)" --cache "empty model cache"

The chapters' seconds and the machine (CPU model, AMX yes/no, precision, threads, torch) come
from the file the build wrote (``mmtutor.runtime.record_chapter``); ``--wall`` adds the whole
command's wall time, install included. tools/results_table.py puts it in the README.
"""
import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from common import commit  # noqa: E402  (the benchmarks' commit stamp)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("timing", type=Path, help="the _build/timing.json a make book wrote")
    ap.add_argument("--wall", type=float, required=True, help="wall seconds of the whole make book")
    ap.add_argument("--cache", default="empty model cache", help="the model cache the build started from")
    ap.add_argument("--out", type=Path, default=None,
                    help="default: bench/results/book_timing.json, or book_timing_amx.json when the build's CPU has AMX")
    args = ap.parse_args()
    if not args.timing.is_file():
        print(f"error: {args.timing} does not exist (make book writes _build/timing.json)", file=sys.stderr)
        return 2
    data = json.loads(args.timing.read_text())
    if not data.get("chapters"):
        print(f"error: {args.timing} records no chapter", file=sys.stderr)
        return 2
    if args.wall <= 0:
        print("error: --wall must be a positive number of seconds", file=sys.stderr)
        return 2
    if args.out is None:
        amx = data.get("machine", {}).get("amx")
        args.out = ROOT / "bench" / "results" / ("book_timing_amx.json" if amx else "book_timing.json")
    data.update({"make_book_wall_seconds": round(args.wall, 1), "model_cache": args.cache,
                 "script": "tools/save_book_timing.py"})
    if data.get("chapters_run"):              # the machine's thread count is whichever process wrote last;
        data["machine"].pop("torch_threads", None)   # the models' and chapters' rows carry their own
    # the commit the build ran at: the checkout that holds _build/timing.json
    data.setdefault("machine", {})["commit"] = commit(args.timing.resolve().parent.parent)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
