"""Benchmark results carry no machine paths: the committed files under benchmarks/results, and what the runner and
the study scripts write (`portable_path`: relative to the current directory when inside it, else as typed)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from segedge.benchmarks.targets import portable_path, portable_spec

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
MACHINE_ROOTS = ("/work", "/root", "/home", "/tmp")
# an absolute path under one of those roots, at the start of a value or after a separator (space, quote, ':', …)
MACHINE_PATH = re.compile(r"(?:^|[\s\"'`(=,:;])(/(?:work|root|home|tmp))(?:/|\b)")
TEXT_SUFFIXES = {".json", ".md", ".csv", ".txt"}


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def _result_files() -> list[Path]:
    return sorted(p for p in RESULTS.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)


def test_there_are_committed_results():
    assert any(p.suffix == ".json" for p in _result_files())


@pytest.mark.parametrize("path", _result_files(), ids=lambda p: str(p.relative_to(RESULTS)))
def test_committed_results_carry_no_machine_paths(path: Path):
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        bad = [s for s in _strings(json.loads(text)) if s.startswith(MACHINE_ROOTS)]
        assert not bad, f"{path.name}: absolute machine paths {bad[:3]}"
    hits = [text[max(0, m.start() - 20):m.end() + 40] for m in MACHINE_PATH.finditer(text)]
    assert not hits, f"{path.name}: absolute machine paths near {hits[:3]}"


def test_portable_path(tmp_path: Path, monkeypatch):
    work = tmp_path / "repo"
    (work / "segedge" / "weights").mkdir(parents=True)
    (tmp_path / "shared" / "camvid").mkdir(parents=True)
    monkeypatch.chdir(work)
    cwd = os.getcwd()
    # inside the current directory: relative to it
    assert portable_path(work / "segedge" / "weights" / "b0.safetensors") == os.path.join("segedge", "weights",
                                                                                          "b0.safetensors")
    assert portable_path(cwd) == "."
    # typed as the current directory plus a relative part ($REPO/../shared/…): that relative part
    assert portable_path(f"{cwd}/../shared/camvid") == os.path.join("..", "shared", "camvid")
    # relative paths stay as typed; absolute paths elsewhere stay as typed, never resolved
    assert portable_path("../shared/camvid") == "../shared/camvid"
    assert portable_path(Path("exports/b0-384x512")) == os.path.join("exports", "b0-384x512")
    assert portable_path("/opt/data/camvid") == "/opt/data/camvid"
    # command-line values: DATASET:ROOT:SPLIT specs and comma-separated lists
    assert portable_spec(f"camvid:{cwd}/../shared/camvid:train") == "camvid:../shared/camvid:train"
    assert portable_spec(f"{cwd}/a,{cwd}/b,/opt/c") == "a,b,/opt/c"
    assert portable_spec("--data") == "--data" and portable_spec("384x512") == "384x512"
