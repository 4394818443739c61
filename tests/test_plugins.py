"""One registry style with suggestions and reported import failures; a new toolkit is three modules and no edit.

The test-only plug-in below (a toolkit, an export target with its own option, and a runtime backend) lives in a
temporary folder outside the repository and is loaded through $SEGEDGE_PLUGINS: it must appear in
`segedge export --help`, `segedge doctor` and `segedge bench`, and export → load → predict through it, without any
file of segedge being touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from segedge.errors import SegedgeError
from segedge.plugins import Registry

REPO = Path(__file__).resolve().parent.parent

PLUGIN = textwrap.dedent('''
    """A test-only toolkit + target + backend: the FP32 ONNX saved as .fake, run by ONNX Runtime."""
    from segedge.export.targets import TargetArtifact, TargetOption, TargetSpec, register_target
    from segedge.runtime.backends import Backend, register_backend
    from segedge.toolkits import Toolkit, register_toolkit

    register_toolkit(Toolkit(name="fakekit", title="FakeKit", module="json", distributions=(),
                             install_hint="pip install fakekit", purpose="test-only"))


    def build(ctx):
        path = ctx.staged("model.fake")
        path.write_bytes(ctx.fp32_model.SerializeToString())
        entry = {"file": "model.fake", "precision": "fp32", "runtime": "fake",
                 "fake_level": ctx.option("fake_level"), "verification": ctx.verify(ctx.fp32_model, "fake-fp32")}
        return TargetArtifact(path, entry)


    register_target(TargetSpec("fake-fp32", build, "test-only fake target", "fp32", toolkits=("fakekit",),
                               backend="fake", options=(TargetOption("fake_level", "--fake-level", "1",
                                                                     help="test-only option", parse=str),)))


    @register_backend
    class FakeBackend(Backend):
        name = "fake"
        suffixes = (".fake",)
        toolkit = "fakekit"

        @classmethod
        def open(cls, path, threads=None, **options):
            from segedge.runtime.backends.ort import OnnxRuntimeBackend

            b = cls()
            b.inner = OnnxRuntimeBackend.open(path, threads=threads)
            b.description = b.inner.description
            return b

        def input_spec(self):
            return self.inner.input_spec()

        def run_impl(self, x):
            return self.inner.run_impl(x)
''')


def _env(tmp: Path, plugins: str) -> dict[str, str]:
    env = {**os.environ, "SEGEDGE_PLUGINS": plugins, "COLUMNS": "220"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp), str(REPO), env.get("PYTHONPATH", "")])
    return env


def _segedge(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "segedge", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture()
def plugin_dir(tmp_path: Path) -> Path:
    d = tmp_path / "plugins"
    d.mkdir()
    (d / "segedge_fake_plugin.py").write_text(PLUGIN)
    (d / "segedge_broken_plugin.py").write_text("import segedge_no_such_dependency  # noqa\n")
    return d


def test_registry_suggestions_aliases_and_reported_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    from types import SimpleNamespace

    reg: Registry = Registry("widget", hint="choose from")
    reg.register(SimpleNamespace(name="ort-int8"), aliases=("ort8",))
    reg.register(SimpleNamespace(name="openvino"))
    assert reg.get("ORT8").name == "ort-int8" and "openvino" in reg and reg.names() == ["ort-int8", "openvino"]
    with pytest.raises(SegedgeError, match=r"unknown widget 'ort-int9': did you mean 'ort-int8'\? \(choose from "
                                           r"ort-int8, openvino\)"):
        reg.get("ort-int9")
    with pytest.raises(SegedgeError, match=r"unknown widget 'zzz' \(choose from"):
        reg.get("zzz")
    from segedge.export.targets import get_target
    from segedge.models import get_spec

    with pytest.raises(SegedgeError, match="did you mean 'openvino-int8'"):
        get_target("openvino_int8")
    with pytest.raises(SegedgeError, match="did you mean 'topformer-t'"):
        get_spec("topformr-t")


def test_test_only_plugin_appears_everywhere_without_touching_segedge(plugin_dir: Path, tmp_path: Path) -> None:
    env = _env(plugin_dir, "segedge_fake_plugin")
    before = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout

    help_text = _segedge(["export", "--help"], env, tmp_path).stdout
    assert "fake-fp32" in help_text and "--fake-level" in help_text
    assert "fake-fp32" in _segedge(["bench", "--help"], env, tmp_path).stdout
    doctor = json.loads(_segedge(["doctor", "--json"], env, tmp_path).stdout)
    assert any(t["name"] == "fakekit" and t["available"] for t in doctor["toolkits"])
    assert any(t["name"] == "fake-fp32" and t["build_here"] and t["run_here"] for t in doctor["targets"])
    assert any(b["name"] == "fake" and b["suffixes"] == [".fake"] for b in doctor["backends"])

    out = tmp_path / "exp"
    r = _segedge(["export", "--model", "topformer-t", "--target", "fake-fp32", "--fake-level", "2",
                  "--input-size", "128x128", "--out", str(out)], env, tmp_path)
    assert r.returncode == 0, r.stderr
    man = json.loads((out / "manifest.json").read_text())
    assert man["targets"]["fake-fp32"]["fake_level"] == "2" and (out / "model.fake").is_file()
    code = ("import numpy as np; from segedge.runtime import Segmenter; "
            f"s = Segmenter.load({str(out)!r}, target='fake-fp32'); "
            "print(s.backend.name, s.predict(np.zeros((60, 80, 3), np.uint8)).shape)")
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.split() == ["fake", "(60,", "80)"], r.stderr
    r = _segedge(["export", "--model", "topformer-t", "--target", "onnx", "--fake-level", "2",
                  "--input-size", "128x128", "--out", str(tmp_path / "x")], env, tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == ("error: --fake-level applies to --target fake-fp32 only; "
                                                      "add that target or drop --fake-level")
    after = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
    assert after == before  # no file of the repository was needed or touched


def test_broken_plugin_is_reported_not_dropped(plugin_dir: Path, tmp_path: Path) -> None:
    env = _env(plugin_dir, "segedge_broken_plugin,segedge_fake_plugin")
    doctor = json.loads(_segedge(["doctor", "--json"], env, tmp_path).stdout)
    assert "segedge_broken_plugin" in doctor["plugin_errors"]
    assert "segedge_no_such_dependency" in doctor["plugin_errors"]["segedge_broken_plugin"]
    assert any(t["name"] == "fake-fp32" for t in doctor["targets"])  # one broken plug-in spoils nothing else
    r = _segedge(["export", "--model", "b0", "--target", "fake-fp3"], env, tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "did you mean 'fake-fp32'" in r.stderr and "segedge_broken_plugin failed to import" in r.stderr
    assert "segedge doctor" in r.stderr
