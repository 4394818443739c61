"""`segedge train` and `segedge eval` through the real entry point: a short run, its checkpoint, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from test_cli import assert_one_line_error, run


@pytest.fixture
def trained(camvid_like: Path, tmp_path: Path, capsys) -> Path:
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "--model", "topformer-t", "--data", str(camvid_like), "--dataset", "camvid",
                       "--input-size", "64x64", "--iters", "4", "--batch-size", "2", "--lr", "1e-3",
                       "--warmup-iters", "1", "--val-every", "2", "--threads", "1", "--out", str(out))
    assert code == 0, err
    return out


def test_train_writes_checkpoints_that_eval_reads(trained: Path, camvid_like: Path, capsys) -> None:
    assert {"best.safetensors", "last.safetensors", "summary.json", "train_state.pt"} <= {p.name for p in trained.iterdir()}
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["iterations"] == 4 and len(summary["history"]) == 2
    code, out, err = run(capsys, "eval", "--model", "topformer-t", "--weights", str(trained / "best.safetensors"),
                         "--data", str(camvid_like), "--dataset", "camvid", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["samples"] == 3 and res["skipped"] == 0 and 0.0 <= res["miou"] <= 1.0
    assert list(res["per_class_iou"])[:2] == ["Sky", "Building"]
    # the same figure the trainer recorded for its best checkpoint (same frames, same size, same metric)
    assert abs(res["miou"] - max(h["miou"] for h in summary["history"])) < 1e-6


def test_eval_skips_an_unreadable_frame_with_a_note_and_strict_fails(trained: Path, camvid_like: Path, capsys) -> None:
    (camvid_like / "val" / "f001.png").write_bytes(b"broken")
    args = ["eval", "--model", "topformer-t", "--weights", str(trained / "best.safetensors"), "--data",
            str(camvid_like), "--json"]
    code, out, err = run(capsys, *args)
    assert code == 0 and json.loads(out)["skipped"] == 1 and "note: 1 unreadable" in err
    code, out, err = run(capsys, *args, "--strict")
    assert_one_line_error(code, out, err, "cannot read image")


@pytest.mark.parametrize("extra,needle", [
    (["--input-size", "64x"], "cannot parse input size '64x'"),
    (["--input-size", "96x96"], "multiples of 64"),
    (["--batch-size", "0"], "--batch-size"),
    (["--val-every", "0"], "--val-every"),
    (["--iters", "0"], "--epochs N or --iters N"),
])
def test_train_bad_input_is_one_line(camvid_like: Path, tmp_path: Path, capsys, extra: list[str], needle: str) -> None:
    base = {"--model": "topformer-t", "--data": str(camvid_like), "--input-size": "64x64", "--iters": "2",
            "--out": str(tmp_path / "r")}
    for i in range(0, len(extra), 2):
        base[extra[i]] = extra[i + 1]
    code, out, err = run(capsys, "train", *[x for kv in base.items() for x in kv])
    assert_one_line_error(code, out, err, needle)


def test_train_out_is_a_file_and_corrupt_resume_state(camvid_like: Path, tmp_path: Path, capsys, trained: Path) -> None:
    (tmp_path / "afile").write_text("x")
    common = ["train", "--model", "topformer-t", "--data", str(camvid_like), "--input-size", "64x64", "--iters", "4",
              "--batch-size", "2"]
    code, out, err = run(capsys, *common, "--out", str(tmp_path / "afile"))
    assert_one_line_error(code, out, err, "afile")
    (trained / "train_state.pt").write_bytes(b"truncated")
    code, out, err = run(capsys, *common, "--out", str(trained), "--resume")
    line = assert_one_line_error(code, out, err, "cannot resume")
    assert "train_state.pt" in line


def test_eval_bad_input(camvid_like: Path, tmp_path: Path, capsys) -> None:
    code, out, err = run(capsys, "eval", "--model", "b0", "--data", str(tmp_path / "nope"), "--weights", "x")
    assert_one_line_error(code, out, err, "not found")
    lab = np.full((64, 96), 50, np.uint8)
    cv2.imwrite(str(camvid_like / "valannot" / "f000.png"), lab)
    code, out, err = run(capsys, "eval", "--model", "topformer-t", "--data", str(camvid_like), "--limit", "0")
    assert code != 0 and "Traceback" not in err
