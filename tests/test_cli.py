"""The CLI skeleton: `models`, `info`, `--version`, and one clear line (no traceback) for every bad input."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segedge import __version__
from segedge.cli import main
from segedge.models import create_model, list_models, save_checkpoint
from segedge.models.complexity import count_flops, count_params

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    # One cache for the whole session keeps `models` fast after its first run, away from the user's ~/.cache.
    monkeypatch.setenv("SEGEDGE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "segedge-cache"))


def run(capsys, *args: str) -> tuple[int, str, str]:
    """Run the real entry point in-process; return (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as ei:
        main(list(args))
    out, err = capsys.readouterr()
    code = ei.value.code if isinstance(ei.value.code, int) else (0 if ei.value.code is None else 1)
    return code, out, err


def assert_one_line_error(code: int, out: str, err: str, *needles: str) -> str:
    """Non-zero exit, exactly one `error:` line on stderr, nothing else, no traceback; return the line."""
    assert code != 0
    assert "Traceback" not in out + err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"segedge {__version__}"


def test_models_json_lists_every_model_with_real_counts(capsys):
    code, out, _ = run(capsys, "models", "--json")
    assert code == 0
    data = json.loads(out)
    rows = {r["name"]: r for r in data["models"]}
    assert list(rows) == list_models()
    assert data["num_classes"] == 150 and "MACs" in data["convention"]
    # Independent count on a real CPU-built model for the two smallest families' representatives.
    for name in ("b0", "topformer-t"):
        real = create_model(name, num_classes=150)
        assert rows[name]["params"] == count_params(real)
        assert rows[name]["gmacs"] == pytest.approx(count_flops(real, (512, 512))["gmacs"])
    assert rows["b0"]["output_stride"] == 4 and rows["topformer-b"]["output_stride"] == 8
    assert "mit-b0" in rows["b0"]["aliases"]
    assert all(r["input_size"] == [512, 512] for r in rows.values())


def test_models_table_shows_every_model(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0
    for name in ("b0", "b5"):  # short names fit the column; long ones may be ellipsised on a narrow terminal
        assert f" {name} " in out
    assert "3.75 M" in out and "8.39" in out  # b0: params and GMACs at 512x512


def test_info_json_is_pure_json_with_the_counts(capsys):
    code, out, err = run(capsys, "info", "--model", "mit-b0", "--input-size", "384x512", "--num-classes", "19",
                         "--json")
    assert code == 0
    r = json.loads(out)  # stdout holds nothing but the JSON document
    ref = count_flops("b0", (384, 512), num_classes=19)
    assert r["model"] == "b0" and r["input_size"] == [384, 512] and r["num_classes"] == 19
    assert r["params"] == ref["params"] and r["macs"] == ref["macs"]
    assert r["gflops"] == pytest.approx(2 * r["gmacs"])
    assert r["output_stride"] == 4 and r["output_size"] == [96, 128]
    assert r["convention"] == ref["convention"]
    assert r["weights"] is None


def test_info_table(capsys):
    code, out, _ = run(capsys, "info", "--model", "topformer-t", "--input-size", "256x256")
    assert code == 0
    ref = count_flops("topformer-t", (256, 256))
    assert f"{ref['params']:,}" in out and f"{ref['gmacs']:.3f}" in out and "convention" in out
    assert "stride 8" in out


def test_info_reads_num_classes_and_size_from_a_checkpoint(capsys, tmp_path):
    model = create_model("topformer-t", num_classes=11)
    ckpt = save_checkpoint(model, tmp_path / "t.safetensors",
                           {"model": "topformer-t", "num_classes": 11, "input_size": [384, 512]})
    code, out, _ = run(capsys, "info", "--model", "topformer-t", "--weights", str(ckpt), "--json")
    assert code == 0
    r = json.loads(out)
    assert r["num_classes"] == 11 and r["input_size"] == [384, 512]
    assert r["params"] == count_params(model)
    assert r["weights"]["format"] == "segedge" and len(r["weights"]["sha256"]) == 64


# ------------------------------------------------------------------------------------------- bad input


def test_unknown_model_lists_the_valid_ones(capsys):
    line = assert_one_line_error(*run(capsys, "info", "--model", "segformer-b9"), "segformer-b9")
    for name in list_models():
        assert name in line


@pytest.mark.parametrize("size", ["abc", "384x", "0x64", "x384", "384x512x3", "-64x64"])
def test_bad_input_size_strings(capsys, size):
    assert_one_line_error(*run(capsys, "info", "--model", "b0", "--input-size", size), size)


def test_size_not_valid_for_the_family_names_nearest_multiples(capsys):
    assert_one_line_error(*run(capsys, "info", "--model", "topformer-t", "--input-size", "100x100"),
                          "multiples of 64", "64 or 128")
    assert_one_line_error(*run(capsys, "info", "--model", "b0", "--input-size", "100x130"),
                          "multiples of 32", "96 or 128")


def test_corrupt_safetensors(capsys, tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(os.urandom(4096))
    assert_one_line_error(*run(capsys, "info", "--model", "b0", "--weights", str(bad)), "broken.safetensors")


def test_truncated_torch_checkpoint(capsys, tmp_path):
    good = tmp_path / "full.pth"
    torch.save(create_model("topformer-t", num_classes=3).state_dict(), good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert_one_line_error(*run(capsys, "info", "--model", "topformer-t", "--weights", str(cut)), "cut.pth")


def test_plain_pickle_with_objects_is_refused(capsys, tmp_path):
    p = tmp_path / "objects.pkl"
    with open(p, "wb") as f:
        pickle.dump({"state_dict": argparse.Namespace(weights=[1, 2])}, f, protocol=2)
    assert_one_line_error(*run(capsys, "info", "--model", "b0", "--weights", str(p)), "objects.pkl", "pickle")


def test_torch_save_with_objects_is_refused(capsys, tmp_path):
    p = tmp_path / "objects.pth"
    torch.save({"model": argparse.Namespace(depth=3), "w": torch.zeros(2)}, p)
    line = assert_one_line_error(*run(capsys, "info", "--model", "b0", "--weights", str(p)), "objects.pth")
    assert "Weights only load failed" not in line  # torch's multi-paragraph advice must not leak through


def test_missing_checkpoint_and_class_mismatch(capsys, tmp_path):
    assert_one_line_error(*run(capsys, "info", "--model", "b0", "--weights", str(tmp_path / "nope.pth")), "nope.pth")
    ckpt = save_checkpoint(create_model("topformer-t", num_classes=11), tmp_path / "t11.safetensors",
                           {"model": "topformer-t", "num_classes": 11})
    assert_one_line_error(*run(capsys, "info", "--model", "topformer-t", "--weights", str(ckpt),
                               "--num-classes", "5"), "11 classes")
    assert_one_line_error(*run(capsys, "info", "--model", "b0", "--weights", str(ckpt)), "topformer-t")


@pytest.mark.parametrize("args,needle", [
    (["info"], "--model"),
    (["info", "--model", "b0", "--num-classes", "0"], "--num-classes"),
    (["info", "--model", "b0", "--num-classes", "many"], "--num-classes"),
    (["info", "--model", "b0", "--bogus"], "--bogus"),
    (["nonexistent-command"], "nonexistent-command"),
])
def test_usage_errors_are_one_line(capsys, args, needle):
    assert_one_line_error(*run(capsys, *args), needle)


def test_keyboard_interrupt_exits_130(capsys, monkeypatch):
    import segedge.models.complexity as complexity

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(complexity, "cached_flops", interrupted)
    code, out, err = run(capsys, "info", "--model", "b0")
    assert code == 130 and "Traceback" not in out + err
    assert err.strip().splitlines()[-1] == "interrupted"


def test_python_dash_m_end_to_end(tmp_path):
    env = {**os.environ, "SEGEDGE_CACHE_DIR": str(tmp_path)}
    ok = subprocess.run([sys.executable, "-m", "segedge", "--version"], capture_output=True, text=True, env=env,
                        cwd=tmp_path, timeout=300)
    assert ok.returncode == 0 and ok.stdout.strip() == f"segedge {__version__}"
    bad = subprocess.run([sys.executable, "-m", "segedge", "info", "--model", "topformer-t", "--input-size", "100x100"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert_one_line_error(bad.returncode, bad.stdout, bad.stderr, "64 or 128")
    assert bad.returncode == 2


def test_segedge_debug_prints_the_cause_chain(tmp_path: Path) -> None:
    """A user error is one line; SEGEDGE_DEBUG=1 adds the chained exceptions behind it (for bug reports)."""
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x00" * 16)
    cmd = [sys.executable, "-m", "segedge", "info", "--model", "b0", "--weights", str(bad)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    plain = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert plain.returncode == 2 and len(plain.stderr.strip().splitlines()) == 1
    assert plain.stderr.startswith("error: ") and "Traceback" not in plain.stderr
    debug = subprocess.run(cmd, capture_output=True, text=True, env={**env, "SEGEDGE_DEBUG": "1"}, timeout=300)
    assert debug.returncode == 2 and "Traceback" in debug.stderr
    assert "The above exception was the direct cause" in debug.stderr  # raised `from` its cause, not `from None`
    assert debug.stderr.strip().splitlines()[-1] == plain.stderr.strip()
