"""Jetson power from `tegrastats`: a line parser and a background sampler.

tegrastats prints one line per interval. Power rails appear as `NAME current/average`, in mW:
  JetPack 5/6 (Orin):      "... VDD_IN 4125mW/4125mW VDD_CPU_GPU_CV 823mW/823mW VDD_SOC 1236mW/1236mW"
  JetPack 4 (Nano, TX2):   "... POM_5V_IN 3148/3148 POM_5V_GPU 0/0 POM_5V_CPU 443/443"
  JetPack 4 (Xavier):      "... GPU 0/0 CPU 207/207 SOC 828/828 CV 0/0 VDDRQ 414/414 SYS5V 2313/2313"
Memory fields (`RAM 2448/7772MB`, `SWAP 0/3886MB`, `IRAM 0/252kB`) have a unit right after the number and are not
rails. The board's input power is the first rail found among TOTAL_RAILS; boards without one (AGX Orin, Xavier)
report the sum of their rails, and the result says which was used.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

# A rail: NAME, a number with optional mW, '/', a number with optional mW, and no other unit glued on.
_RAIL_RE = re.compile(r"\b([A-Z][A-Z0-9_]*)\s+(\d+)(?:mW)?/(\d+)(?:mW)?(?![\w/])")
_RAM_RE = re.compile(r"\bRAM\s+(\d+)/(\d+)MB")
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN", "VIN_SYS_5V0_IN", "VDD_IN_SYS")
NOT_RAILS = ("RAM", "SWAP", "IRAM", "LFB")


@dataclass
class TegraSample:
    """One parsed tegrastats line."""

    time: float  # time.perf_counter() when the line was read (0 for parsed text)
    rails_mw: dict[str, tuple[int, int]]  # name → (current, running average) in mW
    ram_used_mb: int | None = None
    ram_total_mb: int | None = None

    def total_mw(self) -> tuple[float, str] | None:
        """(input power in mW, how it was obtained): the board's input rail, else the sum of all rails."""
        for name in TOTAL_RAILS:
            if name in self.rails_mw:
                return float(self.rails_mw[name][0]), name
        if not self.rails_mw:
            return None
        return float(sum(v[0] for v in self.rails_mw.values())), "sum of " + "+".join(sorted(self.rails_mw))


def parse_tegrastats_line(line: str, t: float = 0.0) -> TegraSample:
    """Parse one tegrastats line into rails (mW) and RAM; lines without rails give an empty `rails_mw`."""
    rails = {}
    for m in _RAIL_RE.finditer(line):
        name = m.group(1)
        if name in NOT_RAILS:
            continue
        rails[name] = (int(m.group(2)), int(m.group(3)))
    ram = _RAM_RE.search(line)
    return TegraSample(t, rails, int(ram.group(1)) if ram else None, int(ram.group(2)) if ram else None)


def tegrastats_path() -> str | None:
    """Path of the tegrastats binary, or None off Jetson."""
    return shutil.which("tegrastats")


@dataclass
class TegrastatsSampler:
    """Run `tegrastats --interval MS` in the background and keep every parsed line with its arrival time."""

    interval_ms: int = 100
    executable: str | None = None
    samples: list[TegraSample] = field(default_factory=list)
    _proc: Any = None
    _thread: Any = None
    _lock: Any = field(default_factory=threading.Lock)

    def start(self) -> "TegrastatsSampler":
        """Start the process and the reader thread."""
        exe = self.executable or tegrastats_path()
        if exe is None:
            raise RuntimeError("tegrastats not found (only on NVIDIA Jetson)")
        self._proc = subprocess.Popen([exe, "--interval", str(int(self.interval_ms))], stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self._thread = threading.Thread(target=self._read, name="tegrastats-reader", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            s = parse_tegrastats_line(line, time.perf_counter())
            if s.rails_mw:
                with self._lock:
                    self.samples.append(s)

    def stop(self) -> None:
        """Stop tegrastats and the reader."""
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def window(self, t0: float, t1: float) -> list[TegraSample]:
        """Samples read between perf_counter times t0 and t1."""
        with self._lock:
            return [s for s in self.samples if t0 <= s.time <= t1]

    def wait_for_samples(self, n: int, timeout: float = 5.0) -> bool:
        """Block until at least n samples arrived (tegrastats needs a moment to start)."""
        end = time.perf_counter() + timeout
        while time.perf_counter() < end:
            with self._lock:
                if len(self.samples) >= n:
                    return True
            time.sleep(0.02)
        return False

    def __enter__(self) -> "TegrastatsSampler":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def power_summary(samples: Sequence[TegraSample], seconds: float, frames: int,
                  idle: Sequence[TegraSample] = ()) -> dict[str, Any] | None:
    """Mean input power over a run and the energy per frame (mJ) = mean W × seconds / frames × 1000.

    `idle` samples (taken before the run) give the idle power and an idle-subtracted energy per frame.
    """
    totals = [t for t in (s.total_mw() for s in samples) if t is not None]
    if not totals or frames <= 0 or seconds <= 0:
        return None
    mean_mw = sum(t[0] for t in totals) / len(totals)
    out: dict[str, Any] = {
        "rail": totals[0][1],
        "samples": len(totals),
        "mean_mw": mean_mw,
        "energy_mj_per_frame": mean_mw / 1000.0 * seconds / frames * 1000.0,
        "seconds": seconds,
        "frames": frames,
    }
    idle_totals = [t[0] for t in (s.total_mw() for s in idle) if t is not None]
    if idle_totals:
        idle_mw = sum(idle_totals) / len(idle_totals)
        out["idle_mw"] = idle_mw
        out["energy_above_idle_mj_per_frame"] = max(0.0, mean_mw - idle_mw) / 1000.0 * seconds / frames * 1000.0
    return out


__all__ = ["TOTAL_RAILS", "TegraSample", "TegrastatsSampler", "parse_tegrastats_line", "power_summary",
           "tegrastats_path"]
