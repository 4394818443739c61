"""Reliability of `segedge train` / `segedge eval`: checkpoints stay a consistent pair when the process is killed at
any point of checkpointing, inputs are bounded, and disk errors are one line.

CLI cases run the real entry point in subprocesses (`python -m segedge ...`): exit code 2, exactly one stderr line
starting with "error:", no traceback. Kills are real SIGKILLs at named points (the trainer's SEGEDGE_TEST_PAUSE
hook); the run is then resumed and must end with the same weights, bit for bit, as an uninterrupted run, or be
refused in one line.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, slow_except, write_camvid_like

PENDING = ".last.safetensors.pending.tmp"
# A tiny run: 4 iterations of topformer-t at 64x64, a checkpoint after each.
RUN = ["--model", "topformer-t", "--dataset", "camvid", "--input-size", "64x64", "--iters", "4", "--batch-size", "2",
       "--lr", "1e-3", "--warmup-iters", "1", "--val-every", "1", "--threads", "1", "--seed", "5"]


# ---- helpers ----------------------------------------------------------------------------------------------------
def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGEDGE_TEST_PAUSE") and k != "SEGEDGE_DEBUG"}
    env.update(extra)
    return env


def segedge(*args: str, env: dict[str, str] | None = None, code: str | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m segedge ARGS` (or `python -c CODE ARGS`) in a subprocess."""
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "segedge", *args]
    return subprocess.run(cmd, cwd=REPO, env=env or _env(), capture_output=True, text=True, timeout=timeout)


def assert_cli_error(proc: subprocess.CompletedProcess, *needles: str, only_line: bool = True) -> str:
    """Exit code 2, exactly one stderr line starting with 'error:' (the last one), no traceback; return it."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr[-2000:]
    if only_line:
        assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def flat(text: str) -> str:
    """Log text with Rich's line wrapping undone."""
    return " ".join(text.split())


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".*.tmp"))


def tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def assert_same_weights(a: Path, b: Path) -> None:
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, f"{len(different)} tensors differ, first {different[0]}"


def kill_at(point: str, data: Path, out: Path, tmp: Path) -> None:
    """Start a training run, wait until it parks at `point`, SIGKILL it."""
    flag = tmp / f"paused-{point.replace(':', '-').replace('@', '-')}"
    log = tmp / (flag.name + ".log")
    env = _env(SEGEDGE_TEST_PAUSE=point, SEGEDGE_TEST_PAUSE_FILE=str(flag), SEGEDGE_TEST_PAUSE_TIMEOUT="240")
    with open(log, "wb") as lf:
        proc = subprocess.Popen([sys.executable, "-m", "segedge", "train", *RUN, "--data", str(data), "--out",
                                 str(out)], cwd=REPO, env=env, stdout=lf, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    try:
        while not flag.exists():
            if proc.poll() is not None:
                pytest.fail(f"the run ended (rc {proc.returncode}) without reaching {point}: {log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"the run did not reach {point} in time: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---- fixtures ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The conftest `camvid_like` layout, once for the module."""
    return write_camvid_like(tmp_path_factory.mktemp("data") / "camvid")


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run every interrupted one must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = segedge("train", *RUN, "--data", str(data), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert temp_files(out) == []
    return out


def best_iterations(run: Path) -> list[int]:
    """Iterations at which the reference run wrote best.safetensors (val mIoU improved)."""
    best, its = -1.0, []
    for h in json.loads((run / "summary.json").read_text())["history"]:
        if h["miou"] > best:
            best = h["miou"]
            its.append(h["iteration"])
    return its


# ---- 1. kills during checkpointing ------------------------------------------------------------------------------
# point -> (iteration the resume must start from, temp files right after the kill, temp files the resume removes,
#           what the resume must say)
KILLS = {
    "checkpoint:start@2": (1, [], 0, "resumed from iteration 1"),
    "checkpoint:weights-written@1": (0, [PENDING], 1, "nothing to resume"),
    "checkpoint:state-tmp-written@1": (0, [PENDING, ".train_state.pt."], 2, "nothing to resume"),
    "checkpoint:state-written@1": (1, [PENDING], 0, "completed the interrupted checkpoint of iteration 1"),
    "checkpoint:weights-written@2": (1, [PENDING], 1, "discarded an unfinished checkpoint of iteration 2"),
    "checkpoint:state-tmp-written@2": (1, [PENDING, ".train_state.pt."], 2,
                                       "discarded an unfinished checkpoint of iteration 2"),
    "checkpoint:state-written@2": (2, [PENDING], 0, "completed the interrupted checkpoint of iteration 2"),
    "checkpoint:done@2": (2, [], 0, "resumed from iteration 2"),
    "checkpoint:best-written": (None, [], 0, None),  # at the last iteration whose mIoU improved (from the reference)
}


def resume_in_process(capsys, data: Path, out: Path) -> tuple[int, str]:
    """`segedge train ... --resume` through the real entry point, in this process (no second torch import)."""
    from segedge.cli import main

    with pytest.raises(SystemExit) as ei:
        main(["train", *RUN, "--data", str(data), "--out", str(out), "--resume"])
    _, err = capsys.readouterr()
    code = ei.value.code
    return (0 if code is None else code), err


@pytest.mark.parametrize("point", slow_except(list(KILLS), {"checkpoint:weights-written@2"}))
def test_kill_during_checkpoint_then_resume_is_exact(point: str, data: Path, reference: Path, tmp_path: Path,
                                                     capsys) -> None:
    start, temps, removed, says = KILLS[point]
    if point == "checkpoint:best-written":
        k = best_iterations(reference)[-1]
        point, start, says = f"{point}@{k}", k - 1, "resumed from iteration" if k > 1 else "nothing to resume"
    out = tmp_path / "run"
    kill_at(point, data, out, tmp_path)
    left = temp_files(out)
    assert len(left) == len(temps) and all(n.startswith(t) for n, t in zip(left, sorted(temps))), left

    code, err = resume_in_process(capsys, data, out)
    log = flat(err)
    assert code == 0 and "Traceback" not in log, err[-3000:]
    assert says in log, log
    if start:
        assert f"resumed from iteration {start} " in log, log
    else:
        assert "resumed from" not in log, log
    assert (f"removed {removed} temp file(s) left by an interrupted run" in log) == bool(removed), log
    assert temp_files(out) == []
    assert_same_weights(reference / "last.safetensors", out / "last.safetensors")
    assert_same_weights(reference / "best.safetensors", out / "best.safetensors")
    ref, got = (json.loads((d / "summary.json").read_text()) for d in (reference, out))
    assert got["best_miou"] == ref["best_miou"]
    assert [(h["iteration"], h["miou"]) for h in got["history"]] == \
        [(h["iteration"], h["miou"]) for h in ref["history"]]


@pytest.fixture(scope="module")
def killed_after_2(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run killed just after its checkpoint of iteration 2 (a complete pair); tests copy it."""
    tmp = tmp_path_factory.mktemp("killed")
    kill_at("checkpoint:done@2", data, tmp / "run", tmp)
    return tmp / "run"


def _strip_digest(state_file: Path) -> None:
    """Rewrite a train_state.pt as segedge wrote it before the pair carried the weights' digest."""
    state = torch.load(state_file, map_location="cpu", weights_only=True)
    for k in ("weights_sha256", "weights_file", "format_version"):
        state.pop(k)
    torch.save(state, state_file)


@pytest.mark.parametrize("case", slow_except(["mixed-pair", "mixed-legacy-pair", "torn-pending-weights",
                                              "legacy-pair-matches"], {"mixed-pair"}))
def test_resume_checks_that_the_pair_matches(case: str, data: Path, reference: Path, killed_after_2: Path,
                                                   tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    if case == "torn-pending-weights":  # the state is committed but the weights it names are not whole
        kill_at("checkpoint:state-written@2", data, out, tmp_path)
        pending = out / PENDING
        pending.write_bytes(pending.read_bytes()[:1000])
    else:
        shutil.copytree(killed_after_2, out)
        if case.startswith("mixed"):  # the audit's finding: newer weights (4) beside an older state (2)
            shutil.copy(reference / "last.safetensors", out / "last.safetensors")
        if "legacy" in case:
            _strip_digest(out / "train_state.pt")
    if case == "legacy-pair-matches":  # an old state without a digest whose weights match: resumed, exactly
        code, err = resume_in_process(capsys, data, out)
        assert code == 0 and "resumed from iteration 2 " in flat(err), err[-3000:]
        assert_same_weights(reference / "last.safetensors", out / "last.safetensors")
        return
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    proc = segedge("train", *RUN, "--data", str(data), "--out", str(out), "--resume")
    last_it = 4 if case.startswith("mixed") else 1
    line = assert_cli_error(proc, "cannot resume from", f"last.safetensors is from iteration {last_it}",
                            "train_state.pt is from iteration 2", "without --resume")
    assert "resumed" not in proc.stderr and len(line) < 400
    # nothing was touched: the evidence stays for the user
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "config.json"} == \
        {k: v for k, v in before.items() if k != "config.json"}


# ---- 2. bounded, validated input ----------------------------------------------------------------------------------
TRAIN_BAD = [
    (["--lr", "nan"], "--lr must be a finite number"),
    (["--lr", "inf"], "--lr must be a finite number"),
    (["--lr", "-1"], "--lr must be a finite number greater than 0"),
    (["--lr", "0"], "--lr must be a finite number greater than 0"),
    (["--lr", "5"], "at most 1"),
    (["--lr", "abc"], "'--lr'"),
    (["--weight-decay", "nan"], "--weight-decay must be a finite number at least 0"),
    (["--weight-decay", "-0.1"], "--weight-decay must be a finite number at least 0"),
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "1"], "topformer-t cannot train on batches of 1 image"),
    (["--iters", "-3"], "--iters must be at least 0"),
    (["--iters", "0"], "--epochs N or --iters N"),
    (["--iters", "0", "--epochs", "-1"], "--epochs must be at least 0"),
    (["--warmup-iters", "-1"], "--warmup-iters must be at least 0"),
    (["--val-every", "0"], "--val-every"),
    (["--threads", "0"], "--threads must be at least 1"),
    (["--threads", "-2"], "--threads must be at least 1"),
    (["--seed", "-1"], "--seed must be at least 0"),
    (["--num-classes", "0"], "--num-classes must be at least 1"),
    (["--num-classes", "300"], "at most 255"),
    (["--class-weighting", "inverse"], "choose sqrt-median or none"),
    (["--amp", "fp8"], "choose none, bf16 or fp16"),
    (["--amp", "fp16"], "--amp fp16 needs a CUDA GPU"),
    (["--input-size", "8192x8192"], "--input-size 8192x8192 exceeds the maximum of 4096 pixels per side"),
    (["--crop-size", "4160x64"], "--crop-size 4160x64 exceeds the maximum of 4096 pixels per side"),
    (["--model", "b0", "--input-size", "4096x4096", "--batch-size", "8"], "needs at least"),
]


@pytest.mark.parametrize("extra,needle", slow_except(  # a sample in the fast suite, every case with -m slow
    TRAIN_BAD, {" ".join(a) for a, _ in TRAIN_BAD[:6]}, ids=[" ".join(a) for a, _ in TRAIN_BAD]))
def test_train_rejects_bad_input_in_one_line(extra: list[str], needle: str, data: Path, tmp_path: Path) -> None:
    if extra == ["--amp", "fp16"] and torch.cuda.is_available():
        pytest.skip("this machine has CUDA: fp16 is allowed")
    args = {"--model": "topformer-t", "--data": str(data), "--input-size": "64x64", "--iters": "2",
            "--out": str(tmp_path / "r")}
    for i in range(0, len(extra), 2):
        args[extra[i]] = extra[i + 1]
    proc = segedge("train", *[x for kv in args.items() for x in kv])
    line = assert_cli_error(proc, needle, only_line="cannot train on batches" not in needle)  # that one has logs
    if "needs at least" in needle:
        assert "memory" in line and "lower --batch-size" in line
    assert not (tmp_path / "r" / "last.safetensors").exists()


def _eval_memory_needed() -> float:
    from segedge.models import create_model
    from segedge.training.limits import available_memory, inference_memory

    need = inference_memory(create_model("b0", num_classes=11), (4096, 4096))
    avail = available_memory(torch.device("cpu"))
    if need is None or avail is None or avail >= need:
        pytest.skip("this machine could hold a b0 forward pass at 4096x4096")
    return need


EVAL_BAD = [
    (["--input-size", "8192x8192"], "--input-size 8192x8192 exceeds the maximum of 4096 pixels per side"),
    (["--input-size", "4096x4096"], "needs at least"),
    (["--num-classes", "0"], "--num-classes must be at least 1"),
]


@pytest.mark.parametrize("extra,needle", slow_except(
    EVAL_BAD, {" ".join(a) for a, _ in EVAL_BAD[:4]}, ids=[" ".join(a) for a, _ in EVAL_BAD]))
def test_eval_rejects_bad_input_in_one_line(extra: list[str], needle: str, data: Path) -> None:
    if needle == "needs at least":
        _eval_memory_needed()
    proc = segedge("eval", "--model", "b0", "--data", str(data), *extra)
    assert_cli_error(proc, needle)


def _cfg(root: Path, out: Path, **kw):
    from segedge.training.trainer import TrainConfig

    base = dict(model="topformer-t", data=str(root), dataset="camvid", out=str(out), input_size=(64, 64), iters=2,
                batch_size=2, lr=1e-3, warmup_iters=1, val_every=2, seed=3, threads=1, log_every=100)
    base.update(kw)
    return TrainConfig(**base)


API_BAD = [
    ({"lr": float("nan")}, "--lr"),
    ({"poly_power": 0.0}, "--poly-power"),
    ({"scale_range": (2.0, 1.0)}, "reversed"),
    ({"scale_range": (0.5, float("inf"))}, "scale_range high"),
    ({"scale_range": (0.5, 9.0)}, "at most 4"),
    ({"val_limit": 0}, "--val-limit"),
    ({"log_every": 0}, "--log-every"),
    ({"batch_size": 2.5}, "--batch-size must be a whole number"),
    ({"threads": 0}, "--threads"),
    ({"input_size": (8192, 64)}, "4096"),
    ({"crop_size": (64, 4160)}, "4096"),
    ({"amp": "fp16"}, "CUDA"),
]


@pytest.mark.parametrize("kw,needle", API_BAD, ids=[f"{k}={v}" for kw, _ in API_BAD for k, v in kw.items()])
def test_trainer_api_rejects_bad_config(kw: dict, needle: str, data: Path, tmp_path: Path) -> None:
    from segedge.errors import SegedgeError
    from segedge.training.trainer import Trainer

    if kw.get("amp") == "fp16" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA: fp16 is allowed")
    with pytest.raises(SegedgeError) as ei:
        Trainer(_cfg(data, tmp_path / "r", **kw), log=lambda s: None)
    assert needle in str(ei.value) and "\n" not in str(ei.value)


def test_memory_estimate_refuses_before_allocating(data: Path, tmp_path: Path, monkeypatch) -> None:
    from segedge.errors import SegedgeError
    from segedge.training import limits
    from segedge.training.trainer import Trainer

    monkeypatch.setattr(limits, "available_memory", lambda device: 1 << 30)
    with pytest.raises(SegedgeError) as ei:
        Trainer(_cfg(data, tmp_path / "r", model="b0", batch_size=8, input_size=(512, 512)), log=lambda s: None)
    msg = str(ei.value)
    assert "training b0 on batches of 8 x 512x512 needs at least" in msg and "but 1.0 GiB is available" in msg
    assert "lower --batch-size or --crop-size" in msg and not (tmp_path / "r").exists()
    # the estimate is a lower bound of the real need and grows with the batch
    from segedge.models import create_model

    m = create_model("b0", num_classes=11)
    small, big = (limits.training_memory(m, b, (512, 512), 11, False) for b in (2, 8))
    assert small is not None and big is not None and 3.5 < big / small < 4.5
    # small runs whose upper bound is far below the free memory are not estimated (the bound holds: 64 KB/pixel)
    cpu = torch.device("cpu")
    monkeypatch.setattr(limits, "available_memory", lambda device: 8 << 30)
    assert limits.check_training_memory(m, 2, (64, 64), 11, False, cpu, "x", "y") is None
    bound = limits.activation_bytes(m, 2, (256, 256))
    assert bound is not None and bound[0] < 2 * 256 * 256 * limits.SMALL_BYTES_PER_PIXEL
    monkeypatch.setattr(limits, "available_memory", lambda device: 64 << 20)
    with pytest.raises(SegedgeError, match="needs at least .* but 0.1 GiB is available"):
        limits.check_training_memory(m, 2, (64, 64), 11, False, cpu, "training b0", "lower --batch-size")


# ---- 3. disk full / permission denied -----------------------------------------------------------------------------
INJECT = r"""
import errno, os, sys
from pathlib import Path
import segedge.training.trainer as T
target, code, skip = os.environ["INJECT_NAME"], int(os.environ["INJECT_ERRNO"]), int(os.environ["INJECT_SKIP"])
real, seen = T._write_file, [0]
def failing(path, data):
    name = Path(path).name
    if name == target or name.startswith("." + target + "."):
        seen[0] += 1
        if seen[0] > skip:
            if code == errno.ENOSPC:  # a torn write: part of the bytes land, then the disk is full
                Path(path).write_bytes(data[: len(data) // 2])
            raise OSError(code, os.strerror(code), str(path))
    real(path, data)
T._write_file = failing
from segedge.cli import main
main()
"""

DISK = [
    # file whose write fails, errno, matching writes that succeed first, what the line says
    (PENDING, errno.ENOSPC, 1, "cannot write checkpoint to {out}: no space left on device (ENOSPC); free space or "
                               "choose another --out (the checkpoint of iteration 1 is intact: --resume continues"),
    ("train_state.pt", errno.ENOSPC, 0, "cannot write checkpoint to {out}: no space left on device (ENOSPC); free "
                                        "space or choose another --out"),
    ("config.json", errno.EACCES, 0, "cannot write the run config to {out}: permission denied (EACCES); make the "
                                     "folder writable or choose another --out"),
    ("best.safetensors", errno.EACCES, 0, "cannot write checkpoint to {out}: permission denied (EACCES)"),
    ("summary.json", errno.EROFS, 0, "cannot write the run summary to {out}: read-only file system (EROFS)"),
]


@pytest.mark.parametrize("name,code,skip,says", slow_except(
    DISK, {f"{PENDING}-ENOSPC", "config.json-EACCES"}, ids=[f"{d[0]}-{errno.errorcode[d[1]]}" for d in DISK]))
def test_disk_errors_are_one_line_and_leave_a_resumable_run(name: str, code: int, skip: int, says: str, data: Path,
                                                          reference: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    env = _env(INJECT_NAME=name, INJECT_ERRNO=str(code), INJECT_SKIP=str(skip))
    proc = segedge("train", *RUN, "--data", str(data), "--out", str(out), env=env, code=INJECT)
    assert_cli_error(proc, says.format(out=out), only_line=False)
    assert out.is_dir() and temp_files(out) == []
    if name == PENDING:  # the older pair is intact: free the space, resume, and end where an uninterrupted run ends
        rc, err = resume_in_process(capsys, data, out)
        assert rc == 0 and "resumed from iteration 1 " in flat(err), err[-3000:]
        assert_same_weights(reference / "last.safetensors", out / "last.safetensors")
    if name == "train_state.pt":  # failed at the first checkpoint: no half pair left behind
        assert not (out / "last.safetensors").exists() and not (out / "train_state.pt").exists()


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"),
                                 PermissionError(errno.EACCES, "Permission denied")], ids=["ENOSPC", "EACCES"])
def test_trainer_api_disk_error_is_a_segedge_error(exc: OSError, data: Path, tmp_path: Path, monkeypatch) -> None:
    import segedge.training.trainer as T
    from segedge.errors import SegedgeError

    def failing(path: Path, data: bytes) -> None:
        if path.name.startswith((".last.", ".train_state.")):
            Path(path).write_bytes(data[:10])
            raise exc
        real(path, data)

    real = T._write_file
    monkeypatch.setattr(T, "_write_file", failing)
    out = tmp_path / "r"
    out.mkdir()
    (out / ".best.safetensors.999.tmp").write_bytes(b"left by a killed run")
    (out / ".notes.txt.tmp").write_bytes(b"someone else's")  # not a run file: left alone
    with pytest.raises(SegedgeError) as ei:
        T.Trainer(_cfg(data, out), log=lambda s: None).run()
    msg = str(ei.value)
    assert msg.startswith(f"cannot write checkpoint to {out}: ") and "\n" not in msg
    assert f"({errno.errorcode[exc.errno]})" in msg
    assert temp_files(out) == [".notes.txt.tmp"]  # the stale temp file was cleaned at start, torn ones on failure


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_run_folder_is_one_line(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        proc = segedge("train", *RUN, "--data", str(data), "--out", str(out))
        assert_cli_error(proc, f"cannot write the run config to {out}: permission denied (EACCES)")
    finally:
        out.chmod(0o755)


def test_resume_with_changed_settings_warns(data: Path, tmp_path: Path) -> None:
    from segedge.training.trainer import Trainer

    out = tmp_path / "r"
    Trainer(_cfg(data, out), log=lambda s: None).run()
    lines: list[str] = []
    tr = Trainer(_cfg(data, out, iters=3, lr=2e-3), log=lines.append)
    tr.run(resume=True)
    assert tr.start_iter == 2 and len(tr.losses) == 1
    assert any(ln.startswith("warning: resuming with changed settings (iters 2 -> 3, lr 0.001 -> 0.002)")
               for ln in lines), lines


def test_background_entry_point_reports_bad_input_in_one_line(data: Path, tmp_path: Path) -> None:
    """`python -m segedge.training.trainer` (used for background jobs) prints the same one line, exit code 2."""
    proc = subprocess.run([sys.executable, "-m", "segedge.training.trainer", "--model", "topformer-t", "--data",
                           str(data), "--out", str(tmp_path / "r"), "--iters", "2", "--lr", "nan"], cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert_cli_error(proc, "--lr must be a finite number")
