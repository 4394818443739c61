"""Benchmark building blocks on synthetic inputs: latency statistics, mIoU drop, agreement, round-robin order,
tegrastats parsing and sampling, results schema, CSV/Markdown, plots, isolated peak RSS."""

from __future__ import annotations

import copy
import csv
import io
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from segedge.benchmarks.report import CSV_COLUMNS, flat_row, markdown, to_csv
from segedge.benchmarks.runner import Entry, parse_targets, time_entries
from segedge.benchmarks.schema import check_results
from segedge.benchmarks.stats import latency_stats, miou_drop, ns_to_ms
from segedge.benchmarks.tegrastats import TegrastatsSampler, parse_tegrastats_line, power_summary
from segedge.benchmarks.timing import timing_rounds
from segedge.errors import SegedgeError
from segedge.evaluation import Agreement

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------- statistics
def test_latency_stats_hand_checked():
    s = latency_stats([30.0, 10.0, 100.0, 20.0, 40.0])  # order must not matter
    assert s["n"] == 5
    assert s["mean_ms"] == pytest.approx(40.0)
    assert s["p50_ms"] == pytest.approx(30.0)  # sorted 10 20 30 40 100, rank 2
    assert s["p90_ms"] == pytest.approx(76.0)  # rank 3.6: 40 + 0.6 × (100 − 40)
    assert s["p99_ms"] == pytest.approx(97.6)  # rank 3.96: 40 + 0.96 × 60
    assert s["std_ms"] == pytest.approx(math.sqrt(1000.0))  # (900 + 400 + 100 + 0 + 3600) / 5
    assert (s["min_ms"], s["max_ms"]) == (10.0, 100.0)
    assert s["fps"] == pytest.approx(25.0)  # 1000 / 40 ms


def test_latency_stats_single_value_and_bad_input():
    s = latency_stats([5.0])
    assert s["p50_ms"] == s["p99_ms"] == s["mean_ms"] == 5.0 and s["std_ms"] == 0.0 and s["fps"] == 200.0
    for bad in ([], [1.0, -2.0], [float("nan")]):
        with pytest.raises(ValueError):
            latency_stats(bad)
    assert ns_to_ms([1_500_000, 2_000]) == [1.5, 0.002]


def test_miou_drop_arithmetic():
    assert miou_drop(0.70, 0.65) == pytest.approx(0.05)
    assert miou_drop(0.50, 0.52) == pytest.approx(-0.02)  # a target may beat the reference
    assert miou_drop(0.61, 0.61) == 0.0
    assert miou_drop(None, 0.5) is None and miou_drop(0.5, float("nan")) is None


def test_agreement_accumulates_pixels_over_frames():
    a = Agreement()
    assert a.value is None
    a.update(np.array([[0, 1], [2, 3]]), np.array([[0, 1], [2, 0]]))  # 3 of 4
    a.update(np.array([1, 1]), np.array([1, 2]))  # 1 of 2
    assert (a.agree, a.total) == (4, 6) and a.value == pytest.approx(4 / 6)
    with pytest.raises(ValueError):
        a.update(np.zeros((2, 2)), np.zeros((2, 3)))


def test_parse_targets_puts_the_reference_first_and_rejects_unknown_names():
    assert parse_targets("onnx,ort-int8,onnx") == ["torch", "onnx", "ort-int8"]
    assert parse_targets(["ORT-INT8", "torch"]) == ["torch", "ort-int8"]
    with pytest.raises(SegedgeError, match="unknown export target 'warp-drive'.*torch"):
        parse_targets("onnx,warp-drive")


# ------------------------------------------------------------------------------------------- round robin
class _FakeBackend:
    def __init__(self, name: str, log: list) -> None:
        self.name, self.log = name, log

    def run(self, x: np.ndarray) -> np.ndarray:
        self.log.append(("run", self.name, int(x[0, 0, 0])))
        return x

    def synchronize(self) -> None:
        self.log.append(("sync", self.name, None))


class _FakeSeg:
    def __init__(self, name: str, log: list) -> None:
        self.backend, self.log, self.name = _FakeBackend(name, log), log, name

    def prepare(self, frame: np.ndarray) -> np.ndarray:
        return frame.astype(np.int64)

    def predict(self, frame: np.ndarray) -> np.ndarray:
        self.log.append(("predict", self.name, int(frame[0, 0, 0])))
        return frame[:, :, 0]


def test_round_robin_rotates_order_and_uses_one_frame_per_round(tmp_path):
    frames = []
    for v in (10, 20):
        p = tmp_path / f"{v}.png"
        img = np.full((4, 6, 3), v, np.uint8)
        cv2.imwrite(str(p), img)
        frames.append((str(p), img))
    log: list = []
    entries = [Entry("m", t, (4, 6), _FakeSeg(t, log), Path("x"), None, "fp32") for t in "abc"]
    time_entries(entries, frames, warmup=1, iters=4, settle_s=0.0)
    runs = [e for e in log if e[0] == "run"]
    preds = [e for e in log if e[0] == "predict"]
    assert len(runs) == len(preds) == 3 * 5
    # every timed call waits for its own backend's device (backend.synchronize) before the clock stops
    for i, ev in enumerate(log):
        if ev[0] in ("run", "predict"):
            assert log[i + 1] == ("sync", ev[1], None)
    for r in range(5):
        rnd = runs[3 * r:3 * r + 3]
        assert [e[1] for e in rnd] == [("abc" * 2)[(r + j) % 3] for j in range(3)]  # rotated start
        assert {e[2] for e in rnd} == {(10, 20)[r % 2]}  # every target sees the same frame in a round
        assert [e[1] for e in preds[3 * r:3 * r + 3]] == [e[1] for e in rnd]
        assert {e[2] for e in preds[3 * r:3 * r + 3]} == {(10, 20)[r % 2]}  # end to end re-reads that frame
    for e in entries:  # warm-up discarded
        assert len(e.infer_ns) == len(e.e2e_ns) == 4 and all(v > 0 for v in e.infer_ns + e.e2e_ns)


def test_blocks_run_each_target_back_to_back_with_an_untimed_lead_call(tmp_path):
    p = tmp_path / "f.png"
    img = np.full((4, 6, 3), 7, np.uint8)
    cv2.imwrite(str(p), img)
    log: list = []
    entries = [Entry("m", t, (4, 6), _FakeSeg(t, log), Path("x"), None, "fp32") for t in "abc"]
    time_entries(entries, [(str(p), img)], warmup=1, iters=4, settle_s=0.0, block=3)
    assert timing_rounds(1, 4, 3) == 3
    runs = "".join(e[1] for e in log if e[0] == "run")
    preds = "".join(e[1] for e in log if e[0] == "predict")
    # warm-up round: one call each; round 1 starts at b: lead + 3 timed; round 2 starts at c: lead + the last 1
    assert runs == "abc" + "bbbbccccaaaa" + "ccaabb"
    assert preds == runs
    for e in entries:
        assert len(e.infer_ns) == len(e.e2e_ns) == 4


# ------------------------------------------------------------------------------------------- tegrastats
ORIN = ("RAM 2448/7772MB (lfb 2x4MB) SWAP 0/3886MB (cached 0MB) CPU [2%@729,1%@729,0%@729,0%@729,off,off] "
        "EMC_FREQ 0%@2133 GR3D_FREQ 0%@[305] NVENC off NVDEC off VIC off APE 200 cpu@47.75C gpu@46.468C "
        "tj@47.75C VDD_IN 4125mW/4125mW VDD_CPU_GPU_CV 823mW/823mW VDD_SOC 1236mW/1236mW")
NANO = ("RAM 1521/3964MB (lfb 219x4MB) SWAP 0/1982MB (cached 0MB) IRAM 0/252kB(lfb 252kB) "
        "CPU [5%@1479,2%@1479,1%@1479,0%@1479] EMC_FREQ 3%@1600 GR3D_FREQ 0%@921 APE 25 PLL@31C CPU@33.5C "
        "PMIC@100C GPU@31C AO@40.5C thermal@32.5C POM_5V_IN 3148/3148 POM_5V_GPU 0/0 POM_5V_CPU 443/443")
XAVIER = ("RAM 3085/31919MB (lfb 6813x4MB) SWAP 0/15959MB (cached 0MB) CPU [1%@1190,0%@1190] EMC_FREQ 0% "
          "GR3D_FREQ 0% AO@28C GPU@28.5C GPU 0/0 CPU 207/207 SOC 828/828 CV 0/0 VDDRQ 207/207 SYS5V 1628/1628")


def test_tegrastats_orin_line():
    s = parse_tegrastats_line(ORIN)
    assert s.rails_mw == {"VDD_IN": (4125, 4125), "VDD_CPU_GPU_CV": (823, 823), "VDD_SOC": (1236, 1236)}
    assert (s.ram_used_mb, s.ram_total_mb) == (2448, 7772)
    assert s.total_mw() == (4125.0, "VDD_IN")


def test_tegrastats_older_forms():
    nano = parse_tegrastats_line(NANO)
    assert nano.rails_mw == {"POM_5V_IN": (3148, 3148), "POM_5V_GPU": (0, 0), "POM_5V_CPU": (443, 443)}
    assert nano.total_mw() == (3148.0, "POM_5V_IN")  # IRAM 0/252kB and CPU@… are not rails
    xav = parse_tegrastats_line(XAVIER)
    assert set(xav.rails_mw) == {"GPU", "CPU", "SOC", "CV", "VDDRQ", "SYS5V"}
    total, how = xav.total_mw()
    assert total == 0 + 207 + 828 + 0 + 207 + 1628 and how.startswith("sum of")
    cur = parse_tegrastats_line("VDD_IN 5000mW/4500mW")
    assert cur.total_mw() == (5000.0, "VDD_IN")  # the instantaneous value, not the running average
    empty = parse_tegrastats_line("RAM 100/200MB SWAP 0/10MB")
    assert empty.rails_mw == {} and empty.total_mw() is None


def test_power_summary_energy_per_frame():
    run = [parse_tegrastats_line("VDD_IN 4000mW/4000mW"), parse_tegrastats_line("VDD_IN 5000mW/4500mW")]
    idle = [parse_tegrastats_line("VDD_IN 3000mW/3000mW")]
    p = power_summary(run, seconds=2.0, frames=100, idle=idle)
    assert p["mean_mw"] == 4500.0 and p["rail"] == "VDD_IN"
    assert p["energy_mj_per_frame"] == pytest.approx(90.0)  # 4.5 W × 2 s / 100 frames
    assert p["energy_above_idle_mj_per_frame"] == pytest.approx(30.0)  # (4.5 − 3) W × 2 s / 100
    assert power_summary([], 1.0, 10) is None


def test_sampler_reads_a_running_tegrastats(tmp_path):
    fake = tmp_path / "tegrastats"
    fake.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import sys, time
        assert sys.argv[1:] == ["--interval", "20"], sys.argv
        for i in range(1000):
            print("RAM 2448/7772MB VDD_IN %dmW/4125mW VDD_SOC 1236mW/1236mW" % (4000 + i), flush=True)
            time.sleep(0.02)
        """))
    fake.chmod(0o755)
    with TegrastatsSampler(20, executable=str(fake)) as sampler:
        assert sampler.wait_for_samples(3, timeout=30)
    n = len(sampler.samples)
    assert n >= 3 and [s.rails_mw["VDD_IN"][0] for s in sampler.samples] == list(range(4000, 4000 + n))
    times = [s.time for s in sampler.samples]
    assert times == sorted(times)
    assert sampler.window(times[1], times[-1]) == sampler.samples[1:]


# ------------------------------------------------------------------------------------------- schema, csv, md, plots
CLASSES = ["Sky", "Road", "Car"]


def _lat(base: float) -> dict:
    return latency_stats([base, base * 1.1, base * 1.3])


def fake_results() -> dict:
    """A complete results dict (as run_bench returns) for two models × two targets, with a sweep."""
    rows, sweep = [], []
    for m, (miou, ms) in {"b0": (0.62, 40.0), "topformer-t": (0.55, 12.0)}.items():
        for t, (drop, f, prec) in {"torch": (0.0, 1.0, "fp32"), "ort-int8": (0.012, 0.5, "int8")}.items():
            rows.append({
                "model": m, "target": t, "reference": t == "torch", "input_size": [384, 512], "precision": prec,
                "backend": {"backend": "torch" if t == "torch" else "onnxruntime", "device": "cpu"},
                "artifact": f"exports/{m}/x", "artifact_bytes": int(15e6 * f), "params": 3_700_000, "gmacs": 6.1,
                "gflops": 12.2, "latency": {"inference": _lat(ms * f), "end_to_end": _lat(ms * f + 3)},
                "memory": {"peak_rss_bytes": 400_000_000, "baseline_rss_bytes": 300_000_000,
                           "model_rss_bytes": 100_000_000, "load_s": 0.4},
                "accuracy": {"miou": miou - drop, "pixel_acc": 0.9, "mean_acc": 0.7, "frames": 10,
                             "per_class_iou": {c: miou - drop + 0.05 * i for i, c in enumerate(CLASSES)},
                             "miou_drop": drop, "argmax_agreement": 1.0 if t == "torch" else 0.97},
                "power": None})
            for h, w in ((256, 320), (384, 512), (512, 512)):
                sweep.append({"model": m, "target": t, "input_size": [h, w], "precision": prec, "gmacs": h * w / 3e4,
                              "latency": {"inference": _lat(ms * f * h * w / 196608),
                                          "end_to_end": _lat(ms * f * h * w / 196608 + 3)}})
    return {
        "format": "segedge-bench/1", "created": "2025-01-01T00:00:00+00:00", "command": ["segedge", "bench"],
        "duration_s": 12.0,
        "machine": {"cpu": "Test CPU", "arch": "x86_64", "physical_cores": 2, "logical_cores": 4, "threads": 2,
                    "os": "Linux", "python": "3.11", "libraries": {"torch": "2", "onnxruntime": "1"},
                    "accelerators": {}, "git": {"commit": None, "dirty": None}},
        "settings": {"dataset": "camvid", "data": "/d", "split": "val", "eval_frames": 10, "timing_frames": 3,
                     "warmup": 1, "iters": 3, "device": "cpu", "targets": ["torch", "ort-int8"], "timing": "rr",
                     "memory": "probe", "power": "skipped", "accuracy": "exact", "latency_statistics": "linear",
                     "flops_convention": "MACs", "threads": 2, "torch_threads": 2},
        "models": {m: {"family": "x", "weights": "w", "num_classes": 3, "class_names": CLASSES,
                       "input_size": [384, 512], "params": 3_700_000, "gmacs": 6.1, "gflops": 12.2}
                   for m in ("b0", "topformer-t")},
        "rows": rows, "sweep": sweep, "notes": [],
    }


def test_schema_accepts_a_complete_results_dict_and_names_what_is_wrong():
    good = fake_results()
    assert check_results(good) == []
    bad = copy.deepcopy(good)
    del bad["machine"]["cpu"]
    del bad["rows"][1]["latency"]["inference"]["p90_ms"]
    bad["rows"][0]["accuracy"]["miou_drop"] = 0.1  # a reference row must have no drop
    bad["rows"] = [r for r in bad["rows"] if not (r["model"] == "topformer-t" and r["reference"])]
    problems = "\n".join(check_results(bad))
    assert "machine: missing 'cpu'" in problems
    assert "rows[1].latency.inference: missing 'p90_ms'" in problems
    assert "reference row must have miou_drop 0" in problems
    assert "topformer-t has no reference" in problems
    assert check_results({"format": "x"})  # top-level keys missing


def test_csv_and_markdown_carry_every_row():
    res = fake_results()
    text = to_csv((flat_row(r) for r in res["rows"]), CSV_COLUMNS)
    back = list(csv.DictReader(io.StringIO(text)))
    assert [(r["model"], r["target"]) for r in back] == [(r["model"], r["target"]) for r in res["rows"]]
    for r, b in zip(res["rows"], back):
        assert float(b["infer_p50_ms"]) == pytest.approx(r["latency"]["inference"]["p50_ms"])
        assert float(b["miou_drop"]) == pytest.approx(r["accuracy"]["miou_drop"])
        assert b["power_mw"] == ""  # not measured → empty cell
    md = markdown(res)
    table = [ln for ln in md.splitlines() if ln.startswith("| b0 |") or ln.startswith("| topformer-t |")]
    assert len(table) == 4 + 4  # main table + sweep table
    assert "| b0 | ort-int8 | int8 | 384×512 |" in md and "+1.20" in md  # drop shown in points
    assert "256×320" in md and "Test CPU" in md


def _check_png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None and img.shape[0] >= 300 and img.shape[1] >= 400
    assert img.std() > 5  # something was drawn
    return img


def test_plots_are_valid_pngs(tmp_path):
    from segedge.benchmarks.plots import write_plots

    files = write_plots(fake_results(), tmp_path)
    assert set(files) == {"latency_vs_miou", "per_class_iou", "latency_vs_size"}
    imgs = {k: _check_png(p) for k, p in files.items()}
    assert imgs["per_class_iou"].shape[0] > imgs["latency_vs_miou"].shape[0]  # one panel per model
    no_sweep = fake_results()
    no_sweep["sweep"] = []
    assert set(write_plots(no_sweep, tmp_path / "b")) == {"latency_vs_miou", "per_class_iou"}


# ------------------------------------------------------------------------------------------- isolated memory
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM is Linux-only")
def test_probe_peak_rss_is_the_childs_own(tmp_path):
    """A child of a big process must not report the parent's memory (ru_maxrss carries it across fork/exec)."""
    import segedge.benchmarks.memprobe as mp

    ballast = np.ones(400_000_000 // 8)  # ~400 MB touched in this process
    code = ("import importlib.util as u, sys; s = u.spec_from_file_location('mp', sys.argv[1]); "
            "m = u.module_from_spec(s); s.loader.exec_module(m); print(m.peak_rss_bytes())")
    child = int(subprocess.run([sys.executable, "-c", code, mp.__file__], capture_output=True, text=True,
                               check=True, timeout=120).stdout)
    assert mp.peak_rss_bytes() > 400_000_000
    assert 0 < child < 150_000_000
    del ballast
