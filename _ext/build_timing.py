"""Sphinx extension: the preface's table of chapter run times, from the build that made the page.

Every chapter's last cell calls ``mmtutor.runtime.record_chapter`` which, during ``make book``
(where ``MMTUTOR_TIMING_FILE`` names a JSON file), adds the chapter's seconds, device, profile
and precision, and the machine (CPU model, AMX yes/no), to that file. Chapters are executed
while Sphinx *reads* the documents; this extension fills the ``build-timing`` directive's
placeholder when the pages are *written*, after every chapter has run, so the table always
shows the times of the outputs printed on the pages. A chapter whose outputs came from the
execution cache keeps the time of the run that produced them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from docutils import nodes
from sphinx.util.docutils import SphinxDirective


class timing_placeholder(nodes.General, nodes.Element):
    pass


class BuildTiming(SphinxDirective):
    has_content = False

    def run(self):
        return [timing_placeholder()]


def _timing_file(app) -> Path:
    return Path(os.environ.get("MMTUTOR_TIMING_FILE") or Path(app.outdir).parent / "timing.json")


def _table(rows: list[list[str]], header: list[str]) -> nodes.table:
    table = nodes.table(classes=["build-timing"])
    group = nodes.tgroup(cols=len(header))
    table += group
    for _ in header:
        group += nodes.colspec(colwidth=1)
    head = nodes.thead()
    group += head
    body = nodes.tbody()
    group += body
    for cells, parent in [(header, head)] + [(r, body) for r in rows]:
        row = nodes.row()
        for c in cells:
            entry = nodes.entry()
            entry += nodes.paragraph(text=c)
            row += entry
        parent += row
    return table


def _threads(n: int) -> str:
    return f"{n} thread{'' if n == 1 else 's'}"


def table_rows(data: dict, titles: dict[str, str]) -> list[list[str]]:
    """The table's rows from a timing file's contents: the training step, one row per chapter,
    the chapters' wall time when they ran several at a time, and the total (training plus the
    chapters' wall time, or plus the sum of chapter times when they ran one after another)."""
    chapters = data.get("chapters", {})
    rows, total = [], 0.0
    models = data.get("models")
    if models:                                        # `python -m mmtutor prepare`, before the chapters
        total += models["seconds"]
        trained = [m for m, v in models.get("models", {}).items() if not v.get("cached")]
        what = (f"training the book's models first ({len(trained)} trained, "
                f"{models['jobs']} processes x {_threads(models['threads_per_job'])})")
        rate = f"{models['matmul_gflops']:.0f}" if "matmul_gflops" in models else "not recorded"
        rows.append([what, f"{models['seconds']:.0f} s",
                     f"{models['device']}, {models['profile']}, {models.get('precision', '?')}", rate])
    run = data.get("chapters_run")                    # tools/execute_chapters.py: several at a time
    for doc in sorted(chapters):                      # notebooks are numbered in reading order
        c = chapters[doc]
        total += 0.0 if run else c["seconds"]
        rate = f"{c['matmul_gflops']:.0f}" if "matmul_gflops" in c else "not recorded"
        threads = f", {_threads(c['torch_threads'])}" if "torch_threads" in c else ""
        rows.append([titles[doc], f"{c['seconds']:.0f} s",
                     f"{c['device']}, {c['profile']}, {c['precision']}{threads}", rate])
    if run:
        total += run["seconds"]
        rows.append([f"the chapters above, {run['jobs']} at a time (their times overlap)",
                     f"{run['seconds']:.0f} s", f"{run['jobs']} kernels x {_threads(run['threads_per_job'])}", ""])
    rows.append(["models and chapters" if models else "all chapters", f"{total:.0f} s ({total / 60:.1f} min)", "", ""])
    return rows


def fill(app, doctree, docname):
    for node in list(doctree.findall(timing_placeholder)):
        path = _timing_file(app)
        if not path.is_file():
            node.replace_self(nodes.paragraph(text="(No chapter timings were recorded by this build: it ran without "
                                                   "MMTUTOR_TIMING_FILE; `make book` sets it.)"))
            continue
        data = json.loads(path.read_text())
        chapters = data.get("chapters", {})
        titles = {d: app.env.titles[d].astext() if d in app.env.titles else d for d in chapters}
        rows = table_rows(data, titles)
        m = data.get("machine", {})
        amx = "with AMX" if m.get("amx") else "without AMX"
        caption = nodes.paragraph(text=(f"Measured by the build that produced this page, on {m.get('cpu', '?')} "
                                        f"({amx}), {m.get('cores', '?')} cores, "
                                        f"torch {m.get('torch', '?')}, {data.get('date', '')}. The last "
                                        "column is how fast the machine multiplied 1024 x 1024 float32 matrices, with "
                                        "the row's threads, as the chapter ended (GFLOP/s, "
                                        "mmtutor.runtime.matmul_rate; another chapter may have run beside it): a cloud "
                                        "machine's speed drifts with the load of others on its host, and chapter "
                                        "times move with it."))
        node.replace_self([_table(rows, ["chapter", "run time", "device, profile, precision", "matmul GFLOP/s"]),
                           caption])


def setup(app):
    app.add_node(timing_placeholder)
    app.add_directive("build-timing", BuildTiming)
    app.connect("doctree-resolved", fill)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
