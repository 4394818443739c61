"""`segedge engine build`: bundle checks, generation dispatch, builder flags per generation, FP32 islands, the
floor, the transactional install and the CLI's one-line failure here.

Bundles are written by hand from a tiny real ONNX and its real onnxruntime outputs (reference.npz). TensorRT and
Polygraphy's TensorRT loaders are replaced by recording fakes (the fake engine computes with ONNX Runtime, see
test_tensorrt_backend.py), so every figure checked below is computed, and the `gpu` test at the end runs the real
path where TensorRT and a GPU exist.
"""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_tensorrt_backend import (FakeCudart, engine_bytes, fake_cuda, fake_trt, make_fake_trt,  # noqa: F401
                                   tiny_onnx)

from segedge.contract import MANIFEST_NAME, Manifest
from segedge.engine.bundle import Reference, build_command, engine_file
from segedge.errors import SegedgeError
from segedge.io import sha256_file

REPO = Path(__file__).resolve().parent.parent
ISLANDS = [{"node": "/head/Softmax", "op": "Softmax", "reason": "kept float"},
           {"node": "/gone/LayerNorm", "op": "LayerNormalization", "reason": "kept float"}]
BUILDERS = {("trt-int8", "≤10"): {"int8": True, "fp16": True, "precision_constraints": "obey",
                                   "strongly_typed": False},
            ("trt-fp16", "≤10"): {"fp16": True, "int8": False, "strongly_typed": False,
                                   "precision_constraints": "obey"}}


def _ort_outputs(onnx_path: Path, inputs: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    s = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(None, {"input": inputs[i:i + 1]})[0] for i in range(len(inputs))])


def make_bundle(root: Path, target: str = "trt-int8", generation: str = "10", labels: bool = False) -> Path:
    """An export folder with a pending `target` bundle (as the exporter writes it) and a plain onnx target."""
    folder = root / "export"
    folder.mkdir(parents=True)
    onnx_path = tiny_onnx(folder / f"model.{target}.onnx", labels=labels)
    plain = tiny_onnx(folder / "model.onnx")
    inputs = np.random.default_rng(5).normal(size=(3, 3, 16, 16)).astype(np.float32)
    Reference(inputs, _ort_outputs(onnx_path, inputs), ["a.png", "b.png", "c.png"]).save(folder / "reference.npz")

    def rec(p: Path) -> dict[str, Any]:
        return {"sha256": sha256_file(p), "size_bytes": p.stat().st_size}

    builder = {"strongly_typed": True} if generation == "11" else BUILDERS[(target, "≤10")]
    entry = {"file": onnx_path.name, "precision": target.split("-")[1], **rec(onnx_path), "runtime": "tensorrt",
             "verification": {"reference": "pytorch", "argmax_agreement": 0.995},
             "companion_files": {"reference.npz": rec(folder / "reference.npz")},
             "engine": {"status": "pending", "file": engine_file(target), "onnx": onnx_path.name,
                        "generation": generation, "reference": "reference.npz",
                        "build_command": build_command(folder, target), "builder": builder,
                        "fp32_islands": ISLANDS}}
    Manifest.from_dict({
        "num_classes": 4, "class_names": ["a", "b", "c", "d"], "model": "tiny",
        "input": {"name": "input", "height": 16, "width": 16},
        "output": {"kind": "labels" if labels else "logits", "stride": 4, "size": [4, 4],
                   "name": "labels" if labels else "logits"},
        "targets": {target: entry, "onnx": {"file": plain.name, "precision": "fp32", **rec(plain)}},
    }).write(folder)
    return folder


# -- fake Polygraphy TensorRT loaders -------------------------------------------------------------------------------
class FakeTensor:
    def __init__(self, dtype: Any) -> None:
        self.dtype = dtype


class FakeLayer:
    def __init__(self, name: str, dtypes: list[Any], metadata: str | None = None) -> None:
        self.name, self.metadata = name, metadata
        self._outputs = [FakeTensor(d) for d in dtypes]
        self.precision = None
        self.output_types: dict[int, Any] = {}

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_output(self, i: int) -> FakeTensor:
        return self._outputs[i]

    def set_output_type(self, i: int, dtype: Any) -> None:
        self.output_types[i] = dtype


class FakeNetwork:
    def __init__(self, layers: list[FakeLayer]) -> None:
        self.layers = layers

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def get_layer(self, i: int) -> FakeLayer:
        return self.layers[i]


def network_from_onnx(path: str, trt: Any) -> FakeNetwork:
    """One layer per ONNX node named after it, as TensorRT's parser does, plus a repeated name (`_1` suffix) and
    an auxiliary layer that only its `[ONNX Layer: …]` metadata ties to its node."""
    import onnx

    ints = {"ArgMax": trt.int32, "Cast": trt.uint8, "Shape": trt.int32}
    layers = [FakeLayer(n.name, [ints.get(n.op_type, trt.float32)]) for n in onnx.load(path).graph.node]
    layers += [FakeLayer("/head/Softmax_1", [trt.float32]),
               FakeLayer("(Unnamed Layer* 9) [Shuffle]", [trt.float32], "[ONNX Layer: /head/Softmax]")]
    return FakeNetwork(layers)


def make_fake_polygraphy(trt: Any, knobs: dict[str, Any]) -> types.ModuleType:
    """polygraphy.backend.trt with the loaders segedge uses, recording their arguments in `mod.calls`."""
    mod = types.ModuleType("polygraphy.backend.trt")
    mod.calls = []  # type: ignore[attr-defined]

    class NetworkFromOnnxPath:
        def __init__(self, path: str, **kw: Any) -> None:
            self.path = path
            mod.calls.append(("NetworkFromOnnxPath", kw))

        def __call__(self) -> tuple[Any, ...]:
            mod.network = network_from_onnx(self.path, trt)  # type: ignore[attr-defined]
            return types.SimpleNamespace(num_DLA_cores=knobs.get("dla_cores", 0)), mod.network, self

    class PostprocessNetwork:
        def __init__(self, network: Any, func: Any, name: str | None = None) -> None:
            self.network, self.func = network, func
            mod.calls.append(("PostprocessNetwork", {"name": name}))

        def __call__(self) -> tuple[Any, ...]:
            ret = self.network()
            self.func(network=ret[1])
            return ret

    class CreateConfig:
        def __init__(self, **kw: Any) -> None:
            mod.calls.append(("CreateConfig", kw))

        def __call__(self, builder: Any, network: Any) -> Any:
            return types.SimpleNamespace(DLA_core=-1, can_run_on_DLA=lambda layer: "Softmax" not in layer.name)

    class PostprocessConfig:
        def __init__(self, config: Any, func: Any) -> None:
            self.config, self.func = config, func

        def __call__(self, builder: Any, network: Any) -> Any:
            cfg = self.config(builder, network)
            self.func(builder, network, cfg)
            return cfg

    class Profile(dict):
        def add(self, name: str, min: Any, opt: Any, max: Any) -> "Profile":  # noqa: A002 - Polygraphy's names
            self[name] = (min, opt, max)
            return self

    class EngineBytesFromNetwork:
        def __init__(self, network: Any, config: Any = None, save_timing_cache: Any = None) -> None:
            self.network, self.config, self.cache = network, config, save_timing_cache
            mod.calls.append(("EngineBytesFromNetwork", {"save_timing_cache": save_timing_cache}))

        def __call__(self) -> bytes:
            builder, network, loader = self.network()
            mod.config = self.config(builder, network)  # type: ignore[attr-defined]
            if self.cache:
                Path(self.cache).write_bytes(b"timing cache from the fake builder")
            return engine_bytes(Path(loader.path), **knobs)

    for cls in (NetworkFromOnnxPath, PostprocessNetwork, CreateConfig, PostprocessConfig, Profile,
                EngineBytesFromNetwork):
        setattr(mod, cls.__name__, cls)
    return mod


@pytest.fixture
def fake_build(monkeypatch: pytest.MonkeyPatch, fake_trt: Any, fake_cuda: FakeCudart) -> Any:
    """Fake tensorrt + cuda-python + Polygraphy loaders; `fake_build.knobs` steers the fake engine (roll, dla)."""
    knobs: dict[str, Any] = {}
    poly = make_fake_polygraphy(fake_trt, knobs)
    monkeypatch.setitem(sys.modules, "polygraphy.backend.trt", poly)
    return types.SimpleNamespace(trt=fake_trt, cuda=fake_cuda, poly=poly, knobs=knobs)


def _calls(poly: Any, name: str) -> list[dict[str, Any]]:
    return [kw for n, kw in poly.calls if n == name]


# -- 1. the bundle --------------------------------------------------------------------------------------------------
def test_read_bundle_and_its_one_line_refusals(tmp_path: Path) -> None:
    from segedge.engine.build import read_bundle

    folder = make_bundle(tmp_path)
    b = read_bundle(folder, "trt-int8")
    assert b.onnx.name == "model.trt-int8.onnx" and b.precision == "int8" and b.reference.inputs.shape == (3, 3, 16, 16)
    for target, match in (("trt-fp16", "target 'trt-fp16' is not in"), ("onnx", "is not a TensorRT bundle")):
        with pytest.raises(SegedgeError, match=match):
            read_bundle(folder, target)
    ref = folder / "reference.npz"
    good = ref.read_bytes()
    ref.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(SegedgeError, match="reference.npz does not match the sha256"):
        read_bundle(folder, "trt-int8")
    ref.write_bytes(good[:100])
    with pytest.raises(SegedgeError, match="reference.npz is 100 bytes but manifest.json recorded"):
        read_bundle(folder, "trt-int8")
    ref.unlink()
    with pytest.raises(SegedgeError, match="reference.npz is missing from .*copy the export folder") as e:
        read_bundle(folder, "trt-int8")
    assert "\n" not in str(e.value)
    # A reference whose bytes match the manifest but that is not a reference at all: Reference.load's own line.
    ref.write_bytes(b"not a zip archive")
    man = Manifest.read(folder)
    man.targets["trt-int8"].companion_files["reference.npz"] = {"sha256": sha256_file(ref), "size_bytes": 17}
    man.write(folder)
    with pytest.raises(SegedgeError, match="reference.npz cannot be read"):
        read_bundle(folder, "trt-int8")


# -- 2. generation dispatch -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("made_for, version, refused", [
    ("10", "10.3.0", None), ("8.5", "8.5.2.2", None), ("8.6", "8.6.1.6", None), ("11", "11.0.1", None),
    ("10", "8.5.2.2", "--trt-version 8.5"), ("8.5", "10.3.0", "--trt-version 10"), ("11", "10.3.0",
                                                                                    "--trt-version 10"),
])
def test_generation_dispatch(tmp_path: Path, made_for: str, version: str, refused: str | None) -> None:
    from segedge.engine.build import check_generation, read_bundle

    bundle = read_bundle(make_bundle(tmp_path, generation=made_for), "trt-int8")
    if refused is None:
        assert check_generation(bundle, version) == made_for
        return
    with pytest.raises(SegedgeError, match=f"made for TensorRT {made_for} but this device has TensorRT {version}; "
                                           f"re-export it on the host with .*{refused}"):
        check_generation(bundle, version)


# -- 3. builder flags -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target, generation", [("trt-int8", "8.5"), ("trt-int8", "10"), ("trt-fp16", "8.6"),
                                                ("trt-fp16", "10"), ("trt-int8", "11"), ("trt-fp16", "11")])
def test_builder_flags_per_generation(tmp_path: Path, fake_build: Any, target: str, generation: str) -> None:
    from segedge.engine.build import build_serialized, builder_options, read_bundle

    bundle = read_bundle(make_bundle(tmp_path, target, generation), target)
    used = builder_options(bundle)
    result = build_serialized(bundle, used, fake_build.trt)
    poly = fake_build.poly
    (net,), (cfg,) = _calls(poly, "NetworkFromOnnxPath"), _calls(poly, "CreateConfig")
    assert all("calibrator" not in kw for _, kw in poly.calls)  # INT8 from the Q/DQ graph only
    if generation == "11":
        assert net == {"strongly_typed": True} and cfg == {}  # no precision flags exist in 11
        assert used == {"strongly_typed": True, "workspace_mb": None, "dla_core": None, "gpu_fallback": False,
                        "timing_cache": None, "profile": None}
        assert not _calls(poly, "PostprocessNetwork") and result.islands == {}
    else:
        assert net == {}  # no strongly_typed keyword: JetPack 5's Polygraphy predates it
        assert cfg == {"fp16": True, "int8": target == "trt-int8", "tf32": False, "precision_constraints": "obey"}
        assert _calls(poly, "PostprocessNetwork") == [{"name": "segedge FP32 islands"}]
        assert result.islands == {"nodes": 2, "matched_nodes": 1, "layers": 3, "unmatched": ["/gone/LayerNorm"]}
    assert result.plan.startswith(b"FAKE-TRT-ENGINE")


def test_device_options_reach_the_builder(tmp_path: Path, fake_build: Any) -> None:
    from segedge.engine.build import build_serialized, builder_options, read_bundle

    bundle = read_bundle(make_bundle(tmp_path), "trt-int8")
    cache = tmp_path / "caches" / "orin.cache"
    cache.parent.mkdir()
    fake_build.knobs["dla_cores"] = 2
    used = builder_options(bundle, workspace_mb=512, dla_core=1, timing_cache=cache)
    result = build_serialized(bundle, used, fake_build.trt)
    (cfg,) = _calls(fake_build.poly, "CreateConfig")
    assert cfg["memory_pool_limits"] == {"WORKSPACE": 512 << 20} and cfg["load_timing_cache"] == str(cache)
    assert cfg["use_dla"] is True and cfg["allow_gpu_fallback"] is True
    assert _calls(fake_build.poly, "EngineBytesFromNetwork") == [{"save_timing_cache": str(cache)}]
    assert fake_build.poly.config.DLA_core == 1 and cache.is_file()
    assert result.dla["not_dla_capable"] == ["/head/Softmax", "/head/Softmax_1"]
    fake_build.knobs["dla_cores"] = 0
    with pytest.raises(SegedgeError, match="--dla asks for a DLA core but this device has none"):
        build_serialized(bundle, used, fake_build.trt)
    for kw, match in (({"workspace_mb": 0}, "--workspace must be a positive"), ({"dla_core": -1}, "--dla must be")):
        with pytest.raises(SegedgeError, match=match):
            builder_options(bundle, **kw)


def test_dynamic_export_gets_an_optimization_profile(tmp_path: Path) -> None:
    from segedge.engine.build import builder_options, read_bundle

    folder = make_bundle(tmp_path)
    man = Manifest.read(folder)
    data = man.to_dict()
    data["input"]["dynamic"] = {"batch": True, "height": True, "width": False}
    Manifest.from_dict(data).write(folder)
    profile = builder_options(read_bundle(folder, "trt-int8"))["profile"]
    assert profile == {"name": "input", "min": [1, 3, 32, 16], "opt": [1, 3, 16, 16], "max": [8, 3, 32, 16]}


# -- FP32 islands ---------------------------------------------------------------------------------------------------
def test_island_precisions_against_a_fake_network() -> None:
    from segedge.engine.build import set_island_precisions

    trt = make_fake_trt()
    net = FakeNetwork([
        FakeLayer("/enc/LayerNorm", [trt.float32]),
        FakeLayer("/enc/LayerNorm_2", [trt.float16]),  # the parser's suffix for a repeated name
        FakeLayer("(Unnamed Layer* 4) [Constant]", [trt.float32], "[ONNX Layer: /enc/LayerNorm]"),
        FakeLayer("/enc/Shape", [trt.int32]),  # an island node whose only layer is not float: left alone
        FakeLayer("/enc/MatMul", [trt.float32]),  # not an island
    ])
    islands = [{"node": "/enc/LayerNorm", "op": "LayerNormalization"}, {"node": "/enc/Shape", "op": "Shape"},
               {"node": "/missing", "op": "Softmax"}]
    report = set_island_precisions(net, islands, trt)
    assert report == {"nodes": 3, "matched_nodes": 1, "layers": 3, "unmatched": ["/enc/Shape", "/missing"]}
    pinned = [l.name for l in net.layers if l.precision is trt.float32]
    assert pinned == ["/enc/LayerNorm", "/enc/LayerNorm_2", "(Unnamed Layer* 4) [Constant]"]
    assert all(l.output_types == {0: trt.float32} for l in net.layers[:3])
    assert net.layers[3].precision is None and net.layers[4].precision is None and not net.layers[4].output_types


# -- 4./5. the whole build with fakes -------------------------------------------------------------------------------
def test_build_installs_engine_with_a_valid_manifest(tmp_path: Path, fake_build: Any) -> None:
    from segedge.engine.build import build_engine
    from segedge.runtime import Segmenter

    folder = make_bundle(tmp_path)
    cache = tmp_path / "tc.cache"
    said: list[str] = []
    out = build_engine(folder, "trt-int8", timing_cache=cache, progress=said.append)
    assert out["engine_path"] == str(folder / "model.trt-int8.engine") and said
    man = Manifest.read(folder)
    e = man.targets["trt-int8"]
    assert e.file == "model.trt-int8.engine" and e.runtime == "tensorrt"
    assert set(e.companion_files) == {"model.trt-int8.onnx", "reference.npz"}
    for name in e.files():  # every file the entry names is there with the recorded hash and size
        rec = {"sha256": e.sha256, "size_bytes": e.size_bytes} if name == e.file else e.companion_files[name]
        assert sha256_file(folder / name) == rec["sha256"] and (folder / name).stat().st_size == rec["size_bytes"]
    block = e.get("engine")
    assert block["status"] == "built" and block["generation"] == "10"
    assert block["built_on"]["tensorrt"] == "10.3.0"
    assert block["built_on"]["gpu"] == {"name": "Fake GPU", "compute_capability": "8.7", "source": "cuda-python"}
    assert block["built_on"]["cuda"] == {"runtime": "12.6", "driver": "12.8"}
    assert block["builder"]["int8"] is True and block["builder"]["timing_cache_sha256"] == sha256_file(cache)
    assert block["fp32_islands_applied"]["unmatched"] == ["/gone/LayerNorm"]
    v = e.verification
    assert v["argmax_agreement"] == 1.0 and v["max_abs_diff"] < 1e-6 and v["passed"] and v["frames"] == 3
    assert v["argmax_floor"] == 0.95 and e.get("bundle_verification") == {"reference": "pytorch",
                                                                          "argmax_agreement": 0.995}
    assert man.targets["onnx"].file == "model.onnx"  # the other target is kept
    assert not list(tmp_path.glob(".export.segedge-*"))  # no staging or old folders left
    with Segmenter.load(folder, target="trt-int8") as seg:  # the runtime now runs the engine
        assert seg.backend.name == "tensorrt" and seg.predict(np.zeros((16, 16, 3), np.uint8)).shape == (16, 16)
    build_engine(folder, "trt-int8")  # rebuilding a built target works from its companions
    assert Manifest.read(folder).targets["trt-int8"].get("bundle_verification")["reference"] == "pytorch"


def test_dla_build_lists_the_layers_left_on_the_gpu(tmp_path: Path, fake_build: Any) -> None:
    from segedge.commands.engine import summary_lines
    from segedge.engine.build import build_engine

    fake_build.knobs["dla_cores"] = 2
    out = build_engine(make_bundle(tmp_path), "trt-int8", dla_core=0, workspace_mb=256)
    dla = out["engine"]["dla"]
    # the fake inspector reports a DLA subgraph, a Softmax on the GPU and a reformat at the boundary
    assert dla == {"not_dla_capable": ["/head/Softmax", "/head/Softmax_1"], "gpu_engine_layers": ["/head/Softmax"]}
    assert out["engine"]["builder"]["dla_core"] == 0 and out["engine"]["builder"]["gpu_fallback"] is True
    lines = summary_lines(out)
    assert lines[0].startswith(f"engine: {out['engine_path']}") and "Fake GPU" in lines[0]
    assert "argmax agreement 100.0000% (floor 95%)" in lines[1]
    assert any(ln.startswith("DLA core 0: 1 engine layers on the GPU (/head/Softmax)") for ln in lines)


def test_labels_bundle_is_compared_by_equality(tmp_path: Path, fake_build: Any) -> None:
    from segedge.engine.build import build_engine

    out = build_engine(make_bundle(tmp_path, "trt-fp16", labels=True), "trt-fp16")
    v = out["verification"]
    assert v["output"] == "labels" and v["argmax_agreement"] == 1.0 and v["argmax_floor"] == 0.99
    assert v["pixels"] == 3 * 4 * 4


def test_engine_below_the_floor_is_refused_unless_kept(tmp_path: Path, fake_build: Any) -> None:
    from segedge.engine.build import build_engine

    folder = make_bundle(tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    fake_build.knobs["roll"] = 1  # the fake engine shifts the classes: argmax agreement collapses
    with pytest.raises(SegedgeError, match=r"agrees with the FP32 reference on \d+\.\d\d% of pixels \(needs 95.00%\), "
                                           r"max \|Δlogits\| .*--keep-failed") as e:
        build_engine(folder, "trt-int8")
    assert "\n" not in str(e.value)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing installed
    out = build_engine(folder, "trt-int8", keep_failed=True)
    assert out["verification"]["passed"] is False and (folder / "model.trt-int8.engine").is_file()


def test_val_adds_the_engines_miou(tmp_path: Path, fake_build: Any) -> None:
    from conftest import write_pairs

    from segedge.engine.build import build_engine

    val = tmp_path / "val"
    write_pairs(val / "images", val / "masks", 3, 24, 32, num_classes=3)
    out = build_engine(make_bundle(tmp_path), "trt-int8", val=val)
    m = out["verification"]["val"]
    assert m["frames"] == 3 and 0.0 <= m["miou"] <= 1.0


def test_interrupted_install_leaves_the_bundle(tmp_path: Path, fake_build: Any, monkeypatch: pytest.MonkeyPatch
                                               ) -> None:
    from segedge.engine.build import build_engine
    from segedge.export.folder import FolderTransaction

    folder = make_bundle(tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def killed(self: FolderTransaction) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(FolderTransaction, "commit", killed)
    with pytest.raises(KeyboardInterrupt):
        build_engine(folder, "trt-int8")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert not list(tmp_path.glob(".export.segedge-*"))


def test_generation_mismatch_builds_nothing(tmp_path: Path, fake_build: Any) -> None:
    from segedge.engine.build import build_engine

    folder = make_bundle(tmp_path, generation="8.5")
    with pytest.raises(SegedgeError, match=r"made for TensorRT 8.5 but this device has TensorRT 10.3.0.*"
                                           r"--trt-version 10"):
        build_engine(folder, "trt-int8")
    assert fake_build.poly.calls == [] and not (folder / "model.trt-int8.engine").exists()


# -- device facts ---------------------------------------------------------------------------------------------------
def test_device_facts_and_mismatch_rules(fake_trt: Any, fake_cuda: FakeCudart) -> None:
    from segedge.doctor import l4t_version, power_mode
    from segedge.engine.device import built_on, engine_mismatch

    facts = built_on()
    assert facts["tensorrt"] == "10.3.0" and facts["gpu"]["compute_capability"] == "8.7"
    assert engine_mismatch(facts, facts) is None
    assert engine_mismatch({"tensorrt": None, "gpu": None}, facts) is None  # unknown facts do not refuse
    assert "TensorRT 8.5.2" in engine_mismatch({**facts, "tensorrt": "8.5.2"}, facts)
    assert l4t_version("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64") == "36.4.3"
    assert l4t_version(None) is None and power_mode("NV Power Mode: 15W\n1\n") == "15W (1)"
    assert power_mode("garbage") is None


# -- the command line -----------------------------------------------------------------------------------------------
def test_cli_names_what_is_missing_in_one_line(tmp_path: Path) -> None:
    from segedge.toolkits.tensorrt import build_problem

    why = build_problem()
    if why is None:
        pytest.skip("TensorRT, Polygraphy and a GPU are present: the refusal cannot be observed")
    folder = make_bundle(tmp_path)
    r = subprocess.run([sys.executable, "-m", "segedge", "engine", "build", str(folder)], capture_output=True,
                       text=True, timeout=120, cwd=REPO)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines == [f"error: cannot build the trt-int8 engine here: {why}"] and "Traceback" not in r.stderr
    assert not (folder / "model.trt-int8.engine").exists()
    r = subprocess.run([sys.executable, "-m", "segedge", "engine", "build", str(tmp_path / "nowhere")],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 2 and "has no manifest.json" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run([sys.executable, "-m", "segedge", "engine", "--help"], capture_output=True, text=True,
                       timeout=120, cwd=REPO)
    assert r.returncode == 0 and "build" in r.stdout


# -- the real path (needs TensorRT, Polygraphy and an NVIDIA GPU) ---------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("target", ["trt-fp16", "trt-int8"])
def test_real_build_and_verify(tmp_path: Path, target: str) -> None:
    from segedge.toolkits.tensorrt import build_problem

    why = build_problem()
    if why:
        pytest.skip(f"needs TensorRT, Polygraphy and an NVIDIA GPU: {why}")
    import tensorrt

    from segedge.engine.build import build_engine
    from segedge.engine.bundle import generation_of
    from segedge.runtime import Segmenter

    folder = make_bundle(tmp_path, target, generation_of(tensorrt.__version__))
    out = build_engine(folder, target, timing_cache=tmp_path / "tc.cache")
    v = out["verification"]
    assert v["passed"] and v["argmax_agreement"] >= 0.95 and v["max_abs_diff"] < 0.05
    assert out["engine"]["built_on"]["gpu"]["compute_capability"]
    with Segmenter.load(folder, target=target) as seg:
        assert seg.predict(np.zeros((16, 16, 3), np.uint8)).shape == (16, 16)


def test_int8_floor_follows_the_bundles_own_proxy_agreement(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from segedge.contract import TargetEntry
    from segedge.engine.build import argmax_floor

    def bundle(precision: str, proxy: float | None) -> Any:
        e = {"file": "m.onnx", "precision": precision}
        if proxy is not None:
            e["verification"] = {"argmax_agreement": proxy}
        return SimpleNamespace(precision=precision, entry=TargetEntry.from_dict(e))

    assert argmax_floor(bundle("int8", 0.995)) == 0.95  # a good Q/DQ graph: the fixed floor
    assert argmax_floor(bundle("int8", 0.9517)) == 0.9217  # TopFormer-T's demo graph: 3 points under its proxy
    assert argmax_floor(bundle("int8", 0.5)) == 0.80  # never below the minimum
    assert argmax_floor(bundle("int8", None)) == 0.95
    assert argmax_floor(bundle("fp16", 0.9)) == 0.99  # FP16 has no proxy allowance
