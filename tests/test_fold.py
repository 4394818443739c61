"""The inference form (`--fold`, the default) through the INT8 targets: SegFormer's folded decoder convs are
quantized like any dense conv, every Q/DQ rule and TensorRT's placement still hold, and the INT8 graphs stay as close
to PyTorch as the as-trained graph's."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx
import pytest
import torch

from segedge.export import ExportOptions, export_model
from segedge.export.qdq_rules import check_placement, validate_qdq
from segedge.models import create_model, save_checkpoint

SIZE = (128, 128)


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    tmp = tmp_path_factory.mktemp("fold")
    torch.manual_seed(0)
    ckpt = save_checkpoint(create_model("b0", num_classes=11), tmp / "b0.safetensors",
                           {"model": "b0", "num_classes": 11, "input_size": list(SIZE)})
    out = {}
    for fold in (True, False):
        res = export_model(ExportOptions("b0", weights=ckpt, targets="ort-int8,qdq", input_size=SIZE, calib_count=4,
                                         fold=fold, out=tmp / f"fold-{fold}"))
        out["folded" if fold else "plain"] = (res.out_dir, res.manifest)
    return out


def test_folded_int8_graphs_follow_the_rules(exports: dict[str, tuple[Path, dict]]) -> None:
    out, man = exports["folded"]
    assert man["graph_form"]["folded"] == ["decode_head"]
    assert validate_qdq(out / "model.qdq.onnx") == [] and check_placement(out / "model.qdq.onnx") == []
    q = man["targets"]["ort-int8"]["quantization"]
    # conv scope: 4 patch embeds, 6 spatial reductions and now the 4 folded decoder convs; no Concat is left
    assert q["quantized_by_op"] == {"Conv": 14}
    assert man["targets"]["qdq"]["quantization"]["qdq_placement"] == "passed"
    qm = onnx.load(str(out / "model.qdq.onnx"))
    assert Counter(n.op_type for n in qm.graph.node)["Concat"] == 0


def test_folded_int8_stays_as_close_to_pytorch_as_the_plain_graph(exports: dict[str, tuple[Path, dict]]) -> None:
    for target in ("ort-int8", "qdq"):
        f = exports["folded"][1]["targets"][target]["verification"]
        p = exports["plain"][1]["targets"][target]["verification"]
        # random-init weights: near-ties everywhere; a bad fold (wrong stage, lost bias) drops far below this
        assert f["argmax_agreement"] >= min(0.9, p["argmax_agreement"] - 0.05), (target, f, p)


def test_ort_int8_records_its_speed_against_its_fp32_graph(exports: dict[str, tuple[Path, dict]]) -> None:
    # the fold removed the conv whose INT8 speed-up paid for ort-int8 on B0: the export now says how it compares
    for form in ("folded", "plain"):
        lat = exports[form][1]["targets"]["ort-int8"]["latency"]
        assert lat["int8_p50_ms"] > 0 and lat["fp32_p50_ms"] > 0 and lat["input"] == [1, 3, *SIZE]
        assert lat["ratio"] == pytest.approx(lat["int8_p50_ms"] / lat["fp32_p50_ms"], rel=2e-3, abs=2e-3)
