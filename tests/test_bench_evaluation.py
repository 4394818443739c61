"""The one accuracy loop (`segedge.evaluation.evaluate_predictors`) and the functions that go through it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from segedge.errors import ExportError
from segedge.evaluation import dataset_samples, evaluate, evaluate_predictors
from segedge.export.verify import evaluate_miou

LABEL = np.array([[0, 0], [1, 1]], np.uint8)
OFF = np.array([[0, 1], [1, 1]], np.uint8)  # class 0 IoU 1/2, class 1 IoU 2/3 → mIoU 7/12; 3 of 4 pixels right
FRAME = np.zeros((2, 2, 3), np.uint8)


def test_metrics_agreement_and_each_predictor_once_per_frame():
    calls: list[str] = []

    def pred(name: str, out: np.ndarray):
        return lambda f: (calls.append(name), out.copy())[1]

    predictors = {"ref": pred("ref", LABEL), "off": pred("off", OFF), "alone": pred("alone", OFF)}
    progress: list[int] = []
    res = evaluate_predictors(predictors, [(FRAME, LABEL), None, (FRAME, LABEL)], 2, ["x", "y"],
                              references={"off": "ref", "ref": "ref"}, progress=progress.append)
    assert (res.frames, res.skipped) == (2, 1) and progress == [1, 2, 3]
    assert calls == ["ref", "off", "alone"] * 2  # the reference's labels are reused, not predicted again
    assert res.metrics["ref"].miou == 1.0 and res.agreement["ref"] == 1.0
    assert res.metrics["off"].miou == pytest.approx(7 / 12) and res.agreement["off"] == 0.75
    assert res.agreement["alone"] is None  # no reference given


def test_reference_runs_first_whatever_the_order():
    calls: list[str] = []
    predictors = {"t": lambda f: (calls.append("t"), OFF)[1], "r": lambda f: (calls.append("r"), LABEL)[1]}
    res = evaluate_predictors(predictors, [(FRAME, LABEL)], 2, references={"t": "r", "r": "r"})
    assert calls == ["r", "t"] and res.agreement["t"] == 0.75


def test_ignore_index_pixels_are_not_counted():
    label = np.array([[0, 255], [1, 1]], np.uint8)
    res = evaluate_predictors({0: lambda f: OFF}, [(FRAME, label)], 2)
    assert res.metrics[0].pixel_acc == 1.0


def test_evaluate_miou_goes_through_the_loop_and_keeps_its_errors():
    r = evaluate_miou(lambda f: OFF, [(FRAME, LABEL)], 2, ["x", "y"])
    assert r["miou"] == pytest.approx(7 / 12) and r["pixel_acc"] == 0.75 and r["frames"] == 1
    with pytest.raises(ExportError, match="yielded no"):
        evaluate_miou(lambda f: OFF, [], 2)
    with pytest.raises(ExportError, match="does not match its frame"):
        evaluate_miou(lambda f: OFF, [(np.zeros((3, 2, 3), np.uint8), LABEL)], 2)


def test_evaluate_on_a_dataset_skips_unreadable_samples(camvid_like: Path):
    from segedge.data.datasets import open_dataset

    ds = open_dataset("camvid", camvid_like, "val")
    first = ds.samples[0].image_path
    first.write_bytes(b"not an image")
    seen: list[tuple[int, int]] = []
    labels = {i: ds.read_label(i) for i in range(1, len(ds))}
    it = iter(labels.values())
    m = evaluate(lambda f: next(it), ds, progress=lambda n, total: seen.append((n, total)))
    assert m.miou == 1.0 and ds.skipped == 1
    assert seen == [(n, len(ds)) for n in range(1, len(ds) + 1)]
    assert list(dataset_samples(ds, [0])) == [None] and ds.skipped == 2


def test_evaluation_module_imports_without_torch():
    code = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        try:
            import segedge
        except ImportError as e:
            print("SKIP", e)
            raise SystemExit(0)
        import segedge.evaluation
        print("OK")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    if out.stdout.startswith("SKIP"):
        pytest.skip(f"the segedge package itself needs torch here: {out.stdout.strip()}")
    assert out.stdout.strip() == "OK"
