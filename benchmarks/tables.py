"""Write the tables of docs/performance.md from the benchmarks' JSON results.

Every table of that page sits between two marker comments::

    <!-- table: architectures -->
    ...generated markdown...
    <!-- /table -->

and is generated from ``benchmarks/results/<name>.json``: pytest-benchmark's
``--benchmark-json`` output, with the block that benchmarks/conftest.py adds under
``"occlusion_probe"`` (CPU, torch, threads, date, command, load average, forward limits).
Each row's figures come from its ``extra_info`` (see ``Harness.record``).

    python benchmarks/tables.py            # rewrite the tables in docs/performance.md
    python benchmarks/tables.py --check    # exit 1 if the page differs from its results

tests/test_benchmark_tables.py checks that the page holds exactly what this script writes.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOCUMENT = ROOT / "docs" / "performance.md"
MARKER = re.compile(r"(<!-- table: ([\w-]+) -->\n)(.*?)(<!-- /table -->)", re.S)

Result = dict[str, Any]


def load(name: str, folder: Path = RESULTS) -> Result:
    """The JSON result `name` (``folder/<name>.json``); a missing file raises
    FileNotFoundError naming it."""
    path = folder / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"no benchmark result {path} for the table {name!r}")
    data: Result = json.loads(path.read_text())
    return data


def _number(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value:.0%}"


def machine(data: Result) -> str:
    """One paragraph: where, when and how the result was measured."""
    info = data["occlusion_probe"]
    cpu = info["cpu"]
    flags = ", ".join(cpu["flags_of_note"]) or "none of note"
    start, end = info["load_average_at_start"], info["load_average_at_end"]
    load = (
        f"load average (1 min) {start[0]:.2f} at the start and {end[0]:.2f} at the end"
        if start is not None
        else f"load average (1 min) {end[0]:.2f} at the end"
    )
    return (
        f"Measured on {cpu['model_name']} ({cpu['cpu_count']} CPUs; flags: {flags}), "
        f"torch {info['torch']}, {info['threads']} threads, device {info['device']}, "
        f"{info['date']}, {load}. Command: `{info['command']}`."
    )


def _rows(data: Result) -> list[Result]:
    return [benchmark["extra_info"] for benchmark in data["benchmarks"]]


def _patches(group: str) -> str:
    """The patch size of an architecture workload named '... 3x224x224, N=1, 14x14 grid x 2
    fills' (the side over the grid)."""
    side = re.search(r"\d+x(\d+)x\d+, N=", group)
    grid = re.search(r"(\d+)x\d+ grid", group)
    if side is None or grid is None:
        raise ValueError(f"cannot read the image side and grid from the group {group!r}")
    patch = int(side.group(1)) // int(grid.group(1))
    return f"{patch}x{patch}"


def architectures(data: Result) -> str:
    """One line per model and patch size: the dense and incremental sweeps' ratios to the
    forward limit, the incremental plan's bounds and its prepare time."""
    limits = data["occlusion_probe"]["forward_limits"]
    by_group: dict[str, dict[str, Result]] = {}
    for row in _rows(data):
        by_group.setdefault(row["group"], {})[row["key"]] = row
    lines = [
        '| model | patches | forward limit (scan) | dense `"auto"` | incremental '
        "| FLOP bound | of bound | traffic bound | prepare s | incremental without prepare |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    previous = ""
    for group, rows in by_group.items():
        title = group.split(", N=")[0]
        name = re.sub(r" \d+x\d+x\d+$", "", title)
        limit = limits.get(title)
        scan = (
            ""
            if limit is None
            else f"{limit['images_per_s']:.1f} images/s, batch {limit['batch_size']}, "
            f"{limit['memory_format'].replace('_', '-')}"
        )
        dense, incremental = rows.get("dense", {}), rows.get("incremental", {})
        lines.append(
            f"| {name if name != previous else ''} | {_patches(group)} "
            f"| {scan if name != previous else ''} "
            f"| {_number(dense.get('ratio'), 3)} | {_number(incremental.get('ratio'))} "
            f"| {_number(incremental.get('flop_bound'))} "
            f"| {_percent(incremental.get('flop_bound_fraction'))} "
            f"| {_number(incremental.get('traffic_bound'))} "
            f"| {_number(incremental.get('prepare_seconds'), 1)} "
            f"| {_number(incremental.get('ratio_without_prepare'))} |"
        )
        previous = name
    return "\n".join(lines)


def grouped(data: Result) -> str:
    """One table per group (workload): method, images, seconds, images/s, ratio, reference,
    and the FLOP and traffic bounds of incremental rows."""
    groups: dict[str, list[Result]] = {}
    for row in _rows(data):
        groups.setdefault(row["group"], []).append(row)
    parts = []
    for group, rows in groups.items():
        # The bound columns only where a row of the group has them (incremental sweeps).
        bounds = any("flop_bound" in row for row in rows)
        head = "| method | images | s (min) | images/s | ratio | ratio to |"
        rule = "| --- | ---: | ---: | ---: | ---: | --- |"
        lines = [
            f"**{group}**",
            "",
            head + (" FLOP bound | traffic bound |" if bounds else ""),
            rule + (" ---: | ---: |" if bounds else ""),
        ]
        for row in rows:
            line = (
                f"| {row['method']} | {row['images']} | {row['seconds']:.3f} "
                f"| {row['images_per_s']:,.1f} | {row['ratio']:.3f} | {row['reference']} |"
            )
            if bounds:
                line += f" {_number(row.get('flop_bound'))} | {_number(row.get('traffic_bound'))} |"
            lines.append(line)
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


#: The layout of each table, by name; names not listed here get `grouped`.
LAYOUTS: dict[str, Callable[[Result], str]] = {"architectures": architectures}


def render(name: str, folder: Path = RESULTS) -> str:
    """The markdown of table `name`: the machine paragraph, then the table(s)."""
    data = load(name, folder)
    layout = LAYOUTS.get(name, grouped)
    return f"{machine(data)}\n\n{layout(data)}\n"


def regenerate(text: str, folder: Path = RESULTS) -> str:
    """`text` with every marked table replaced by what its JSON result gives."""

    def replace(match: re.Match[str]) -> str:
        return f"{match.group(1)}\n{render(match.group(2), folder)}\n{match.group(4)}"

    return MARKER.sub(replace, text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on drift")
    parser.add_argument("--document", type=Path, default=DOCUMENT)
    parser.add_argument("--results", type=Path, default=RESULTS)
    options = parser.parse_args(argv)
    text = options.document.read_text()
    updated = regenerate(text, options.results)
    if options.check:
        if updated != text:
            print(f"{options.document} differs from {options.results}: run benchmarks/tables.py")
            return 1
        return 0
    options.document.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
