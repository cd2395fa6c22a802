"""docs/performance.md's tables are what benchmarks/tables.py writes from the committed JSON
results in benchmarks/results/, so the page cannot drift from its data."""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tables() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tables", ROOT / "benchmarks" / "tables.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("tables", module)
    spec.loader.exec_module(module)
    return module


tables = _tables()

RESULT: dict[str, Any] = {
    "benchmarks": [
        {
            "extra_info": {
                "group": "Net 3x64x64, N=1, 4x4 grid x 2 fills",
                "key": "dense",
                "method": 'sweep(engine="dense")',
                "images": 32,
                "seconds": 2.0,
                "images_per_s": 16.0,
                "ratio": 0.975,
                "reference": "forward limit",
            }
        },
        {
            "extra_info": {
                "group": "Net 3x64x64, N=1, 4x4 grid x 2 fills",
                "key": "incremental",
                "method": 'sweep(engine="incremental")',
                "images": 32,
                "seconds": 0.5,
                "images_per_s": 64.0,
                "ratio": 3.9,
                "reference": "forward limit",
                "flop_bound": 5.2,
                "flop_bound_fraction": 0.75,
                "traffic_bound": 4.1,
                "prepare_seconds": 0.25,
                "ratio_without_prepare": 7.8,
            }
        },
    ],
    "occlusion_probe": {
        "cpu": {"model_name": "Some CPU", "flags_of_note": ["avx2"], "cpu_count": 2},
        "torch": "2.13.0+cpu",
        "threads": 2,
        "device": "cpu",
        "date": "2026-12-07T20:00:00+00:00",
        "command": "python -m pytest benchmarks/test_x.py",
        "load_average_at_start": [1.5, 1.0, 0.5],
        "load_average_at_end": [2.5, 1.0, 0.5],
        "forward_limits": {
            "Net 3x64x64": {
                "batch_size": 8,
                "memory_format": "channels_last",
                "images_per_s": 16.4,
                "scan": [],
            }
        },
    },
}


def _write(folder: Path, name: str, result: dict[str, Any]) -> None:
    (folder / f"{name}.json").write_text(json.dumps(result))


def test_performance_page_matches_its_results() -> None:
    text = tables.DOCUMENT.read_text()
    names = [match.group(2) for match in tables.MARKER.finditer(text)]
    assert names, "docs/performance.md has no generated table"
    assert tables.regenerate(text) == text, "run python benchmarks/tables.py"


def test_every_committed_result_has_a_table() -> None:
    text = tables.DOCUMENT.read_text()
    names = {match.group(2) for match in tables.MARKER.finditer(text)}
    committed = {path.stem for path in tables.RESULTS.glob("*.json")}
    assert committed == names


def test_architectures_table_from_a_result(tmp_path: Path) -> None:
    _write(tmp_path, "architectures", RESULT)
    text = "before\n<!-- table: architectures -->\nstale\n<!-- /table -->\nafter\n"
    table = tables.regenerate(text, tmp_path)
    assert "stale" not in table
    assert table.startswith("before\n<!-- table: architectures -->\n\nMeasured on Some CPU")
    assert table.endswith("<!-- /table -->\nafter\n")
    assert "load average (1 min) 1.50 at the start and 2.50 at the end" in table
    row = "| Net | 16x16 | 16.4 images/s, batch 8, channels-last | 0.975 | 3.90 | 5.20 | 75% "
    assert row + "| 4.10 | 0.2 | 7.80 |" in table
    assert tables.regenerate(table, tmp_path) == table


def test_grouped_table_from_a_result(tmp_path: Path) -> None:
    _write(tmp_path, "sweep", RESULT)
    table = tables.render("sweep", tmp_path)
    assert "**Net 3x64x64, N=1, 4x4 grid x 2 fills**" in table
    assert '| sweep(engine="incremental") | 32 | 0.500 | 64.0 | 3.900 | forward limit ' in table
    assert "| 5.20 | 4.10 |" in table
    dense_only = copy.deepcopy(RESULT)
    del dense_only["benchmarks"][1]
    _write(tmp_path, "sweep", dense_only)
    assert "FLOP bound" not in tables.render("sweep", tmp_path)


def test_check_reports_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path, "architectures", RESULT)
    document = tmp_path / "page.md"
    document.write_text("<!-- table: architectures -->\nold\n<!-- /table -->\n")
    arguments = ["--document", str(document), "--results", str(tmp_path)]
    assert tables.main([*arguments, "--check"]) == 1
    assert "differs" in capsys.readouterr().out
    assert tables.main(arguments) == 0
    assert tables.main([*arguments, "--check"]) == 0
    changed = copy.deepcopy(RESULT)
    changed["benchmarks"][0]["extra_info"]["ratio"] = 0.5
    _write(tmp_path, "architectures", changed)
    assert tables.main([*arguments, "--check"]) == 1


def test_missing_result_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothing\.json"):
        tables.regenerate("<!-- table: nothing -->\n<!-- /table -->", tmp_path)
