"""Params and MACs: the papers' numbers, attention counted analytically, meta == real model, ONNX cross-check."""

from __future__ import annotations

import json

import pytest
import torch

from segedge.errors import SegedgeError
from segedge.models import create_model
from segedge.models.complexity import CONVENTION, build_meta_model, cached_flops, count_flops, count_params
from segedge.models.segformer import MIT_CONFIGS, NUM_HEADS, SR_RATIOS


def test_segformer_b0_matches_the_paper_at_512():
    """SegFormer paper: B0 3.8 M params, "8.4 GFLOPs" at 512x512 on ADE20K, which are MACs incl. attention."""
    r = count_flops("b0", (512, 512), num_classes=150)
    assert 3.7e6 <= r["params"] <= 3.9e6
    assert 8.0 <= r["gmacs"] <= 8.8
    assert r["gflops"] == pytest.approx(2 * r["gmacs"])
    assert r["flops"] == 2 * r["macs"]
    assert r["convention"] == CONVENTION and "2 × GMACs" in CONVENTION


@pytest.mark.parametrize("name,params_m,gmacs", [
    ("topformer-t", 1.4, 0.6), ("topformer-s", 3.1, 1.2), ("topformer-b", 5.1, 1.8),
])
def test_topformer_matches_the_paper_at_512(name, params_m, gmacs):
    """TopFormer paper (ADE20K, 512x512): params within 5 %, GFLOPs (MACs) within 15 %."""
    r = count_flops(name, (512, 512), num_classes=150)
    assert r["params"] == pytest.approx(params_m * 1e6, rel=0.05)
    assert r["gmacs"] == pytest.approx(gmacs, rel=0.15)


def _segformer_attention_macs(variant: str, h: int, w: int) -> int:
    """q·kᵀ and attn·v: 2 · N · N_reduced · C per block (heads split C, they do not multiply it)."""
    cfg = MIT_CONFIGS[variant]
    total, sh, sw = 0, h // 4, w // 4
    for i in range(4):
        if i:
            sh, sw = (sh + 1) // 2, (sw + 1) // 2
        n = sh * sw
        nr = (sh // SR_RATIOS[i]) * (sw // SR_RATIOS[i])
        total += cfg["depths"][i] * 2 * n * nr * cfg["embed_dims"][i]
    assert NUM_HEADS  # imported to document that head count does not enter the formula
    return total


def _attention_core_macs(name: str, size: tuple[int, int]) -> int:
    """MACs inside attention modules that are not in their child layers (q/k/v/proj/sr): the two matmuls."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_meta_model(name)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.empty(1, 3, *size, device="meta"))
    per_module = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
    attn = [n for n, m in model.named_modules() if type(m).__name__ in ("EfficientSelfAttention", "Attention")]
    assert attn
    prefix = type(model).__name__ + "."
    total = 0
    for n in attn:
        own = per_module.get(prefix + n, 0)
        children = sum(per_module.get(f"{prefix}{n}.{c}", 0) for c, _ in model.get_submodule(n).named_children())
        total += own - children
    return total // 2


@pytest.mark.parametrize("variant,size", [("b0", (512, 512)), ("b0", (384, 512)), ("b2", (256, 320))])
def test_attention_matmuls_are_counted(variant, size):
    assert _attention_core_macs(variant, size) == _segformer_attention_macs(variant, *size)


def test_topformer_conv_macs_scale_with_pixels_and_attention_with_tokens_squared():
    small = count_flops("topformer-t", (256, 256))["macs_by_kind"]
    big = count_flops("topformer-t", (512, 512))["macs_by_kind"]
    assert big["conv"] == 4 * small["conv"]
    assert big["matmul"] == 16 * small["matmul"]  # TopFormer's only matmuls are attention on the 1/64 grid
    # 4 blocks x heads x (q·kᵀ + attn·v) on a (H/64)·(W/64) token grid: key_dim 16, value dim 32, 4 heads for T.
    n = (512 // 64) * (512 // 64)
    assert _attention_core_macs("topformer-t", (512, 512)) == big["matmul"] == 4 * 4 * (n * n * 16 + n * n * 32)


@pytest.mark.parametrize("name,size,classes", [("b0", (128, 192), 11), ("topformer-t", (128, 256), 11)])
def test_meta_count_equals_real_model_and_leaves_it_untouched(name, size, classes):
    model = create_model(name, num_classes=classes).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    real = count_flops(model, size)
    meta = count_flops(name, size, num_classes=classes)
    assert real["params"] == meta["params"] == count_params(model)
    assert real["macs"] == meta["macs"] and real["macs_by_kind"] == meta["macs_by_kind"]
    assert real["num_classes"] == classes
    assert model.training and all(m.training for m in model.modules())
    assert all(p.device.type == "cpu" for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_meta_model_has_no_storage_and_the_real_parameter_count():
    meta = build_meta_model("b1", num_classes=19)
    assert all(p.is_meta for p in meta.parameters())
    assert count_params(meta) == count_params(create_model("b1", num_classes=19))


def test_num_classes_changes_only_the_classifier():
    a = count_flops("b0", (256, 256), num_classes=150)
    b = count_flops("b0", (256, 256), num_classes=19)
    decoder_dim = MIT_CONFIGS["b0"]["decoder_dim"]
    assert a["params"] - b["params"] == (150 - 19) * (decoder_dim + 1)
    assert a["macs"] - b["macs"] == (150 - 19) * decoder_dim * (256 // 4) * (256 // 4)


@pytest.mark.parametrize("name,size", [("topformer-t", (100, 100)), ("b0", (100, 128)), ("b0", (0, 64))])
def test_invalid_sizes_are_user_errors(name, size):
    with pytest.raises(SegedgeError):
        count_flops(name, size)


def test_unregistered_module_needs_a_size_and_is_counted():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(8 * 16 * 16, 10))
    with pytest.raises(SegedgeError):
        count_flops(net)
    r = count_flops(net, (16, 16))
    assert r["macs"] == 8 * 3 * 9 * 16 * 16 + 8 * 16 * 16 * 10
    assert r["params"] == 8 * 3 * 9 + 8 + 8 * 16 * 16 * 10 + 10


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # static-size resize, expected for a fixed export
def test_onnx_graph_macs_agree(tmp_path):
    """Cross-check on the exported graph with onnxsim's ModelInfo (counts Conv/Gemm/MatMul MACs)."""
    onnx = pytest.importorskip("onnx")
    model_info = pytest.importorskip("onnxsim.model_info")
    for name, size in (("b0", (128, 160)), ("topformer-t", (256, 256))):
        model = create_model(name, num_classes=11).eval()
        path = tmp_path / f"{name}.onnx"
        torch.onnx.export(model, (torch.zeros(1, 3, *size),), str(path), opset_version=17, dynamo=False)
        onnx_macs = model_info.ModelInfo(onnx.load(str(path))).macs
        assert count_flops(model, size)["macs"] == onnx_macs
    # the inference form `segedge export` traces (SegFormer's folded decoder), counted the same way
    from segedge.models import deploy_form

    model = create_model("b0", num_classes=11).eval()
    folded, _ = deploy_form(model)
    torch.onnx.export(folded, (torch.zeros(1, 3, 128, 160),), str(tmp_path / "f.onnx"), opset_version=17, dynamo=False)
    inf = count_flops(model, (128, 160))["inference_form"]
    assert inf["folded"] == ["decode_head"] and round(inf["gmacs"] * 1e9) == model_info.ModelInfo(
        onnx.load(str(tmp_path / "f.onnx"))).macs
    assert inf["gmacs"] < 0.6 * count_flops(model, (128, 160))["gmacs"]
    assert count_flops("topformer-t", (256, 256))["inference_form"] is None  # nothing to fold


def test_cache_round_trip_and_corrupt_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGEDGE_CACHE_DIR", str(tmp_path))
    first = cached_flops("topformer-s", (128, 128), 21)
    files = list(tmp_path.glob("complexity-*.json"))
    assert len(files) == 1
    stored = json.loads(files[0].read_text())
    assert stored["topformer-s|128x128|21"]["macs"] == first["macs"]
    # A poisoned entry is what the cache returns: proves the second call reads the file.
    stored["topformer-s|128x128|21"]["macs"] = -1
    files[0].write_text(json.dumps(stored))
    assert cached_flops("topformer-s", (128, 128), 21)["macs"] == -1
    assert cached_flops("topformer-s", (128, 128), 21, use_cache=False)["macs"] == first["macs"]
    files[0].write_text("{not json")
    assert cached_flops("topformer-s", (128, 128), 21) == first


def test_unwritable_cache_is_skipped(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("SEGEDGE_CACHE_DIR", str(blocker / "sub"))  # parent is a file: cannot mkdir
    assert cached_flops("topformer-t", (64, 64))["macs"] == count_flops("topformer-t", (64, 64))["macs"]
