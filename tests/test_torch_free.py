"""The device runtime never imports torch: `import segedge.runtime`, `Segmenter.load(folder).predict(frame)` on
ONNX Runtime and OpenVINO, `segedge --help` and `segedge doctor`, each in a subprocess where importing torch fails.

(The install without torch in a fresh virtualenv is the slow test in test_install.py.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from segedge.export import ExportOptions, export_model

REPO = Path(__file__).resolve().parent.parent

# Makes `import torch` fail as on a device without it, and records who tried.
BLOCK_TORCH = textwrap.dedent("""
    import sys
    class _NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ModuleNotFoundError("No module named 'torch' (blocked by the test)", name="torch")
            return None
    sys.meta_path.insert(0, _NoTorch())
""")


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("torchfree") / "export"
    targets = "onnx,ort-int8"
    try:
        import openvino  # noqa: F401

        targets += ",openvino"
    except ImportError:
        pass
    export_model(ExportOptions("topformer-t", targets=targets, input_size=(128, 128), calib_count=2,
                               verify_frames=1, out=out))
    return out


def test_runtime_predicts_without_torch(folder: Path, tmp_path: Path) -> None:
    targets = json.loads((folder / "manifest.json").read_text())["targets"]
    r = _run(f"""
        import json, numpy as np
        import segedge.runtime
        from segedge.runtime import Segmenter
        out = {{}}
        for t in {sorted(targets)!r}:
            with Segmenter.load({str(folder)!r}, target=t, threads=1) as seg:
                labels = seg.predict(np.full((90, 120, 3), 100, np.uint8))
                out[t] = [seg.backend.name, list(labels.shape), str(labels.dtype)]
        out["torch_loaded"] = "torch" in sys.modules
        print(json.dumps(out))
    """, tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res.pop("torch_loaded") is False
    assert set(res) == set(targets)
    for t, (backend, shape, dtype) in res.items():
        assert shape == [90, 120] and dtype == "uint8", t
        assert backend == ("openvino" if t.startswith("openvino") else "onnxruntime")


def test_cli_help_and_doctor_without_torch(tmp_path: Path) -> None:
    r = _run("""
        sys.argv = ["segedge", "--help"]
        from segedge.cli import main
        try:
            main()
        except SystemExit as e:
            assert e.code == 0, e.code
        assert "torch" not in sys.modules
    """, tmp_path)
    assert r.returncode == 0 and "export" in r.stdout and "doctor" in r.stdout, r.stderr
    r = _run("""
        sys.argv = ["segedge", "doctor", "--json"]
        from segedge.cli import main
        try:
            main()
        except SystemExit as e:
            assert e.code == 0, e.code
    """, tmp_path)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    torch_row = next(t for t in rep["toolkits"] if t["name"] == "torch")
    assert torch_row["available"] is False and "pip install torch" in torch_row["reason"]
    assert next(t for t in rep["targets"] if t["name"] == "onnx")["run_here"] is True


def test_doctor_json_keys_and_isa_parsing() -> None:
    from segedge.doctor import environment_report, isa_flags

    rep = environment_report()
    assert {"segedge", "python", "os", "cpu", "gpus", "toolkits", "backends", "targets", "plugin_errors"} <= set(rep)
    assert {"model", "arch", "cores_available", "isa"} <= set(rep["cpu"])
    assert {"onnxruntime", "openvino", "tensorrt", "coreml", "torch"} <= {t["name"] for t in rep["toolkits"]}
    trt = next(t for t in rep["toolkits"] if t["name"] == "tensorrt")
    assert set(trt) >= {"version", "available", "reason", "runs_here", "run_reason", "install_hint"}
    x86 = isa_flags("flags\t\t: fpu sse avx2 avx512f avx512_vnni avx512_bf16 amx_tile amx_int8\n")
    assert x86["avx512_vnni"] and x86["amx_int8"] and x86["avx512_bf16"] and not x86["neon"]
    arm = isa_flags("Features\t: fp asimd evtstrm aes asimddp i8mm bf16\n")
    assert arm["neon"] and arm["arm_dotprod"] and arm["arm_i8mm"] and not arm["avx2"]
