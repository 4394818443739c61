"""Foreign checkpoint layouts (NVlabs, mmseg MiT) through real files, and one clear error per bad input."""

from __future__ import annotations

import argparse
import re

import pytest
import torch

from segedge.errors import CheckpointError
from segedge.models import create_model, read_checkpoint, save_checkpoint
from segedge.models.converters import detect_format

NUM_CLASSES = 5
X = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial LayerNorm / BN affine, BN statistics and biases, so that any mis-mapped tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm2d)):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and m.bias is not None:
                m.bias.copy_(0.05 * torch.randn(m.bias.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def b0():
    torch.manual_seed(0)
    return _randomize(create_model("b0", num_classes=NUM_CLASSES))


def to_nvlabs(sd: dict[str, torch.Tensor], num_classes: int = NUM_CLASSES) -> dict[str, torch.Tensor]:
    """segedge names → NVlabs SegFormer names: attn.k/attn.v fused into attn.kv, plus the unused conv_seg."""
    out = {}
    for k, v in sd.items():
        if ".attn.v." in k:
            continue
        if ".attn.k." in k:
            out[k.replace(".attn.k.", ".attn.kv.")] = torch.cat([v, sd[k.replace(".attn.k.", ".attn.v.")]], 0)
        else:
            out[k] = v.clone()
    out["decode_head.conv_seg.weight"] = torch.randn(num_classes, 256, 1, 1)
    out["decode_head.conv_seg.bias"] = torch.randn(num_classes)
    return out


def to_mmseg_backbone(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """segedge backbone names → mmseg 1.x MixVisionTransformer names (as tools/model_converters/mit2mmseg.py)."""
    out = {}
    block = {"norm1": "norm1", "norm2": "norm2", "attn.proj": "attn.attn.out_proj", "attn.sr": "attn.sr",
             "attn.norm": "attn.norm", "mlp.fc1": "ffn.layers.0", "mlp.dwconv.dwconv": "ffn.layers.1",
             "mlp.fc2": "ffn.layers.4"}
    for k, v in sd.items():
        if not k.startswith("backbone."):
            continue
        if m := re.fullmatch(r"backbone\.patch_embed(\d)\.(proj|norm)\.(\w+)", k):
            out[f"backbone.layers.{int(m[1]) - 1}.0.{'projection' if m[2] == 'proj' else 'norm'}.{m[3]}"] = v
        elif m := re.fullmatch(r"backbone\.norm(\d)\.(\w+)", k):
            out[f"backbone.layers.{int(m[1]) - 1}.2.{m[2]}"] = v
        elif m := re.fullmatch(r"backbone\.block(\d)\.(\d+)\.attn\.q\.(\w+)", k):
            pre = f"backbone.block{m[1]}.{m[2]}.attn"
            qkv = torch.cat([v, sd[f"{pre}.k.{m[3]}"], sd[f"{pre}.v.{m[3]}"]], 0)
            out[f"backbone.layers.{int(m[1]) - 1}.1.{m[2]}.attn.attn.in_proj_{m[3]}"] = qkv
        elif re.fullmatch(r"backbone\.block\d\.\d+\.attn\.[kv]\.\w+", k):
            continue
        elif m := re.fullmatch(r"backbone\.block(\d)\.(\d+)\.(.+)\.(weight|bias)", k):
            if m[3] in ("mlp.fc1", "mlp.fc2") and m[4] == "weight":
                v = v[:, :, None, None]  # mmseg's MixFFN uses 1×1 convs
            out[f"backbone.layers.{int(m[1]) - 1}.1.{m[2]}.{block[m[3]]}.{m[4]}"] = v
        else:
            raise AssertionError(f"unmapped key {k}")
    return out


def _logits(model, x=X):
    with torch.no_grad():
        return model.eval()(x)


def _feats(model, x=X):
    with torch.no_grad():
        return model.eval().backbone(x)


# ------------------------------------------------------------------------------------------------ NVlabs

def test_nvlabs_pth_roundtrip(b0, tmp_path):
    sd = to_nvlabs(b0.state_dict())
    assert "backbone.block1.0.attn.kv.weight" in sd and "backbone.block1.0.attn.k.weight" not in sd
    path = tmp_path / "segformer.b0.512x512.ade.160k.pth"
    # mmcv checkpoints wrap the weights with plain-data meta: it must load with weights_only=True.
    torch.save({"meta": {"CLASSES": tuple("abcde"), "mmcv_version": "1.2.7", "iter": 160000},
                "state_dict": sd}, path)
    model = create_model("b0", weights=path)
    cfg = model.pretrained_cfg
    assert (cfg["weights_format"], cfg["num_classes"], cfg["ln_eps"]) == ("nvlabs", NUM_CLASSES, 1e-6)
    assert torch.equal(_logits(model), _logits(b0))


def test_nvlabs_kv_split_matches_nvlabs_attention(b0, tmp_path):
    """The kv split must follow NVlabs' forward (kv.reshape(B, N, 2, heads, hd)), checked against a copy of it."""
    sd = to_nvlabs(b0.state_dict())
    torch.save(sd, tmp_path / "nv.pth")
    model = create_model("b0", weights=tmp_path / "nv.pth").eval()
    attn = model.backbone.block2[0].attn  # stage 2: dim 64, 2 heads, sr 4
    pre = "backbone.block2.0.attn"
    h, w, c, heads = 8, 12, 64, 2
    x = torch.randn(1, h * w, c, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        lin = torch.nn.functional.linear
        q = lin(x, sd[f"{pre}.q.weight"], sd[f"{pre}.q.bias"]).reshape(1, h * w, heads, c // heads).permute(0, 2, 1, 3)
        x_ = torch.nn.functional.conv2d(x.permute(0, 2, 1).reshape(1, c, h, w), sd[f"{pre}.sr.weight"],
                                        sd[f"{pre}.sr.bias"], stride=4).reshape(1, c, -1).permute(0, 2, 1)
        x_ = torch.nn.functional.layer_norm(x_, (c,), sd[f"{pre}.norm.weight"], sd[f"{pre}.norm.bias"], 1e-5)
        kv = lin(x_, sd[f"{pre}.kv.weight"], sd[f"{pre}.kv.bias"]).reshape(1, -1, 2, heads, c // heads)
        k, v = kv.permute(2, 0, 3, 1, 4)
        a = ((q @ k.transpose(-2, -1)) * (c // heads) ** -0.5).softmax(-1)
        ref = lin((a @ v).transpose(1, 2).reshape(1, h * w, c), sd[f"{pre}.proj.weight"], sd[f"{pre}.proj.bias"])
        out = attn(x, h, w)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_nvlabs_imagenet_backbone(b0, tmp_path):
    sd = {k[len("backbone."):]: v for k, v in to_nvlabs(b0.state_dict()).items() if k.startswith("backbone.")}
    sd["head.weight"], sd["head.bias"] = torch.randn(1000, 256), torch.randn(1000)  # ImageNet classifier
    torch.save(sd, tmp_path / "mit_b0.pth")
    with pytest.raises(CheckpointError, match=r"mit_b0.pth \(NVlabs MiT backbone format\) holds only a backbone"):
        create_model("b0", weights=tmp_path / "mit_b0.pth")
    model = create_model("b0", weights=tmp_path / "mit_b0.pth", backbone_only=True, num_classes=11)
    assert model.pretrained_cfg["num_classes"] == 11
    for a, b in zip(_feats(model), _feats(b0)):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------ mmseg

@pytest.fixture(scope="module")
def mmseg_full(b0):
    sd = to_mmseg_backbone(b0.state_dict())
    # mmseg's SegformerHead: a ConvModule per stage, a fusion ConvModule, conv_seg.
    for i, c in enumerate((32, 64, 160, 256)):
        sd[f"decode_head.convs.{i}.conv.weight"] = torch.randn(256, c, 1, 1)
        sd[f"decode_head.convs.{i}.bn.weight"] = torch.ones(256)
    sd["decode_head.fusion_conv.conv.weight"] = torch.randn(256, 1024, 1, 1)
    sd["decode_head.conv_seg.weight"] = torch.randn(NUM_CLASSES, 256, 1, 1)
    return sd


def test_mmseg_backbone_only(b0, mmseg_full, tmp_path):
    path = tmp_path / "segformer_mit-b0_mmseg.pth"
    torch.save({"meta": {"dataset_meta": {"classes": list("abcde")}}, "state_dict": mmseg_full}, path)
    with pytest.raises(CheckpointError, match=r"mmseg SegFormer checkpoint: its SegformerHead .* different "
                                              r"decoder .*segedge train --weights"):
        create_model("b0", weights=path)
    model = create_model("b0", weights=path, backbone_only=True)
    cfg = model.pretrained_cfg
    assert (cfg["weights_format"], cfg["ln_eps"], cfg["num_classes"]) == ("mmseg", 1e-6, 150)
    for a, b in zip(_feats(model), _feats(b0)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_mmseg_bare_backbone(b0, tmp_path):
    sd = {k[len("backbone."):]: v for k, v in to_mmseg_backbone(b0.state_dict()).items()}
    torch.save(sd, tmp_path / "mit_b0_mmseg.pth")
    ck = read_checkpoint(tmp_path / "mit_b0_mmseg.pth", "b0", backbone_only=True)
    assert ck.format == "mmseg" and ck.num_classes is None and ck.backbone_only
    model = create_model("b0", weights=tmp_path / "mit_b0_mmseg.pth", backbone_only=True, num_classes=3)
    for a, b in zip(_feats(model), _feats(b0)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_mmseg_block_matches_multihead_attention(b0, mmseg_full, tmp_path):
    """Run mmseg's attention (torch nn.MultiheadAttention + sr) and MixFFN (1×1 convs) on the mmseg-named
    tensors, and compare with the converted segedge block: checks the q/k/v order and the conv→linear reshape."""
    torch.save(mmseg_full, tmp_path / "m.pth")
    blk = create_model("b0", weights=tmp_path / "m.pth", backbone_only=True).eval().backbone.block3[1]
    pre = "backbone.layers.2.1.1"
    c, heads, h, w = 160, 5, 6, 8
    x = torch.randn(1, h * w, c, generator=torch.Generator().manual_seed(4))
    mha = torch.nn.MultiheadAttention(c, heads, batch_first=True).eval()
    ffn = torch.nn.Sequential(torch.nn.Conv2d(c, 4 * c, 1), torch.nn.Conv2d(4 * c, 4 * c, 3, 1, 1, groups=4 * c),
                              torch.nn.GELU(), torch.nn.Identity(), torch.nn.Conv2d(4 * c, c, 1)).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(mmseg_full[f"{pre}.attn.attn.in_proj_weight"])
        mha.in_proj_bias.copy_(mmseg_full[f"{pre}.attn.attn.in_proj_bias"])
        mha.out_proj.weight.copy_(mmseg_full[f"{pre}.attn.attn.out_proj.weight"])
        mha.out_proj.bias.copy_(mmseg_full[f"{pre}.attn.attn.out_proj.bias"])
        for i in (0, 1, 4):
            ffn[i].weight.copy_(mmseg_full[f"{pre}.ffn.layers.{i}.weight"])
            ffn[i].bias.copy_(mmseg_full[f"{pre}.ffn.layers.{i}.bias"])
        ln = torch.nn.functional.layer_norm
        xn = ln(x, (c,), mmseg_full[f"{pre}.norm1.weight"], mmseg_full[f"{pre}.norm1.bias"], 1e-6)
        kv = torch.nn.functional.conv2d(xn.transpose(1, 2).reshape(1, c, h, w), mmseg_full[f"{pre}.attn.sr.weight"],
                                        mmseg_full[f"{pre}.attn.sr.bias"], stride=2).flatten(2).transpose(1, 2)
        kv = ln(kv, (c,), mmseg_full[f"{pre}.attn.norm.weight"], mmseg_full[f"{pre}.attn.norm.bias"], 1e-5)
        y = x + mha(xn, kv, kv, need_weights=False)[0]
        yn = ln(y, (c,), mmseg_full[f"{pre}.norm2.weight"], mmseg_full[f"{pre}.norm2.bias"], 1e-6)
        ref = y + ffn(yn.transpose(1, 2).reshape(1, c, h, w)).flatten(2).transpose(1, 2)
        out = blk(x, h, w)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------ bad inputs

def _one_line_error(match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(CheckpointError, match=match) as e:
        fn(*args, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 400
    return msg


def _topformer_t_state() -> dict[str, torch.Tensor]:
    return create_model("topformer-t", num_classes=NUM_CLASSES).state_dict()


def test_topformer_checkpoint_for_segformer(tmp_path):
    torch.save({"state_dict": _topformer_t_state()}, tmp_path / "topformer-T.pth")
    _one_line_error(r"topformer-T.pth is a topformer checkpoint \(official TopFormer format\), but 'b0' is a "
                    r"segformer model; pass --model topformer-t",
                    create_model, "b0", weights=tmp_path / "topformer-T.pth")


def test_segformer_checkpoint_for_topformer(b0, tmp_path):
    torch.save(to_nvlabs(b0.state_dict()), tmp_path / "nv.pth")
    _one_line_error(r"nv.pth is a segformer checkpoint \(NVlabs SegFormer format\), but 'topformer-s' is a "
                    r"topformer model; pass --model b0", create_model, "topformer-s", weights=tmp_path / "nv.pth")


def test_unknown_layout(tmp_path):
    torch.save({"encoder.conv1.weight": torch.zeros(8, 3, 3, 3), "fc.weight": torch.zeros(2, 8)}, tmp_path / "r.pth")
    _one_line_error(r"r.pth: unrecognised checkpoint layout \(first keys: encoder.conv1.weight, fc.weight\)",
                    create_model, "b0", weights=tmp_path / "r.pth")


def test_truncated_safetensors(b0, tmp_path):
    path = save_checkpoint(b0, tmp_path / "b0.safetensors", {"model": "b0", "num_classes": NUM_CLASSES})
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    _one_line_error(r"cut.safetensors is not a readable safetensors file .*truncated or corrupt",
                    create_model, "b0", weights=tmp_path / "cut.safetensors")


def test_truncated_pth(b0, tmp_path):
    torch.save(to_nvlabs(b0.state_dict()), tmp_path / "nv.pth")
    data = (tmp_path / "nv.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 3])
    _one_line_error(r"cut.pth is not a readable PyTorch checkpoint .*truncated or corrupt",
                    create_model, "b0", weights=tmp_path / "cut.pth")


def test_garbage_pth_is_called_corrupt_not_unsafe(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"garbage, not a checkpoint\n")
    _one_line_error(r"junk.pth is not a readable PyTorch checkpoint \(Unsupported operand \d+\); .*corrupt",
                    create_model, "b0", weights=tmp_path / "junk.pth")


def test_pickled_python_objects_refused(b0, tmp_path):
    torch.save({"state_dict": to_nvlabs(b0.state_dict()), "args": argparse.Namespace(lr=0.1)}, tmp_path / "obj.pth")
    _one_line_error(r"obj.pth contains pickled Python objects \(argparse.Namespace\).*refuses to unpickle",
                    create_model, "b0", weights=tmp_path / "obj.pth")


def test_mismatched_num_classes(b0, tmp_path):
    torch.save(to_nvlabs(b0.state_dict()), tmp_path / "nv.pth")
    _one_line_error(rf"nv.pth has {NUM_CLASSES} classes but num_classes=3 was asked",
                    create_model, "b0", num_classes=3, weights=tmp_path / "nv.pth")


def test_missing_unexpected_misshaped_keys(b0, tmp_path):
    sd = to_nvlabs(b0.state_dict())
    del sd["backbone.block1.1.mlp.fc2.bias"]
    torch.save(sd, tmp_path / "missing.pth")
    _one_line_error(r"missing.pth \(nvlabs format\) does not fit SegFormer: 1 missing "
                    r"\(first: backbone.block1.1.mlp.fc2.bias\)", create_model, "b0", weights=tmp_path / "missing.pth")

    sd = to_nvlabs(b0.state_dict())
    sd["backbone.block1.0.attn.gamma"] = torch.ones(32)
    torch.save(sd, tmp_path / "extra.pth")
    _one_line_error(r"extra.pth \(nvlabs format\) does not fit SegFormer: 1 unexpected "
                    r"\(first: backbone.block1.0.attn.gamma\)", create_model, "b0", weights=tmp_path / "extra.pth")

    sd = to_nvlabs(b0.state_dict())
    sd["decode_head.linear_fuse.conv.weight"] = torch.zeros(256, 512, 1, 1)
    torch.save(sd, tmp_path / "shape.pth")
    _one_line_error(r"shape.pth \(nvlabs format\) does not fit SegFormer: 1 mis-shaped \(first: "
                    r"decode_head.linear_fuse.conv.weight \(256, 512, 1, 1\) vs model \(256, 1024, 1, 1\)\)",
                    create_model, "b0", weights=tmp_path / "shape.pth")


def test_wrong_variant_nvlabs(tmp_path):
    b1 = create_model("b1", num_classes=2)
    torch.save(to_nvlabs(b1.state_dict(), 2), tmp_path / "b1.pth")
    _one_line_error(r"b1.pth \(NVlabs SegFormer format\) holds 'b1' \(embed dims 64/128/320/512, depths 2/2/2/2, "
                    r"decoder dim 256\), but --model b0 expects embed dims 32/64/160/256.*; pass --model b1",
                    create_model, "b0", weights=tmp_path / "b1.pth")
    _one_line_error(r"holds 'b1' .* but --model b2 expects .*depths 3/4/6/3", create_model, "b2",
                    weights=tmp_path / "b1.pth", backbone_only=True)


def test_not_a_state_dict_and_missing_paths(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pth")
    _one_line_error(r"list.pth does not hold a state dict of tensors", create_model, "b0",
                    weights=tmp_path / "list.pth")
    _one_line_error(r"checkpoint not found: .*nope.pth", create_model, "b0", weights=tmp_path / "nope.pth")
    (tmp_path / "empty").mkdir()
    _one_line_error(r"holds no model.safetensors or pytorch_model.bin", create_model, "b0",
                    weights=tmp_path / "empty")


def test_segedge_checkpoint_of_other_model(b0, tmp_path):
    path = save_checkpoint(b0, tmp_path / "b0.safetensors", {"model": "b0", "num_classes": NUM_CLASSES})
    _one_line_error(r"b0.safetensors is a segedge checkpoint of 'b0', not 'topformer-t'", create_model,
                    "topformer-t", weights=path)


def test_detect_format_names():
    assert detect_format({"segformer.encoder.block.0.0.mlp.dense1.weight": torch.zeros(1)}) == "huggingface"
    assert detect_format({"segformer.stages.0.blocks.0.attention.q_proj.weight": torch.zeros(1)}) == "huggingface-v5"
    assert detect_format({"backbone.layers.0.0.projection.weight": torch.zeros(1)}) == "mmseg"
    assert detect_format({"backbone.tpm.stem.0.c.weight": torch.zeros(1)}) == "topformer-official"
    assert detect_format({"backbone.patch_embed1.proj.weight": torch.zeros(1),
                          "backbone.block1.0.attn.kv.weight": torch.zeros(1)}) == "nvlabs"
    assert detect_format({"patch_embed1.proj.weight": torch.zeros(1)}) == "nvlabs-backbone"
    assert detect_format({"conv1.weight": torch.zeros(1)}) is None


def test_segedge_checkpoint_backbone_only_new_classes(b0, tmp_path):
    path = save_checkpoint(b0, tmp_path / "b0.safetensors",
                           {"model": "b0", "num_classes": NUM_CLASSES, "class_names": list("abcde")})
    model = create_model("b0", weights=path, backbone_only=True, num_classes=3)
    assert model.pretrained_cfg["num_classes"] == 3
    assert model.pretrained_cfg["class_names"] == ["class_0", "class_1", "class_2"]
    for a, b in zip(_feats(model), _feats(b0)):
        assert torch.equal(a, b)
