"""Where a benchmark's results go: its section of BENCHMARKS.md, and its verdicts on the targets
earlier issues set plus its headline figures, kept in ``bench/results/summary.json``.

BENCHMARKS.md's Targets table and README.md's figures are both rewritten from that record
every time any benchmark publishes, so the two cannot disagree, whichever benchmark ran last.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from _common import README_MD, RESULTS, now_utc, write_section

SUMMARY_JSON = RESULTS / "summary.json"
ORDER = (
    "span_cost",
    "import_cost",
    "e2e_overhead",
    "scaling",
    "extension_start",
    "extension_throughput",
    "managed_instances",
    "cpu_share",
    "otel_spans",
    "event_economy",
    "propagation",
    "layer_size",
    "emulator",
    "make_bench",
)
"""The order of the Targets table's rows and of the README's figures."""
SCRIPTS = {"make_bench": "bench/run_all.py"}
WIDTH = 96
"""README.md's line length."""


@dataclass(frozen=True)
class Target:
    issue: int
    what: str
    figure: str
    met: bool


def verdict(met: bool) -> str:
    return "MET" if met else "MISSED"


def publish(name: str, body: str | None, targets: Sequence[Target] = (), summary: Sequence[str] = ()) -> None:
    """Rewrite section ``name`` of BENCHMARKS.md with ``body`` (None: no section), record the
    targets and the README lines (markdown bullets' text) under ``name``, and rewrite the Targets
    table and the README's figures from everything recorded."""
    if body is not None:
        write_section(name, body)
    record = _load()
    record[name] = {"date": now_utc(), "targets": [asdict(t) for t in targets], "summary": list(summary)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    SUMMARY_JSON.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    write_section("targets", _targets_table(record))
    write_section("bench-summary", _readme_figures(record), README_MD)


def _load() -> dict[str, Any]:
    try:
        loaded: dict[str, Any] = json.loads(SUMMARY_JSON.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    return loaded


def _ordered(record: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return sorted(record.items(), key=lambda item: ORDER.index(item[0]) if item[0] in ORDER else len(ORDER))


def _script(name: str) -> str:
    return SCRIPTS.get(name, f"bench/{name}.py")


def _targets_table(record: dict[str, Any]) -> str:
    rows = [
        "| Issue | Target | Figure | Verdict | From |",
        "|---:|---|---|---|---|",
    ]
    met = total = 0
    for name, entry in _ordered(record):
        for target in entry["targets"]:
            total += 1
            met += bool(target["met"])
            rows.append(
                f"| {target['issue']} | {target['what']} | {target['figure']} | **{verdict(target['met'])}** "
                f"| `{_script(name)}`, {entry['date']} |"
            )
    return "\n".join([f"{met} of {total} targets met.", "", *rows])


def _bullet(text: str) -> str:
    return textwrap.fill(
        text + ".", WIDTH, initial_indent="- ", subsequent_indent="  ", break_on_hyphens=False, break_long_words=False
    )


def _readme_figures(record: dict[str, Any]) -> str:
    lines = [
        "Measured by `make bench` on a shared 2-core x86_64 machine, CPython 3.11; absolute times hold for",
        "that machine only, ratios travel better. [BENCHMARKS.md](BENCHMARKS.md) has every table, the",
        "method, the exact commands and the targets (MET/MISSED). This list is rewritten by the same runs.",
        "",
    ]
    for _, entry in _ordered(record):
        lines += [_bullet(line) for line in entry["summary"]]
    met = sum(bool(t["met"]) for entry in record.values() for t in entry["targets"])
    total = sum(len(entry["targets"]) for entry in record.values())
    missed = [t["what"] for _, entry in _ordered(record) for t in entry["targets"] if not t["met"]]
    verdicts = f"Targets set by earlier issues: {met} of {total} met."
    if missed:
        verdicts += " Missed: " + "; ".join(missed) + "."
    lines += ["", textwrap.fill(verdicts, WIDTH, break_on_hyphens=False, break_long_words=False)]
    lines += ["", "![Response latency and billed time per invocation](bench/results/overhead.png)"]
    return "\n".join(lines)
