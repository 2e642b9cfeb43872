"""The layer's size, zipped and extracted, by part (`make layer` must have built it).

.venv/bin/python bench/layer_size.py [--write]
"""

from __future__ import annotations

import argparse
import zipfile

from _common import ROOT, run_description, write_section

LAYER = ROOT / "build" / "layer"
ZIP = ROOT / "build" / "posthog-lambda-layer.zip"
REFERENCE_MB = 7.0
"""Datadog's Lambda extension, for scale."""


def size(paths: list) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="also rewrite the layer_size section of BENCHMARKS.md")
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
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section("layer_size", text)


if __name__ == "__main__":
    main()
