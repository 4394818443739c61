"""TopFormer against the official hustvl/TopFormer code: key names, shapes, arithmetic, and regression goldens.

The official structure is restated here from mmseg/models/backbones/topformer.py, mmseg/models/decode_heads/
simple_head.py and local_configs/topformer/topformer_{tiny,small,base}.py, independently of segedge's model code.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from segedge.errors import CheckpointError
from segedge.models import create_model
from segedge.models.topformer import Attention, pyramid_pool

# local_configs/topformer/*.py (k, t, c, s per inverted residual) and the Topformer() defaults the configs keep:
# depths=4, key_dim=16, attn_ratios=2, mlp_ratios=2, c2t_stride=2, decode_out_indices=[1, 2, 3].
OFFICIAL_CONFIGS = {
    "t": dict(cfg=[[3, 1, 16, 1], [3, 4, 16, 2], [3, 3, 16, 1], [5, 3, 32, 2], [5, 3, 32, 1], [3, 3, 64, 2],
                   [3, 3, 64, 1], [5, 6, 96, 2], [5, 6, 96, 1]],
              channels=[16, 32, 64, 96], out_channels=[None, 128, 128, 128], embed_out_indice=[2, 4, 6, 8],
              num_heads=4, head_channels=128, is_dw=True),
    "s": dict(cfg=[[3, 1, 16, 1], [3, 4, 24, 2], [3, 3, 24, 1], [5, 3, 48, 2], [5, 3, 48, 1], [3, 3, 96, 2],
                   [3, 3, 96, 1], [5, 6, 128, 2], [5, 6, 128, 1], [3, 6, 128, 1]],
              channels=[24, 48, 96, 128], out_channels=[None, 192, 192, 192], embed_out_indice=[2, 4, 6, 9],
              num_heads=6, head_channels=192, is_dw=False),
    "b": dict(cfg=[[3, 1, 16, 1], [3, 4, 32, 2], [3, 3, 32, 1], [5, 3, 64, 2], [5, 3, 64, 1], [3, 3, 128, 2],
                   [3, 3, 128, 1], [5, 6, 160, 2], [5, 6, 160, 1], [3, 6, 160, 1]],
              channels=[32, 64, 128, 160], out_channels=[None, 256, 256, 256], embed_out_indice=[2, 4, 6, 9],
              num_heads=8, head_channels=256, is_dw=False),
}
KEY_DIM, ATTN_RATIO, MLP_RATIO, DEPTHS, C2T_STRIDE, DECODE_OUT = 16, 2, 2, 4, 2, (1, 2, 3)

# Every parameterised module of the official TopFormer-T (EncoderDecoder: backbone + SimpleHead), written out.
# cbn = Conv2d_BN (.c conv, .bn), cm = mmcv ConvModule (.conv, .bn), conv = nn.Conv2d with bias.
# InvertedResidual.conv is [pw, act, dw, act, pw-linear] (indices 0, 2, 4), or [dw, act, pw-linear] when t == 1.
OFFICIAL_T_MODULES = [
    ("backbone.tpm.stem.0", "cbn"),
    ("backbone.tpm.layer1.conv.0", "cbn"), ("backbone.tpm.layer1.conv.2", "cbn"),
    ("backbone.tpm.layer2.conv.0", "cbn"), ("backbone.tpm.layer2.conv.2", "cbn"), ("backbone.tpm.layer2.conv.4", "cbn"),
    ("backbone.tpm.layer3.conv.0", "cbn"), ("backbone.tpm.layer3.conv.2", "cbn"), ("backbone.tpm.layer3.conv.4", "cbn"),
    ("backbone.tpm.layer4.conv.0", "cbn"), ("backbone.tpm.layer4.conv.2", "cbn"), ("backbone.tpm.layer4.conv.4", "cbn"),
    ("backbone.tpm.layer5.conv.0", "cbn"), ("backbone.tpm.layer5.conv.2", "cbn"), ("backbone.tpm.layer5.conv.4", "cbn"),
    ("backbone.tpm.layer6.conv.0", "cbn"), ("backbone.tpm.layer6.conv.2", "cbn"), ("backbone.tpm.layer6.conv.4", "cbn"),
    ("backbone.tpm.layer7.conv.0", "cbn"), ("backbone.tpm.layer7.conv.2", "cbn"), ("backbone.tpm.layer7.conv.4", "cbn"),
    ("backbone.tpm.layer8.conv.0", "cbn"), ("backbone.tpm.layer8.conv.2", "cbn"), ("backbone.tpm.layer8.conv.4", "cbn"),
    ("backbone.tpm.layer9.conv.0", "cbn"), ("backbone.tpm.layer9.conv.2", "cbn"), ("backbone.tpm.layer9.conv.4", "cbn"),
]
for _b in range(4):
    _p = f"backbone.trans.transformer_blocks.{_b}"
    OFFICIAL_T_MODULES += [
        (f"{_p}.attn.to_q", "cbn"), (f"{_p}.attn.to_k", "cbn"), (f"{_p}.attn.to_v", "cbn"),
        (f"{_p}.attn.proj.1", "cbn"),  # proj = Sequential(ReLU6, Conv2d_BN)
        (f"{_p}.mlp.fc1", "cbn"), (f"{_p}.mlp.dwconv", "conv"), (f"{_p}.mlp.fc2", "cbn"),
    ]
OFFICIAL_T_MODULES += [
    ("backbone.SIM.1.local_embedding", "cm"), ("backbone.SIM.1.global_embedding", "cm"),
    ("backbone.SIM.1.global_act", "cm"),
    ("backbone.SIM.2.local_embedding", "cm"), ("backbone.SIM.2.global_embedding", "cm"),
    ("backbone.SIM.2.global_act", "cm"),
    ("backbone.SIM.3.local_embedding", "cm"), ("backbone.SIM.3.global_embedding", "cm"),
    ("backbone.SIM.3.global_act", "cm"),
    ("decode_head.linear_fuse", "cm"),
    ("decode_head.conv_seg", "conv"),  # used: BaseDecodeHead.cls_seg is SimpleHead's classifier
]
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_KIND_KEYS = {"cbn": ["c.weight"] + [f"bn.{s}" for s in _BN], "cm": ["conv.weight"] + [f"bn.{s}" for s in _BN],
              "conv": ["weight", "bias"]}


def _make_divisible(v, divisor=8):
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def official_shapes(variant: str, num_classes: int) -> dict[str, tuple[int, ...]]:
    """Key → shape of the official EncoderDecoder state dict, following the official constructors."""
    cfg = OFFICIAL_CONFIGS[variant]
    shapes: dict[str, tuple[int, ...]] = {}

    def cbn(pre, out, inp, k=1):
        shapes[f"{pre}.c.weight"] = (out, inp, k, k)
        for s in _BN:
            shapes[f"{pre}.bn.{s}"] = () if s == "num_batches_tracked" else (out,)

    def cm(pre, out, inp):
        shapes[f"{pre}.conv.weight"] = (out, inp, 1, 1)
        for s in _BN:
            shapes[f"{pre}.bn.{s}"] = () if s == "num_batches_tracked" else (out,)

    cbn("backbone.tpm.stem.0", 16, 3, 3)
    inp = 16
    for i, (k, t, c, s) in enumerate(cfg["cfg"]):
        out, hidden, pre = _make_divisible(c), int(round(inp * t)), f"backbone.tpm.layer{i + 1}.conv"
        j = 0
        if t != 1:
            cbn(f"{pre}.0", hidden, inp)
            j = 2
        cbn(f"{pre}.{j}", hidden, 1, k)  # depthwise: groups = hidden
        cbn(f"{pre}.{j + 2}", out, hidden)
        inp = out
    dim, nh_kd, dh = sum(cfg["channels"]), KEY_DIM * cfg["num_heads"], KEY_DIM * ATTN_RATIO * cfg["num_heads"]
    hidden = int(dim * MLP_RATIO)
    for b in range(DEPTHS):
        p = f"backbone.trans.transformer_blocks.{b}"
        cbn(f"{p}.attn.to_q", nh_kd, dim)
        cbn(f"{p}.attn.to_k", nh_kd, dim)
        cbn(f"{p}.attn.to_v", dh, dim)
        cbn(f"{p}.attn.proj.1", dim, dh)
        cbn(f"{p}.mlp.fc1", hidden, dim)
        shapes[f"{p}.mlp.dwconv.weight"], shapes[f"{p}.mlp.dwconv.bias"] = (hidden, 1, 3, 3), (hidden,)
        cbn(f"{p}.mlp.fc2", dim, hidden)
    for i in DECODE_OUT:
        for name in ("local_embedding", "global_embedding", "global_act"):
            cm(f"backbone.SIM.{i}.{name}", cfg["out_channels"][i], cfg["channels"][i])
    ch = cfg["head_channels"]
    cm("decode_head.linear_fuse", ch, 1 if cfg["is_dw"] else ch)
    shapes["decode_head.conv_seg.weight"], shapes["decode_head.conv_seg.bias"] = (num_classes, ch, 1, 1), (num_classes,)
    return shapes


def random_official_state(variant: str, num_classes: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Well-scaled random tensors for every official key (LeCun-scaled convs, BN near identity)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in official_shapes(variant, num_classes).items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(1000)
        elif k.endswith("running_var"):
            sd[k] = 0.5 + torch.rand(shape, generator=g)
        elif k.endswith("bn.weight"):
            sd[k] = 1 + 0.2 * torch.randn(shape, generator=g)
        elif len(shape) == 4:
            sd[k] = torch.randn(shape, generator=g) * math.sqrt(1.0 / (shape[1] * shape[2] * shape[3]))
        else:  # conv / BN biases, running means
            sd[k] = 0.1 * torch.randn(shape, generator=g)
    return sd


# ------------------------------------------------------------------------------- official forward, functional

def _bn(x, sd, p):
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                        False, 0.0, 1e-5)


def _cbn(x, sd, p, stride=1, pad=0, groups=1):
    return _bn(F.conv2d(x, sd[f"{p}.c.weight"], None, stride, pad, 1, groups), sd, f"{p}.bn")


def _cm(x, sd, p, groups=1):
    return _bn(F.conv2d(x, sd[f"{p}.conv.weight"], None, 1, 0, 1, groups), sd, f"{p}.bn")


def official_forward(sd: dict[str, torch.Tensor], variant: str, x: torch.Tensor) -> torch.Tensor:
    """The official Topformer + SimpleHead forward in eval mode, restated with torch.nn.functional."""
    cfg = OFFICIAL_CONFIGS[variant]
    x = F.relu(_cbn(x, sd, "backbone.tpm.stem.0", 2, 1))
    outs, inp = [], 16
    for i, (k, t, c, s) in enumerate(cfg["cfg"]):
        out, hidden, pre = _make_divisible(c), int(round(inp * t)), f"backbone.tpm.layer{i + 1}.conv"
        y, j = x, 0
        if t != 1:
            y, j = F.relu(_cbn(y, sd, f"{pre}.0")), 2
        y = F.relu(_cbn(y, sd, f"{pre}.{j}", s, k // 2, hidden))
        y = _cbn(y, sd, f"{pre}.{j + 2}")
        x = x + y if s == 1 and inp == out else y
        if i in cfg["embed_out_indice"]:
            outs.append(x)
        inp = out
    h, w = outs[-1].shape[2:]
    h, w = (h - 1) // C2T_STRIDE + 1, (w - 1) // C2T_STRIDE + 1
    z = torch.cat([F.adaptive_avg_pool2d(o, (h, w)) for o in outs], dim=1)  # PyramidPoolAgg
    heads, d = cfg["num_heads"], KEY_DIM * ATTN_RATIO
    for b in range(DEPTHS):
        p = f"backbone.trans.transformer_blocks.{b}"
        B, C, H, W = z.shape
        qq = _cbn(z, sd, f"{p}.attn.to_q").reshape(B, heads, KEY_DIM, H * W).permute(0, 1, 3, 2)
        kk = _cbn(z, sd, f"{p}.attn.to_k").reshape(B, heads, KEY_DIM, H * W)
        vv = _cbn(z, sd, f"{p}.attn.to_v").reshape(B, heads, d, H * W).permute(0, 1, 3, 2)
        attn = torch.matmul(qq, kk).softmax(dim=-1)  # no scaling, as upstream
        xx = torch.matmul(attn, vv).permute(0, 1, 3, 2).reshape(B, d * heads, H, W)
        z = z + _cbn(F.relu6(xx), sd, f"{p}.attn.proj.1")
        m = _cbn(z, sd, f"{p}.mlp.fc1")
        m = F.relu6(F.conv2d(m, sd[f"{p}.mlp.dwconv.weight"], sd[f"{p}.mlp.dwconv.bias"], 1, 1, 1, m.shape[1]))
        z = z + _cbn(m, sd, f"{p}.mlp.fc2")
    parts = z.split(cfg["channels"], dim=1)
    feats = []
    for i in DECODE_OUT:
        p, size = f"backbone.SIM.{i}", outs[i].shape[2:]
        local = _cm(outs[i], sd, f"{p}.local_embedding")
        sig = F.interpolate(F.relu6(_cm(parts[i], sd, f"{p}.global_act") + 3) / 6, size=size, mode="bilinear",
                            align_corners=False)
        glob = F.interpolate(_cm(parts[i], sd, f"{p}.global_embedding"), size=size, mode="bilinear",
                             align_corners=False)
        feats.append(local * sig + glob)
    y = feats[0]
    for f in feats[1:]:
        y = y + F.interpolate(f, size=y.shape[2:], mode="bilinear", align_corners=False)
    ch = cfg["head_channels"]
    y = F.relu(_cm(y, sd, "decode_head.linear_fuse", ch if cfg["is_dw"] else 1))
    return F.conv2d(y, sd["decode_head.conv_seg.weight"], sd["decode_head.conv_seg.bias"])


# ------------------------------------------------------------------------------------------------ tests

def _expand(modules):
    return [f"{p}.{s}" for p, kind in modules for s in _KIND_KEYS[kind]]


def test_official_t_key_list_matches_ours_and_the_derivation():
    expected = _expand(OFFICIAL_T_MODULES)
    assert len(expected) == len(set(expected))
    ours = list(create_model("topformer-t", num_classes=11).state_dict())
    assert sorted(ours) == sorted(expected)
    assert sorted(official_shapes("t", 11)) == sorted(expected)


@pytest.mark.parametrize("variant", ["t", "s", "b"])
def test_official_checkpoint_roundtrip(variant, tmp_path):
    num_classes = 19
    sd = random_official_state(variant, num_classes, seed=1)
    model = create_model(f"topformer-{variant}", num_classes=num_classes)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == official_shapes(variant, num_classes)
    path = tmp_path / f"topformer-{variant}.pth"
    # The official release files are mmcv checkpoints: {"meta": ..., "state_dict": ...}.
    torch.save({"meta": {"CLASSES": [f"c{i}" for i in range(num_classes)], "iter": 160000}, "state_dict": sd}, path)
    loaded = create_model(f"topformer-{variant}", weights=path)
    cfg = loaded.pretrained_cfg
    assert (cfg["weights_format"], cfg["num_classes"]) == ("topformer-official", num_classes)
    got = loaded.state_dict()
    assert got.keys() == sd.keys()
    assert all(torch.equal(got[k], sd[k].to(got[k].dtype)) for k in sd)


@pytest.mark.parametrize("variant,size", [("t", (128, 192)), ("s", (64, 64)), ("b", (128, 128))])
def test_forward_matches_official_arithmetic(variant, size):
    sd = random_official_state(variant, 7, seed=2)
    model = create_model(f"topformer-{variant}", num_classes=7).eval()
    model.load_state_dict(sd)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = official_forward(sd, variant, x)
        out = model(x)
    assert out.shape == ref.shape == (1, 7, size[0] // 8, size[1] // 8)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_attention_is_unscaled_like_official():
    torch.manual_seed(0)
    attn = Attention(dim=208, key_dim=16, num_heads=4, attn_ratio=2).eval()
    with torch.no_grad():
        for m in attn.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 208, 4, 6)
    b, _, h, w = x.shape
    with torch.no_grad():
        # Official Attention.forward: scale = key_dim ** -0.5 is defined but never applied.
        qq = attn.to_q(x).reshape(b, 4, 16, h * w).permute(0, 1, 3, 2)
        kk = attn.to_k(x).reshape(b, 4, 16, h * w)
        vv = attn.to_v(x).reshape(b, 4, 32, h * w).permute(0, 1, 3, 2)
        logits = torch.matmul(qq, kk)
        ref = attn.proj(torch.matmul(logits.softmax(-1), vv).permute(0, 1, 3, 2).reshape(b, 128, h, w))
        scaled = attn.proj(torch.matmul((logits * 16 ** -0.5).softmax(-1), vv).permute(0, 1, 3, 2)
                           .reshape(b, 128, h, w))
        out = attn(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert float((out - scaled).abs().max()) > 1e-2  # the check can tell scaled from unscaled


@pytest.mark.parametrize("size", [(64, 64), (128, 192), (256, 320)])
def test_pyramid_pool_equals_official_adaptive_pool(size):
    g = torch.Generator().manual_seed(0)
    h, w = size
    tokens = [torch.randn(1, c, h // s, w // s, generator=g) for c, s in ((16, 4), (32, 8), (64, 16), (96, 32))]
    oh, ow = (h // 32 - 1) // 2 + 1, (w // 32 - 1) // 2 + 1
    ref = torch.cat([F.adaptive_avg_pool2d(t, (oh, ow)) for t in tokens], dim=1)
    torch.testing.assert_close(pyramid_pool(tokens, 2), ref, rtol=1e-6, atol=1e-6)


def test_wrong_topformer_variant(tmp_path):
    torch.save({"state_dict": random_official_state("t", 11)}, tmp_path / "t.pth")
    with pytest.raises(CheckpointError, match=r"t.pth \(official TopFormer format\) holds 'topformer-t' "
                                              r"\(token layers 9, semantic dim 208, heads 4, head channels 128\), "
                                              r"but --model topformer-s expects token layers 10.*"
                                              r"pass --model topformer-t"):
        create_model("topformer-s", weights=tmp_path / "t.pth")


def test_bare_backbone_needs_backbone_only(tmp_path):
    sd = {k[len("backbone."):]: v for k, v in random_official_state("t", 11).items() if k.startswith("backbone.")}
    torch.save(sd, tmp_path / "topformer-T-backbone.pth")
    with pytest.raises(CheckpointError, match=r"holds only a backbone, no decode head; train a head on it with .segedge train --weights."):
        create_model("topformer-t", weights=tmp_path / "topformer-T-backbone.pth")
    model = create_model("topformer-t", weights=tmp_path / "topformer-T-backbone.pth", backbone_only=True,
                         num_classes=4)
    assert torch.equal(model.state_dict()["backbone.tpm.stem.0.c.weight"], sd["tpm.stem.0.c.weight"])


# Regression goldens, generated once from THIS implementation (not from the official code): seed 0,
# TopFormer-T, 11 classes, weights filled by random_official_state(seed=0) (independent of segedge's init),
# input torch.manual_seed(0); torch.randn(1, 3, 128, 128). They catch unintended numerical changes.
GOLDEN_SUM = -2691.0405
GOLDEN_ABS_SUM = 5903.1116
GOLDEN_VALUES = (((0, 0, 0), 2.378268), ((6, 15, 2), 3.963051), ((10, 8, 15), -2.251462), ((1, 11, 11), -4.503928),
                 ((4, 3, 12), -4.813834))  # ((class, y, x), logit)


def _golden_logits() -> torch.Tensor:
    torch.manual_seed(0)
    model = create_model("topformer-t", num_classes=11).eval()
    model.load_state_dict(random_official_state("t", 11, seed=0))
    torch.manual_seed(0)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        return model(x)[0]


def test_fixed_seed_goldens():
    out = _golden_logits()
    assert out.shape == (11, 16, 16)
    out = out.double()
    assert float(out.sum()) == pytest.approx(GOLDEN_SUM, rel=1e-4)
    assert float(out.abs().sum()) == pytest.approx(GOLDEN_ABS_SUM, rel=1e-4)
    for (c, y, x), v in GOLDEN_VALUES:
        assert float(out[c, y, x]) == pytest.approx(v, rel=1e-4)
