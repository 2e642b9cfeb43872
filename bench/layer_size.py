"""The layer's size, zipped and extracted, by part (`make layer` must have built it).

.venv/bin/python bench/layer_size.py [--write]
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from _common import ROOT, arguments, run_description
from _publish import Target, publish, verdict

LAYER = ROOT / "build" / "layer"
ZIP = ROOT / "build" / "posthog-lambda-layer.zip"
REFERENCE_MB = 7.0
"""Datadog's Lambda extension, for scale."""
TARGET_SHARE = 0.25
"""Issue 5 asks for "far lower" than Datadog's ~7 MB; read here as a quarter of it at most, zipped."""


def size(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file())


def main() -> None:
    parser = arguments(__doc__, "the layer_size section of BENCHMARKS.md")
    args = parser.parse_args()
    if not ZIP.exists():
        raise SystemExit("build the layer first: make layer")
    parts = {
        "extensions/ (launcher)": list((LAYER / "extensions").rglob("*")),
        "posthog-lambda-extension/ (extension + its copy of the library)": list(
            (LAYER / "posthog-lambda-extension").rglob("*")
        ),
        "python/ (the library for the function)": list((LAYER / "python").rglob("*")),
    }
    with zipfile.ZipFile(ZIP) as zipped:
        files = len(zipped.namelist())
    total = size(list(LAYER.rglob("*")))
    zipped_bytes = ZIP.stat().st_size
    lines = [
        run_description(),
        "",
        "| Part | extracted KB |",
        "|---|---:|",
        *(f"| {name} | {size(paths) / 1024:.0f} |" for name, paths in parts.items()),
        f"| whole layer ({files} files, with bytecode for the building Python) | {total / 1024:.0f} |",
        "",
        f"zipped: {zipped_bytes / 1024:.0f} KB ({zipped_bytes / (REFERENCE_MB * 1024 * 1024):.1%} of the ~7 MB of "
        "Datadog's extension); extracted: "
        f"{total / 1024:.0f} KB",
    ]
    share = zipped_bytes / (REFERENCE_MB * 1024 * 1024)
    met = share <= TARGET_SHARE
    lines.append(
        f"target: far lower than Datadog's ~7 MB (at most {TARGET_SHARE:.0%} of it, zipped): "
        f"{verdict(met)} ({share:.1%})"
    )
    text = "\n".join(lines)
    print(text)
    if args.write:
        summary = [
            f"the layer is {zipped_bytes / 1024:,.0f} KB zipped ({share:.0%} of the ~7 MB of Datadog's Lambda "
            f"extension), {total / 1024:,.0f} KB extracted"
        ]
        targets = [
            Target(
                5,
                "layer far smaller than Datadog's ~7 MB extension (at most a quarter, zipped)",
                f"{zipped_bytes / 1024:,.0f} KB, {share:.1%}",
                met,
            )
        ]
        publish("layer_size", text, targets, summary)


if __name__ == "__main__":
    main()
