"""SegFormer: the hierarchical Mix Transformer (MiT-B0…B5) encoder and the All-MLP decoder.

Module names follow the NVlabs original (`backbone.patch_embed1`, `backbone.block1.0.attn.q`, …) except that the
fused `attn.kv` projection is split into `attn.k` / `attn.v`, as Hugging Face does, so every checkpoint family maps
onto it by renaming alone. Attention is written as explicit MatMul + Softmax: it exports cleanly at opset 17 and
FLOP counters see the attention matmuls.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .layers import DropPath, ExportAware, resize, resize_symbolic, set_export_mode
from .registry import ModelSpec, register_model

# Official MiT configs (NVlabs mix_transformer.py): embed dims, heads, depths; sr ratios 8/4/2/1, MLP ratio 4.
MIT_CONFIGS: dict[str, dict] = {
    "b0": dict(embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2), decoder_dim=256),
    "b1": dict(embed_dims=(64, 128, 320, 512), depths=(2, 2, 2, 2), decoder_dim=256),
    "b2": dict(embed_dims=(64, 128, 320, 512), depths=(3, 4, 6, 3), decoder_dim=768),
    "b3": dict(embed_dims=(64, 128, 320, 512), depths=(3, 4, 18, 3), decoder_dim=768),
    "b4": dict(embed_dims=(64, 128, 320, 512), depths=(3, 8, 27, 3), decoder_dim=768),
    "b5": dict(embed_dims=(64, 128, 320, 512), depths=(3, 6, 40, 3), decoder_dim=768),
}
NUM_HEADS = (1, 2, 5, 8)
SR_RATIOS = (8, 4, 2, 1)
MLP_RATIO = 4
PATCH = ((7, 4), (3, 2), (3, 2), (3, 2))  # (kernel, stride) per stage; padding = kernel // 2


class OverlapPatchEmbed(nn.Module):
    """Strided conv patch embedding with overlap, then LayerNorm (eps 1e-5 in the original)."""

    def __init__(self, in_ch: int, dim: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_ch, dim, kernel, stride, kernel // 2)
        self.norm = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[2], x.shape[3]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class EfficientSelfAttention(nn.Module):
    """Multi-head attention whose keys/values come from a spatially reduced (sr × sr conv) sequence."""

    def __init__(self, dim: int, heads: int, sr_ratio: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim ** -0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.heads, self.head_dim).transpose(1, 2)
        if self.sr_ratio > 1:
            r = self.sr(x.transpose(1, 2).reshape(b, c, h, w))
            x = self.norm(r.flatten(2).transpose(1, 2))
        k = self.k(x).reshape(b, -1, self.heads, self.head_dim).transpose(1, 2)
        v = self.v(x).reshape(b, -1, self.heads, self.head_dim).transpose(1, 2)
        attn = torch.matmul(q, k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class DWConv(nn.Module):
    """3×3 depthwise conv applied to a token sequence laid out on its H×W grid."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(b, c, h, w))
        return x.flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    """Linear → 3×3 depthwise conv → exact GELU → Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), h, w)))


class MiTBlock(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MixFFN(LN(x))."""

    def __init__(self, dim: int, heads: int, sr_ratio: int, drop_path: float, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = EfficientSelfAttention(dim, heads, sr_ratio)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MixFFN(dim, dim * MLP_RATIO)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


class MixVisionTransformer(nn.Module):
    """The MiT encoder: four stages, each patch embed → blocks → LayerNorm; returns features at 1/4…1/32."""

    def __init__(self, embed_dims, depths, drop_path_rate: float = 0.1, eps: float = 1e-6) -> None:
        super().__init__()
        self.embed_dims = tuple(embed_dims)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        cur = 0
        in_ch = 3
        for i in range(4):
            k, s = PATCH[i]
            setattr(self, f"patch_embed{i + 1}", OverlapPatchEmbed(in_ch, embed_dims[i], k, s))
            blocks = nn.ModuleList(
                MiTBlock(embed_dims[i], NUM_HEADS[i], SR_RATIOS[i], dpr[cur + j], eps) for j in range(depths[i])
            )
            setattr(self, f"block{i + 1}", blocks)
            setattr(self, f"norm{i + 1}", nn.LayerNorm(embed_dims[i], eps=eps))
            cur += depths[i]
            in_ch = embed_dims[i]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        b = x.shape[0]
        for i in range(1, 5):
            x, h, w = getattr(self, f"patch_embed{i}")(x)
            for blk in getattr(self, f"block{i}"):
                x = blk(x, h, w)
            x = getattr(self, f"norm{i}")(x)
            x = x.reshape(b, h, w, -1).permute(0, 3, 1, 2)
            outs.append(x)
        return outs


class MLPProj(nn.Module):
    """Per-pixel linear projection of a feature map (the decoder's linear_cN)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        return self.proj(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, -1, h, w)


class ConvBNReLU(nn.Module):
    """mmcv ConvModule layout: `.conv` (no bias) → `.bn` → ReLU."""

    def __init__(self, in_ch: int, out_ch: int, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 1, bias=False, groups=groups)
        self.bn = nn.BatchNorm2d(out_ch)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SegFormerHead(ExportAware, nn.Module):
    """All-MLP decoder: linear_c1..c4 → upsample to 1/4 → concat(c4,c3,c2,c1) → 1×1 conv+BN+ReLU → classifier."""

    def __init__(self, in_dims, dim: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        for i, c in enumerate(in_dims):
            setattr(self, f"linear_c{i + 1}", MLPProj(c, dim))
        self.linear_fuse = ConvBNReLU(4 * dim, dim)
        self.dropout = nn.Dropout2d(dropout)
        self.linear_pred = nn.Conv2d(dim, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        c1 = feats[0]
        size = (c1.shape[2], c1.shape[3])
        outs = []
        for i in (4, 3, 2, 1):
            y = getattr(self, f"linear_c{i}")(feats[i - 1])
            outs.append(y if i == 1 else (resize_symbolic if self.export_mode else resize)(y, size))
        x = self.linear_fuse(torch.cat(outs, dim=1))
        return self.linear_pred(self.dropout(x))

    @torch.no_grad()
    def deploy_form(self) -> "FoldedSegFormerHead":
        """The same decoder with linear_cN, linear_fuse and its BatchNorm composed per stage (eval numerics)."""
        return FoldedSegFormerHead.from_head(self)


class FoldedSegFormerHead(ExportAware, nn.Module):
    """The All-MLP decoder in its exact inference form.

    The trained head projects each stage to `dim` channels (linear_cN), upsamples to 1/4, concatenates and mixes with
    a 1×1 conv + BatchNorm (linear_fuse) before the ReLU. Everything before the ReLU is linear per pixel, and bilinear
    upsampling commutes with per-pixel linear maps and keeps constants (its weights sum to 1), so
    BN(W·concat(up(A_i x_i + a_i))) = Σ_i up(M_i x_i) + b with M_i = diag(s)·W_i·A_i and one bias b. Each stage then
    needs one 1×1 conv at its own resolution instead of a 4·dim → dim conv at 1/4: B0's head did ~3 of its ~4 GMAC
    there at 384×512. Eval-mode only (BatchNorm statistics are folded, dropout is gone); the convs keep the module
    paths `linear_cN.proj`, so sensitivity groups and QAT ranges keyed by them still find their nodes.
    """

    def __init__(self, in_dims, dim: int, num_classes: int) -> None:
        super().__init__()
        for i, c in enumerate(in_dims):
            proj = nn.Module()
            proj.proj = nn.Conv2d(c, dim, 1, bias=(i == 0))  # one bias for the sum, on the stage that is not resized
            setattr(self, f"linear_c{i + 1}", proj)
        self.linear_pred = nn.Conv2d(dim, num_classes, 1)

    @classmethod
    @torch.no_grad()
    def from_head(cls, head: SegFormerHead) -> "FoldedSegFormerHead":
        """Compose a trained SegFormerHead (see the class docstring); the BatchNorm's running statistics are used."""
        fuse, bn = head.linear_fuse.conv.weight[:, :, 0, 0], head.linear_fuse.bn
        dim = fuse.shape[0]
        in_dims = [getattr(head, f"linear_c{i}").proj.in_features for i in (1, 2, 3, 4)]
        out = cls(in_dims, dim, head.linear_pred.out_channels).to(fuse.device, fuse.dtype)
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = bn.bias - bn.running_mean * scale
        for pos, i in enumerate((4, 3, 2, 1)):  # the concat order of SegFormerHead.forward
            lin = getattr(head, f"linear_c{i}").proj
            w_i = fuse[:, pos * dim:(pos + 1) * dim]
            getattr(out, f"linear_c{i}").proj.weight.copy_(((scale[:, None] * w_i) @ lin.weight)[:, :, None, None])
            bias = bias + scale * (w_i @ lin.bias)
        out.linear_c1.proj.bias.copy_(bias)
        out.linear_pred.load_state_dict(head.linear_pred.state_dict())
        out.export_mode = head.export_mode
        return out.eval()

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        c1 = feats[0]
        size = (c1.shape[2], c1.shape[3])
        x = self.linear_c1.proj(c1)
        up = resize_symbolic if self.export_mode else resize
        for i in (4, 3, 2):
            x = x + up(getattr(self, f"linear_c{i}").proj(feats[i - 1]), size)
        return self.linear_pred(torch.relu(x))


class SegFormer(nn.Module):
    """SegFormer = MiT encoder + All-MLP head; `forward` returns logits at 1/4 of the input."""

    output_stride = 4

    def __init__(self, variant: str = "b0", num_classes: int = 150, ln_eps: float = 1e-6,
                 drop_path_rate: float = 0.1, dropout: float = 0.1) -> None:
        super().__init__()
        cfg = MIT_CONFIGS[variant]
        self.variant = variant
        self.num_classes = num_classes
        self.ln_eps = ln_eps
        self.backbone = MixVisionTransformer(cfg["embed_dims"], cfg["depths"], drop_path_rate, ln_eps)
        self.decode_head = SegFormerHead(cfg["embed_dims"], cfg["decoder_dim"], num_classes, dropout)
        self.apply(_init_weights)

    def set_layernorm_eps(self, eps: float) -> None:
        """Switch block and stage LayerNorm eps (1e-6 NVlabs, 1e-5 Hugging Face) to match a checkpoint's origin."""
        self.ln_eps = float(eps)
        for name, m in self.backbone.named_modules():
            if isinstance(m, nn.LayerNorm) and (".norm1" in f".{name}" or ".norm2" in f".{name}" or name.startswith("norm")):
                m.eps = self.ln_eps

    def set_export_mode(self, enabled: bool = True) -> "SegFormer":
        """Export-friendly forward (FX / TorchScript traceable; see `segedge.models.layers`), same numerics."""
        return set_export_mode(self, enabled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_head(self.backbone(x))


def _init_weights(m: nn.Module) -> None:
    # NVlabs initialisation: truncated normal linears, fan-out normal convs; matters when training from scratch.
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _builder(variant: str):
    def build(num_classes: int = 150, **kw) -> SegFormer:
        return SegFormer(variant, num_classes=num_classes, **kw)
    return build


for _v in MIT_CONFIGS:
    register_model(ModelSpec(
        name=_v, family="segformer", builder=_builder(_v), config=dict(variant=_v, **MIT_CONFIGS[_v]),
        aliases=(f"mit-{_v}", f"segformer-{_v}", f"mit{_v}"), default_input_size=(512, 512), output_stride=4,
        size_multiple=32, description=f"SegFormer MiT-{_v.upper()} (All-MLP decoder {MIT_CONFIGS[_v]['decoder_dim']})",
    ))
