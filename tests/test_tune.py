"""`--target cpu` / `segedge tune`: the choice on recorded figures, the candidates, a real tuned export of TopFormer-T
(ONNX Runtime and OpenVINO candidates built, measured and timed), the runtime's default pick and its warning on
another CPU, and bad input as one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from segedge.errors import SegedgeError, SegedgeWarning
from segedge.tune.candidates import (Recipe, candidates, recipes, select_recipes, thread_counts)
from segedge.tune.select import TIE_RATIO, choose, pareto_front

REPO = Path(__file__).resolve().parent.parent


def _row(name: str, ms: float, drop: float, threads: int = 2) -> dict:
    return {"name": name, "p50_ms": ms, "drop_pt": drop, "threads": threads}


ROWS = [_row("ort-fp32/2t", 60.0, 0.0), _row("ov-int8-a/2t", 20.0, 0.5), _row("ov-int8-b/2t", 22.0, 0.2),
        _row("ov-fp32/bf16/2t", 24.0, 0.05), _row("ort-int8/2t", 40.0, 0.1)]


def test_choice_is_the_fastest_within_budget_and_names_what_it_beat() -> None:
    c = choose(ROWS, 0.3)
    assert c.chosen["name"] == "ov-int8-b/2t"
    assert [r["name"] for r in c.within] == ["ov-int8-b/2t", "ov-fp32/bf16/2t", "ort-int8/2t", "ort-fp32/2t"]
    assert "ov-int8-a/2t 20.00 ms" in c.why and "over budget" in c.why and "next: ov-fp32/bf16/2t" in c.why
    assert choose(ROWS, 0.6).chosen["name"] == "ov-int8-a/2t"  # a looser budget admits the faster one
    assert choose(ROWS, 0.0).chosen["name"] == "ort-fp32/2t"


def test_probe_drops_only_what_the_exact_fp32_candidates_already_beat() -> None:
    """An f16 hint ran B0 INT8 at seconds per frame on a Xeon: it is dropped before its accuracy is measured. The
    reference is the fastest FP32-exact candidate (certain to meet any budget), never a fast one that may fail it."""
    from segedge.tune.measure import PRUNE_FACTOR, hopeless

    probes = {"ov-int8-a/f16": 6000.0, "ov-int8-a/bf16": 9.0, "ov-fp32/f32": 20.0, "ort-fp32": 45.0,
              "ort-int8-conv": 39.0}
    out = hopeless(probes, exact=["ov-fp32/f32", "ort-fp32"], keep=["ort-fp32"])
    assert list(out) == ["ov-int8-a/f16"] and "ov-fp32/f32, 20.0 ms" in out["ov-int8-a/f16"]
    # 45 ms is over 2× the exact reference but the ORT FP32 row is the report's reference column: kept
    assert "ort-fp32" not in hopeless(probes, exact=["ov-fp32/f32"], keep=["ort-fp32"])
    assert "ort-fp32" in hopeless(probes, exact=["ov-fp32/f32"])
    assert hopeless(probes, exact=[]) == {}  # nothing certain to pass the budget: nothing can be ruled out
    edge = {"x": 10.0, "y": 10.0 * PRUNE_FACTOR}
    assert hopeless(edge, exact=["x"]) == {}  # exactly at the factor: kept


def test_latency_ties_go_to_the_smaller_drop_then_fewer_threads() -> None:
    near = 22.0 * (1 + TIE_RATIO / 2)
    rows = [_row("x/2t", 22.0, 0.25), _row("y/2t", near, 0.05), _row("z/1t", near, 0.05, threads=1),
            _row("w/2t", 22.0 * (1 + 2 * TIE_RATIO), 0.0)]
    c = choose(rows, 0.3)
    assert c.chosen["name"] == "z/1t" and "a tie" in c.why  # w is beyond the tie window despite its 0.0 drop


def test_ties_keep_the_family_islands_and_negative_drops_count_as_zero() -> None:
    """A budget set from the deployment's own drive cannot see what the islands protect (TopFormer-T: dropping tpm.s1
    looked 0.2 pt better on val, lost 1.1 pt on the dusk drive): within a tie, the variant keeping them wins."""
    no_isl = {**_row("ov-int8-mixed/2t", 10.0, -0.2), "keeps_islands": False}
    isl = {**_row("ov-int8-mixed-islands/2t", 10.3, 0.03), "keeps_islands": True}
    c = choose([no_isl, isl], 0.3)
    assert c.chosen["name"] == "ov-int8-mixed-islands/2t" and "drops the family's float islands" in c.why
    far = {**isl, "p50_ms": 10.0 * (1 + 2 * TIE_RATIO)}
    assert choose([no_isl, far], 0.3).chosen["name"] == "ov-int8-mixed/2t"  # a real latency gain still wins
    better = _row("a/2t", 10.0, -0.3)
    one = _row("b/1t", 10.1, 0.0, threads=1)
    assert choose([better, one], 0.3).chosen["name"] == "b/1t"  # −0.3 is no better than 0.0: fewer threads win


def test_unmet_budget_is_one_line_naming_the_best_drop() -> None:
    with pytest.raises(SegedgeError) as ei:
        choose([_row("a", 10, 0.9), _row("b", 12, 0.4)], 0.3)
    msg = str(ei.value)
    assert "\n" not in msg and "0.40 pt (b, 12.0 ms)" in msg and "--max-miou-drop" in msg
    with pytest.raises(SegedgeError, match="no CPU candidate was measured"):
        choose([], 0.3)


def test_pareto_front() -> None:
    assert pareto_front(ROWS) == ["ov-int8-a/2t", "ov-int8-b/2t", "ov-fp32/bf16/2t", "ort-fp32/2t"]


def test_recipes_per_family_and_the_candidate_filter() -> None:
    seg = recipes("segformer", (False, True), True, True, ("f32", "bf16"))  # NNCF islands only (stage-1 sr convs)
    names = [r.name for r in seg]
    assert names[:3] == ["ort-fp32", "ort-int8-conv", "ort-int8-all"] and "ov-int8-mixed-transformer-islands" in names
    drops = {r.name for r in seg if r.drops_islands}
    assert drops == {"ov-int8-performance", "ov-int8-mixed", "ov-int8-mixed-transformer"}
    no_ov = [r.name for r in recipes("topformer", (False, False), False, False, ())]
    assert no_ov == ["ort-fp32", "ort-int8-conv", "ort-int8-all"]
    every = recipes("topformer", (True, True), True, True, ("f32", "bf16"))
    assert [r.name for r in select_recipes(every, "ov-fp32, ort-int8-all*")] == [
        "ort-int8-all", "ort-int8-all-islands", "ov-fp32"]
    with pytest.raises(SegedgeError, match="matches none"):
        select_recipes(every, "tensorrt*")
    cands = candidates([r for r in every if r.name in ("ort-fp32", "ov-fp32")], [1, 2])
    assert [c.name for c in cands] == ["ort-fp32/1t", "ort-fp32/2t", "ov-fp32/f32/1t", "ov-fp32/f32/2t",
                                       "ov-fp32/bf16/1t", "ov-fp32/bf16/2t"]
    assert Recipe("r", "onnxruntime", "int8", (("scope", "conv"),)).param("scope") == "conv"


def test_thread_counts() -> None:
    assert thread_counts("auto")[0] == 1 and thread_counts("1") == [1]
    for bad in ("0", "x", "1,100000"):
        with pytest.raises(SegedgeError, match="--cpu-threads"):
            thread_counts(bad)


# -- a real tuned export ----------------------------------------------------------------------------------------------

CANDIDATES = "ort-fp32,ort-int8-all,ov-fp32,ov-int8-performance"


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TopFormer-T at 128x128 exported with --target cpu (4 recipes, f32/bf16 hints where the CPU has bf16)."""
    from conftest import write_camvid_like

    from segedge.export import ExportOptions, export_model

    base = tmp_path_factory.mktemp("tune")
    data = write_camvid_like(base / "camvid")
    out = base / "export"
    export_model(ExportOptions("topformer-t", targets=["onnx", "ort-int8", "cpu"], input_size=(128, 128),
                               calib=str(data / "train"), val=data, verify_frames=1, out=out,
                               target_options={"cpu_candidates": CANDIDATES, "cpu_threads": "1", "cpu_iters": 3}))
    return out


def test_tuned_export_records_the_choice_the_cpu_and_every_candidate(tuned: Path) -> None:
    man = json.loads((tuned / "manifest.json").read_text())
    entry = man["targets"]["cpu"]
    rep = json.loads((tuned / "cpu-tune.json").read_text())
    names = {r["recipe"] for r in rep["rows"]}
    assert names == set(CANDIDATES.split(","))
    assert all(r["threads"] == 1 for r in rep["rows"])
    # the recorded choice is what the selection makes of the recorded figures
    assert choose(rep["rows"], rep["budget_pp"]).chosen["name"] == rep["choice"]["name"] == entry["tuned"]["candidate"]
    fp32 = next(r for r in rep["rows"] if r["recipe"] == "ort-fp32")
    assert fp32["drop_pt"] == 0 and fp32["argmax_agreement"] == 1.0 and fp32["vs_ort_fp32"] == 1.0
    assert rep["frames"]["budget"] == 2 and rep["frames"]["held_back"] == 1  # alternate frames of the 3 val frames
    # chosen on frame → labels as deployed; inference alone beside it. ONNX Runtime pre-processes in NumPy, so its
    # frame → labels time holds its inference time and more
    assert rep["format"] == "segedge-cpu-tune/2" and all(r["inference_p50_ms"] > 0 for r in rep["rows"])
    assert fp32["p50_ms"] > fp32["inference_p50_ms"]
    t = entry["tuned"]
    assert t["latency_ms"]["p50"] == next(r for r in rep["rows"] if r["name"] == t["candidate"])["p50_ms"]
    assert t["cpu"]["model"] and "avx2" in t["cpu"]["isa"] or t["cpu"]["arch"] != "x86_64"
    assert entry["threads"] == 1 and t["budget_pp"] == 0.3 and t["why"].startswith("fastest of")
    assert entry["file"] in ("model.cpu.onnx", "model.cpu.xml")
    assert entry["verification"]["argmax_agreement"] > 0.5
    assert set(entry["companion_files"]) >= {"cpu-tune.json", "cpu-tune.md", "cpu-tune.png"}
    assert "ort-int8" in man["targets"]  # the other targets stay


def test_runtime_picks_the_tuned_target_with_its_threads_and_warns_on_another_cpu(tuned: Path, tmp_path: Path
                                                                                   ) -> None:
    import numpy as np

    from segedge.runtime import Segmenter

    frame = np.zeros((90, 120, 3), np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SegedgeWarning)  # same CPU: no warning
        with Segmenter.load(tuned) as seg:
            assert seg.info.target == "cpu" and seg.backend.threads == 1
            assert seg.predict(frame).shape == (90, 120)
    moved = tmp_path / "moved"
    shutil.copytree(tuned, moved)
    man = json.loads((moved / "manifest.json").read_text())
    man["targets"]["cpu"]["tuned"]["cpu"]["model"] = "Some Other CPU"
    (moved / "manifest.json").write_text(json.dumps(man))
    with pytest.warns(SegedgeWarning, match="tuned on Some Other CPU"):
        Segmenter.load(moved, threads=2).close()
    with Segmenter.load(moved, target="ort-int8") as seg:  # an explicit target still wins
        assert seg.info.target == "ort-int8"


def _segedge(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "segedge", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def test_tune_folder_works_from_the_folders_onnx_and_keeps_every_other_target(tuned: Path, tmp_path: Path) -> None:
    from segedge.tune.folder import REFERENCE, tune_folder

    folder = tmp_path / "copy"
    shutil.copytree(tuned, folder)
    before = json.loads((folder / "manifest.json").read_text())
    res = tune_folder(folder, tuned.parent / "camvid", val_count=3,
                      target_options={"cpu_candidates": "ort-fp32,ort-int8-all", "cpu_threads": "1", "cpu_iters": 2})
    man = json.loads((folder / "manifest.json").read_text())
    assert set(man["targets"]) == set(before["targets"]) and res.manifest["targets"]["cpu"] == man["targets"]["cpu"]
    for name in ("onnx", "ort-int8"):  # untouched, byte for byte
        assert man["targets"][name] == before["targets"][name]
    cpu = man["targets"]["cpu"]
    assert cpu["tuned"]["candidate"].startswith(("ort-fp32", "ort-int8-all")) and cpu["runtime"] == "onnxruntime"
    assert cpu["verification"]["reference"] == REFERENCE and cpu["verification"]["argmax_agreement"] > 0.5
    assert "fp32_onnx_miou" in cpu["verification"]["val"]
    assert any("recorded source" in n for n in res.notes)
    rep = json.loads((folder / "cpu-tune.json").read_text())
    assert {r["recipe"] for r in rep["rows"]} == {"ort-fp32", "ort-int8-all"}
    (folder / "model.onnx").write_bytes(b"not the exported graph")  # the graph it would tune from must be the folder's
    with pytest.raises(SegedgeError, match="model.onnx changed since it was exported"):
        tune_folder(folder, tuned.parent / "camvid", val_count=3)


@pytest.mark.slow
def test_tune_cli_adds_cpu_to_an_existing_folder_without_torch(tmp_path: Path) -> None:
    """`segedge tune` in a real subprocess where importing torch fails (a device): the cpu target is added from the
    folder's ONNX, the other targets stay."""
    from conftest import write_camvid_like
    from test_torch_free import BLOCK_TORCH

    from segedge.export import ExportOptions, export_model

    data = write_camvid_like(tmp_path / "camvid")
    out = tmp_path / "exp"
    export_model(ExportOptions("topformer-t", targets=["onnx", "ort-int8", "openvino"], input_size=(128, 128),
                               calib=str(data / "train"), verify_frames=1, out=out))
    before = json.loads((out / "manifest.json").read_text())["targets"]
    code = BLOCK_TORCH + "import sys\nfrom segedge.cli import main\nmain(sys.argv[1:])\n"
    r = subprocess.run([sys.executable, "-c", code, "tune", str(out), "--val", str(data), "--cpu-candidates",
                        "ort-*,ov-int8-performance", "--cpu-iters", "2", "--cpu-threads", "1"], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "calibrating on the folder's recorded source" in r.stderr and "cpu: chose" in r.stdout
    man = json.loads((out / "manifest.json").read_text())
    assert all(man["targets"][k] == v for k, v in before.items())
    assert man["targets"]["cpu"]["verification"]["reference"] == "fp32-onnx"


@pytest.mark.parametrize("args, needle", [
    (["export", "--model", "topformer-t", "--target", "cpu"], "add --val DIR"),
    (["export", "--model", "topformer-t", "--target", "cpu", "--cpu-threads", "0", "--val", "{tmp}"],
     "--cpu-threads must be"),
    (["export", "--model", "topformer-t", "--target", "onnx", "--cpu-iters", "3"], "--cpu-iters applies to"),
    (["tune", "{tmp}/nope", "--val", "{tmp}"], "export folder not found"),
])
def test_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], needle: str) -> None:
    import signal

    from segedge.cli import main

    out = ["--out", str(tmp_path / "o")] if args[0] == "export" else []
    handler = signal.getsignal(signal.SIGTERM)  # main() installs its own
    try:
        with pytest.raises(SystemExit) as ei:
            main([*[a.format(tmp=tmp_path) for a in args], *out])
    finally:
        signal.signal(signal.SIGTERM, handler)
    err = capsys.readouterr().err.strip()
    assert ei.value.code == 2 and "\n" not in err and needle in err, err
    assert not (tmp_path / "o").exists()


def test_precision_hint_choice() -> None:
    """bf16 wins when faster and within budget; f32 wins ties and whenever the other hint is over budget."""
    from segedge.tune.hints import AGREEMENT_SLACK, pick_hint

    f32 = {"p50_ms": 10.0, "argmax_agreement": 0.999}
    assert pick_hint({"f32": f32, "bf16": {"p50_ms": 6.0, "argmax_agreement": 0.997}})[0] == "bf16"
    assert pick_hint({"f32": f32, "bf16": {"p50_ms": 9.9, "argmax_agreement": 0.999}})[0] == "f32"  # a tie
    far = 0.999 - 2 * AGREEMENT_SLACK
    hint, why = pick_hint({"f32": f32, "bf16": {"p50_ms": 6.0, "argmax_agreement": far}})
    assert hint == "f32" and "over budget: bf16" in why
    # with labelled frames the mIoU drop decides, against the budget
    lab = {"f32": {**f32, "drop_pt": 0.0}, "bf16": {"p50_ms": 6.0, "argmax_agreement": far, "drop_pt": 0.2}}
    assert pick_hint(lab, 0.3)[0] == "bf16" and pick_hint(lab, 0.1)[0] == "f32"


@pytest.mark.slow
def test_openvino_int8_budget_searches_the_nncf_presets(tmp_path: Path) -> None:
    """openvino-int8 --max-miou-drop: every NNCF preset with and without islands is measured; the fastest within
    budget is staged and the manifest records the search (drops on both halves, latency, CPU)."""
    from conftest import write_camvid_like

    from segedge.export import ExportOptions, export_model

    data = write_camvid_like(tmp_path / "camvid")
    res = export_model(ExportOptions("topformer-t", targets=["openvino-int8"], input_size=(128, 128),
                                     calib=str(data / "train"), val=data, verify_frames=1, out=tmp_path / "o",
                                     max_miou_drop=0.3, target_options={"ov_precision": "f32"}))
    e = res.manifest["targets"]["openvino-int8"]
    b = e["quantization"]["budget"]
    names = {c["name"].split("/")[0] for c in b["candidates"]} | {d["variant"].split("/")[0] for d in b["dropped"]}
    assert names == {f"ov-int8-{p}{i}" for p in ("performance", "mixed", "mixed-transformer") for i in ("", "-islands")}
    assert all("fp32-onnx/onnxruntime" in d["why"] for d in b["dropped"])  # no FP32 candidate: ORT FP32 is the yardstick
    assert all("/f32/" in c["name"] for c in b["candidates"])  # --ov-precision f32 restricts the hints
    chosen = next(c for c in b["candidates"] if c["name"].startswith(b["recipe"] + "/"))
    assert chosen["drop_pt"] <= 0.3 and b["budget_set"]["chosen"]["drop_pt"] == chosen["drop_pt"]
    assert e["inference_precision_hint"] == "f32" and b["latency"]["cpu"]["model"]
    assert e["quantization"]["preset"] == b["recipe"].split("-")[2]
