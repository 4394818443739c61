"""`segedge run` in real subprocesses: a video through policy `all` (every frame, stats JSON), an image folder to
label PNGs, bad inputs and outputs as one line with nothing written, SIGINT / SIGTERM mid-stream leaving a playable
video (stopped at a pause point, not by a sleep race), a run without torch, and model names without an export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from video_util import REPO, count_frames, run_cli, scene, tiny_export, write_clip


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_export(tmp_path_factory)


def _no_hidden(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob(".*")]


def test_run_video_policy_all_writes_every_frame_and_stats(export: Path, tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "in.mp4", 25)
    r = run_cli(["run", str(export), "--input", str(clip), "--output", "out.mp4", "--output", "ov/", "--view",
                 "side", "--legend", "--info", "--stats", "stats.json", "--threads", "1"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert count_frames(tmp_path / "out.mp4") == (25, (120, 320))  # side by side: twice as wide
    assert len(list((tmp_path / "ov").glob("*.png"))) == 25
    assert "wrote out.mp4: 25 frames" in r.stdout and "wrote stats.json" in r.stdout
    assert "input: video file" in r.stderr and "drop policy: all" in r.stderr  # options printed on open
    st = json.loads((tmp_path / "stats.json").read_text())
    assert st["status"] == "completed" and st["policy"] == "all"
    assert st["frames"] == {"read": 25, "processed": 25, "dropped": 0, "failed": 0}
    assert {"decode", "pre", "infer", "post", "render", "write"} <= set(st["stages_ms"])
    assert all(st["latency_ms"][k] is not None for k in ("p50", "p90", "p99"))
    assert st["fps"]["average"] > 0 and st["command"][:2] == ["segedge", "run"]
    assert _no_hidden(tmp_path) == []


def test_run_image_folder_to_label_pngs(export: Path, tmp_path: Path) -> None:
    d = tmp_path / "imgs"
    d.mkdir()
    for i, (h, w) in enumerate([(70, 90), (48, 64), (100, 60)]):
        cv2.imwrite(str(d / f"frame_{i}.jpg"), scene(i, h, w))
    r = run_cli(["run", str(export), "-i", str(d), "-o", "labels/", "--view", "labels", "-q"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "3 label maps" in r.stdout
    for i, hw in enumerate([(70, 90), (48, 64), (100, 60)]):
        lab = cv2.imread(str(tmp_path / "labels" / f"frame_{i}.png"), cv2.IMREAD_UNCHANGED)
        assert lab.dtype == np.uint8 and lab.shape == hw


def _main(args: list[str], cwd: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
          ) -> tuple[int, str, str]:
    """The CLI in this process (the same `main` as the console script), for the many one-line error cases."""
    from segedge.cli import main

    monkeypatch.chdir(cwd)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(args)
    out, err = capsys.readouterr()
    return int(e.value.code), out, err


def test_bad_inputs_and_outputs_fail_in_one_line_and_write_nothing(export: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    clip = write_clip(tmp_path / "in.mp4", 3)
    (tmp_path / "plain.txt").write_text("x")
    (tmp_path / "junk.mp4").write_bytes(b"\x00" * 2000)
    # two in a real subprocess: the console entry point's exit code and stderr
    for args, msg in [(["--input", "missing.mp4", "-o", "o.mp4"], "input not found: missing.mp4"),
                      (["--input", str(clip), "-o", "plain.txt/o.mp4"], "cannot write the video to")]:
        r = run_cli(["run", str(export), *args], tmp_path)
        assert r.returncode == 2 and r.stderr.strip().startswith("error: ") and msg in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and r.stdout == ""
    cases = [
        (["--input", "ftp://cam/x", "-o", "o.mp4"], "unsupported input scheme 'ftp://'"),
        (["--input", "junk.mp4", "-o", "o.mp4"], "junk.mp4"),
        (["--input", "rtsp://", "-o", "o.mp4"], "names no host"),
        (["--input", str(clip), "-o", "o.mp4", "--view", "labels"], "--view labels writes uint8 label PNGs"),
        (["--input", str(clip), "-o", "o.webm"], "cannot tell what to write"),
        (["--input", str(clip), "-o", "o.mp4", "--drop-policy", "newest"], "unknown drop policy"),
        (["--input", str(clip), "-o", "o.mp4", "--infer-mode", "fast"], "unknown inference mode 'fast'"),
        (["--input", str(clip), "-o", "o.mp4", "--stats", "plain.txt/s.json"], "cannot write --stats"),
        (["--input", str(clip), "-o", "o.mp4", "--flip", "x"], "flip must be"),
        (["--input", str(clip), "-o", "o.mp4", "--target", "ort-int8"], "target 'ort-int8' is not in"),
    ]
    for args, msg in cases:
        code, out, err = _main(["run", str(export), *args], tmp_path, capsys, monkeypatch)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], (args, err)
        assert not (tmp_path / "o.mp4").exists() and _no_hidden(tmp_path) == []
    code, _, err = _main(["run", str(tmp_path / "no-export"), "--input", str(clip)], tmp_path, capsys, monkeypatch)
    assert code == 2 and "model path not found" in err
    code, _, err = _main(["run", "topformer-x", "--input", str(clip)], tmp_path, capsys, monkeypatch)
    assert code == 2 and "unknown model 'topformer-x'" in err


def _interrupt(export: Path, tmp_path: Path, sig: int) -> tuple[subprocess.Popen, str, str]:
    clip = write_clip(tmp_path / "in.mp4", 60)
    flag = tmp_path / "paused"
    env = {**os.environ, "PYTHONPATH": str(REPO), "SEGEDGE_TEST_PAUSE": "video.frame_written",
           "SEGEDGE_TEST_PAUSE_FILE": str(flag)}
    proc = subprocess.Popen([sys.executable, "-m", "segedge", "run", str(export), "--input", str(clip), "--output",
                             "out.mp4", "--stats", "stats.json", "--threads", "1"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not flag.exists():  # the first frame is written and the process waits at the pause point
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "never reached the pause point"
        time.sleep(0.02)
    proc.send_signal(sig)
    while proc.poll() is None and time.monotonic() < deadline:  # let every queued frame pass its pause point
        if flag.exists():
            flag.unlink(missing_ok=True)
        time.sleep(0.02)
    out, err = proc.communicate(timeout=30)
    return proc, out, err


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_stream_drains_and_leaves_a_playable_video(export: Path, tmp_path: Path, sig: int,
                                                             code: int) -> None:
    proc, out, err = _interrupt(export, tmp_path, sig)
    assert proc.returncode == code, err
    n, size = count_frames(tmp_path / "out.mp4")
    assert 1 <= n < 60 and size == (120, 160)  # stopped mid-stream, and the file is complete
    st = json.loads((tmp_path / "stats.json").read_text())
    assert st["status"] == "stopped" and st["stopped_by"] == signal.Signals(sig).name
    assert st["frames"]["processed"] == n and st["frames"]["dropped"] == 0  # the queues were drained
    assert _no_hidden(tmp_path) == [] and "Traceback" not in err


BLOCK_TORCH = textwrap.dedent("""
    import sys
    class _NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "torch":
                raise ModuleNotFoundError("No module named 'torch' (blocked by the test)", name="torch")
            return None
    sys.meta_path.insert(0, _NoTorch())
    from segedge.cli import main
    try:
        main(sys.argv[1:])
    finally:
        assert "torch" not in sys.modules
""")


def _run_without_torch(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def test_runs_without_torch_and_says_how_to_export_a_model_name(export: Path, tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "in.mp4", 5)
    r = _run_without_torch(["run", str(export), "-i", str(clip), "-o", "o.mp4", "-q"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert count_frames(tmp_path / "o.mp4")[0] == 5
    r = _run_without_torch(["run", "topformer-t", "-i", str(clip), "-o", "o2.mp4"], tmp_path)
    assert r.returncode == 2 and not (tmp_path / "o2.mp4").exists()
    assert "needs PyTorch" in r.stderr and "segedge export --model topformer-t --target onnx" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_model_name_uses_its_export_under_exports(export: Path, tmp_path: Path) -> None:
    import shutil

    shutil.copytree(export, tmp_path / "exports" / "topformer-t-128x128")
    clip = write_clip(tmp_path / "in.mp4", 4)
    r = run_cli(["run", "topformer-t", "-i", str(clip), "-o", "o.mp4"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert count_frames(tmp_path / "o.mp4")[0] == 4 and "exporting" not in r.stderr


@pytest.mark.slow
def test_model_name_without_an_export_exports_the_demo_first(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "in.mp4", 3)
    r = run_cli(["run", "topformer-t", "-i", str(clip), "-o", "o.mp4"], tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "exporting its demo weights first" in r.stderr
    assert (tmp_path / "exports" / "topformer-t-384x512" / "manifest.json").is_file()
    assert count_frames(tmp_path / "o.mp4")[0] == 3
