"""TopFormer (T/S/B) as in hustvl/TopFormer: token pyramid → pyramid pool → semantics extractor → injection → head.

Module names and arithmetic follow the official code so its checkpoints load by name and give its outputs. Notably
the official `Attention` defines `scale = key_dim ** -0.5` but never applies it: q·k is *not* scaled, and neither
is it here. The official adaptive average pooling to the 1/64 grid is written as a fixed average pooling whose
kernel follows from the (static) input size, so the graph exports without adaptive pooling; inputs must therefore
be multiples of 64.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .layers import DropPath, ExportAware, resize, resize_symbolic, set_export_mode
from .registry import ModelSpec, register_model

# (kernel, expand ratio, out channels, stride) per inverted residual, from local_configs/topformer/*.
TOPFORMER_CONFIGS: dict[str, dict] = {
    "t": dict(
        cfgs=[[3, 1, 16, 1], [3, 4, 16, 2], [3, 3, 16, 1], [5, 3, 32, 2], [5, 3, 32, 1],
              [3, 3, 64, 2], [3, 3, 64, 1], [5, 6, 96, 2], [5, 6, 96, 1]],
        channels=[16, 32, 64, 96], out_channels=[None, 128, 128, 128], embed_out_indice=[2, 4, 6, 8],
        num_heads=4, head_channels=128, head_dw=True),
    "s": dict(
        cfgs=[[3, 1, 16, 1], [3, 4, 24, 2], [3, 3, 24, 1], [5, 3, 48, 2], [5, 3, 48, 1],
              [3, 3, 96, 2], [3, 3, 96, 1], [5, 6, 128, 2], [5, 6, 128, 1], [3, 6, 128, 1]],
        channels=[24, 48, 96, 128], out_channels=[None, 192, 192, 192], embed_out_indice=[2, 4, 6, 9],
        num_heads=6, head_channels=192, head_dw=False),
    "b": dict(
        cfgs=[[3, 1, 16, 1], [3, 4, 32, 2], [3, 3, 32, 1], [5, 3, 64, 2], [5, 3, 64, 1],
              [3, 3, 128, 2], [3, 3, 128, 1], [5, 6, 160, 2], [5, 6, 160, 1], [3, 6, 160, 1]],
        channels=[32, 64, 128, 160], out_channels=[None, 256, 256, 256], embed_out_indice=[2, 4, 6, 9],
        num_heads=8, head_channels=256, head_dw=False),
}
DECODE_OUT_INDICES = (1, 2, 3)
KEY_DIM, ATTN_RATIO, MLP_RATIO, DEPTHS, C2T_STRIDE = 16, 2, 2, 4, 2


def _make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class Conv2dBN(nn.Sequential):
    """Official `Conv2d_BN`: `.c` conv without bias, `.bn` BatchNorm."""

    def __init__(self, a: int, b: int, ks: int = 1, stride: int = 1, pad: int = 0, groups: int = 1,
                 bn_weight_init: float = 1.0) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(a, b, ks, stride, pad, 1, groups, bias=False))
        bn = nn.BatchNorm2d(b)
        nn.init.constant_(bn.weight, bn_weight_init)
        nn.init.constant_(bn.bias, 0)
        self.add_module("bn", bn)


class ConvModule(nn.Module):
    """mmcv `ConvModule` layout: `.conv` (no bias) → `.bn` → optional ReLU."""

    def __init__(self, in_ch: int, out_ch: int, groups: int = 1, act: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 1, bias=False, groups=groups)
        self.bn = nn.BatchNorm2d(out_ch)
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class HSigmoid(nn.Module):
    """ReLU6(x + 3) / 6."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.relu6(x + 3.0) / 6.0


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1×1 expand → k×k depthwise → 1×1 linear, ReLU, residual when shapes allow."""

    def __init__(self, inp: int, oup: int, ks: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [Conv2dBN(inp, hidden, 1), nn.ReLU()]
        layers += [Conv2dBN(hidden, hidden, ks, stride, ks // 2, groups=hidden), nn.ReLU(), Conv2dBN(hidden, oup, 1)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class TokenPyramidModule(nn.Module):
    """Stem + inverted residuals; returns the tokens at the `out_indices` layers (1/4, 1/8, 1/16, 1/32)."""

    def __init__(self, cfgs, out_indices, inp_channel: int = 16) -> None:
        super().__init__()
        self.out_indices = tuple(out_indices)
        self.stem = nn.Sequential(Conv2dBN(3, inp_channel, 3, 2, 1), nn.ReLU())
        self.layers: list[str] = []
        for i, (k, t, c, s) in enumerate(cfgs):
            out = _make_divisible(c, 8)
            self.add_module(f"layer{i + 1}", InvertedResidual(inp_channel, out, k, s, t))
            self.layers.append(f"layer{i + 1}")
            inp_channel = out

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        x = self.stem(x)
        for i, name in enumerate(self.layers):
            x = getattr(self, name)(x)
            if i in self.out_indices:
                outs.append(x)
        return outs


class Attention(nn.Module):
    """Official TopFormer attention on a conv feature map; note: logits q·k are not scaled (as upstream)."""

    def __init__(self, dim: int, key_dim: int, num_heads: int, attn_ratio: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        nh_kd = key_dim * num_heads
        self.d = int(attn_ratio * key_dim)
        self.dh = self.d * num_heads
        self.to_q = Conv2dBN(dim, nh_kd, 1)
        self.to_k = Conv2dBN(dim, nh_kd, 1)
        self.to_v = Conv2dBN(dim, self.dh, 1)
        self.proj = nn.Sequential(nn.ReLU6(), Conv2dBN(self.dh, dim, bn_weight_init=0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        n = h * w
        qq = self.to_q(x).reshape(b, self.num_heads, self.key_dim, n).permute(0, 1, 3, 2)
        kk = self.to_k(x).reshape(b, self.num_heads, self.key_dim, n)
        vv = self.to_v(x).reshape(b, self.num_heads, self.d, n).permute(0, 1, 3, 2)
        attn = torch.matmul(qq, kk).softmax(dim=-1)
        xx = torch.matmul(attn, vv).permute(0, 1, 3, 2).reshape(b, self.dh, h, w)
        return self.proj(xx)


class Mlp(nn.Module):
    """1×1 conv+BN → 3×3 depthwise conv → ReLU6 → 1×1 conv+BN."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = Conv2dBN(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act = nn.ReLU6()
        self.fc2 = Conv2dBN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x))))


class Block(nn.Module):
    """Semantics-extractor block: x + Attn(x), x + Mlp(x) (no norms: the BNs live in the projections)."""

    def __init__(self, dim: int, key_dim: int, num_heads: int, mlp_ratio: float, attn_ratio: float,
                 drop_path: float) -> None:
        super().__init__()
        self.attn = Attention(dim, key_dim, num_heads, attn_ratio)
        self.drop_path = DropPath(drop_path)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(x))
        return x + self.drop_path(self.mlp(x))


class BasicLayer(nn.Module):
    """The stack of semantics-extractor blocks (`trans.transformer_blocks.N`)."""

    def __init__(self, depth: int, dim: int, key_dim: int, num_heads: int, mlp_ratio: float, attn_ratio: float,
                 drop_path: list[float]) -> None:
        super().__init__()
        self.transformer_blocks = nn.ModuleList(
            Block(dim, key_dim, num_heads, mlp_ratio, attn_ratio, drop_path[i]) for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.transformer_blocks:
            x = blk(x)
        return x


def pyramid_pool(inputs: list[torch.Tensor], stride: int) -> torch.Tensor:
    """Average-pool every token scale to the grid of the last one divided by `stride`, then concatenate.

    Equal to the official adaptive_avg_pool2d when each scale is an integer multiple of the target grid, which
    holds for inputs that are multiples of 64; written as avg_pool2d so the exported graph has fixed kernels.
    """
    h, w = inputs[-1].shape[2], inputs[-1].shape[3]
    oh, ow = (h - 1) // stride + 1, (w - 1) // stride + 1
    pooled = []
    for t in inputs:
        kh, kw = t.shape[2] // oh, t.shape[3] // ow
        pooled.append(nn.functional.avg_pool2d(t, (kh, kw), (kh, kw)))
    return torch.cat(pooled, dim=1)


class InjectionMultiSum(ExportAware, nn.Module):
    """Semantic injection: local·hsigmoid(up(global_act)) + up(global_embedding)."""

    def __init__(self, inp: int, oup: int) -> None:
        super().__init__()
        self.local_embedding = ConvModule(inp, oup)
        self.global_embedding = ConvModule(inp, oup)
        self.global_act = ConvModule(inp, oup)
        self.act = HSigmoid()

    def forward(self, x_l: torch.Tensor, x_g: torch.Tensor) -> torch.Tensor:
        size = (x_l.shape[2], x_l.shape[3])
        local_feat = self.local_embedding(x_l)
        up = resize_symbolic if self.export_mode else resize
        sig_act = up(self.act(self.global_act(x_g)), size)
        global_feat = up(self.global_embedding(x_g), size)
        return local_feat * sig_act + global_feat


class TopformerBackbone(nn.Module):
    """Token pyramid, pyramid pooling to 1/64, semantics extractor, and injection into 1/8, 1/16, 1/32."""

    def __init__(self, cfg: dict, drop_path_rate: float = 0.1) -> None:
        super().__init__()
        self.channels = list(cfg["channels"])
        self.tpm = TokenPyramidModule(cfg["cfgs"], cfg["embed_out_indice"])
        dpr = torch.linspace(0, drop_path_rate, DEPTHS).tolist()
        self.trans = BasicLayer(DEPTHS, sum(self.channels), KEY_DIM, cfg["num_heads"], MLP_RATIO, ATTN_RATIO, dpr)
        self.SIM = nn.ModuleList(
            InjectionMultiSum(self.channels[i], cfg["out_channels"][i]) if i in DECODE_OUT_INDICES else nn.Identity()
            for i in range(len(self.channels))
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        tokens = self.tpm(x)
        sem = self.trans(pyramid_pool(tokens, C2T_STRIDE))
        parts = sem.split(self.channels, dim=1)
        return [self.SIM[i](tokens[i], parts[i]) for i in DECODE_OUT_INDICES]


class SimpleHead(ExportAware, nn.Module):
    """Sum the injected features at 1/8 → 1×1 conv+BN+ReLU (depthwise for T) → dropout → classifier."""

    def __init__(self, channels: int, num_classes: int, is_dw: bool, dropout: float = 0.1) -> None:
        super().__init__()
        self.linear_fuse = ConvModule(channels, channels, groups=channels if is_dw else 1, act=True)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[0]
        size = (x.shape[2], x.shape[3])
        for f in feats[1:]:
            x = x + (resize_symbolic if self.export_mode else resize)(f, size)
        return self.conv_seg(self.dropout(self.linear_fuse(x)))


class TopFormer(nn.Module):
    """TopFormer segmentation model; `forward` returns logits at 1/8 of the input (H, W multiples of 64)."""

    output_stride = 8
    size_multiple = 64

    def __init__(self, variant: str = "t", num_classes: int = 150, drop_path_rate: float = 0.1,
                 dropout: float = 0.1) -> None:
        super().__init__()
        cfg = TOPFORMER_CONFIGS[variant]
        self.variant = variant
        self.num_classes = num_classes
        self.backbone = TopformerBackbone(cfg, drop_path_rate)
        self.decode_head = SimpleHead(cfg["head_channels"], num_classes, cfg["head_dw"], dropout)
        self.apply(_init_weights)

    def set_export_mode(self, enabled: bool = True) -> "TopFormer":
        """Export-friendly forward (FX / TorchScript traceable; see `segedge.models.layers`), same numerics."""
        return set_export_mode(self, enabled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        if isinstance(h, int) and (h % 64 or w % 64):
            # Shape-only check (no data-dependent flow): sizes are static for a given export.
            raise ValueError(f"TopFormer input height and width must be multiples of 64, got {h}x{w}")
        return self.decode_head(self.backbone(x))


def _init_weights(m: nn.Module) -> None:
    # Official TopFormer init: He-normal convs by fan-out/groups, unit BN, small-normal linears.
    if isinstance(m, nn.Conv2d):
        n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0, math.sqrt(2.0 / n))
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, 0, 0.01)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _builder(variant: str):
    def build(num_classes: int = 150, **kw) -> TopFormer:
        return TopFormer(variant, num_classes=num_classes, **kw)
    return build


for _v in TOPFORMER_CONFIGS:
    register_model(ModelSpec(
        name=f"topformer-{_v}", family="topformer", builder=_builder(_v), config=dict(variant=_v),
        aliases=(f"topformer_{_v}", f"topformer{_v}", f"topformer-{dict(t='tiny', s='small', b='base')[_v]}"),
        default_input_size=(512, 512), output_stride=8, size_multiple=64,
        description=f"TopFormer-{_v.upper()} (official config, SimpleHead{' depthwise' if _v == 't' else ''})",
    ))
