"""`segedge bench`: latency, memory, size, accuracy (and power on Jetson) of every model × target, in one run.

- runner.py     `run_bench(BenchConfig)`: exports what is missing, times targets in rotating blocks, evaluates accuracy
- timing.py     `time_blocks`: the rotating-block timing loop (also used by the study scripts in benchmarks/)
- stats.py      latency statistics and mIoU drop (pure functions); accuracy itself: segedge.evaluation
- artifacts.py  which export folder serves each model × size; reuse or export
- targets.py    opening the PyTorch reference or an exported target (shared with the memory probe)
- memprobe.py   peak RSS of one target in a fresh process
- tegrastats.py Jetson power: line parser and background sampler
- machine.py    CPU, cores, OS, library versions, git commit
- report.py     results.json / .csv / .md and the terminal table; plots.py: PNG figures; schema.py: key checks
"""

from __future__ import annotations

from typing import Any

__all__ = ["BenchConfig", "check_results", "latency_stats", "miou_drop", "parse_tegrastats_line", "run_bench",
           "write_outputs"]

_WHERE = {"BenchConfig": "runner", "run_bench": "runner", "check_results": "schema", "latency_stats": "stats",
          "miou_drop": "stats", "parse_tegrastats_line": "tegrastats", "write_outputs": "report"}


def __getattr__(name: str) -> Any:
    # Lazy, so `segedge bench --help` and the tegrastats parser do not import the runtimes.
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(name)
