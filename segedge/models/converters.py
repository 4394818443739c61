"""Key conversion from foreign checkpoint layouts to segedge names.

Supported layouts (detected from the key names, never from the file name):
- Hugging Face SegFormer: the on-disk layout written by `save_pretrained` (`segformer.encoder.block.N.M.attention.
  self.query`, …; transformers 5.x still writes it by default) and the in-memory layout of transformers 5.x
  (`segformer.stages.N.blocks.M.attention.q_proj`, …; written by `save_pretrained(save_original_format=False)`
  or `torch.save(model.state_dict())`). Every HF LayerNorm uses eps 1e-5 (config.layer_norm_eps is not used by
  the modeling code), so meta carries ln_eps=1e-5.
- NVlabs SegFormer .pth (`backbone.block1.0.attn.kv` → split into attn.k / attn.v); ln_eps 1e-6. Also the bare
  NVlabs ImageNet MiT weights (`patch_embed1…`, `head.`) for backbone-only loading.
- mmseg MiT backbone (`backbone.layers.i.{0,1,2}`, nn.MultiheadAttention in_proj, 1×1-conv FFN); ln_eps 1e-6.
  mmseg's SegformerHead is a different decoder, so only its backbone can be loaded.
- Official TopFormer .pth: names already equal segedge's.
Anything that cannot be mapped is left under its original name so that `load_into` names it as unexpected:
a checkpoint is never loaded partially.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import CheckpointError

HF, HF_V5 = "huggingface", "huggingface-v5"
NVLABS, NVLABS_BACKBONE = "nvlabs", "nvlabs-backbone"
MMSEG = "mmseg"
TOPFORMER = "topformer-official"
SEGEDGE_NAMES = "segedge-state-dict"

_FORMAT_LABEL = {
    HF: "Hugging Face SegFormer", HF_V5: "Hugging Face SegFormer (transformers 5 in-memory names)",
    NVLABS: "NVlabs SegFormer", NVLABS_BACKBONE: "NVlabs MiT backbone", MMSEG: "mmseg MiT",
    TOPFORMER: "official TopFormer", SEGEDGE_NAMES: "segedge state dict",
}
_FAMILY = {HF: "segformer", HF_V5: "segformer", NVLABS: "segformer", NVLABS_BACKBONE: "segformer",
           MMSEG: "segformer", TOPFORMER: "topformer", SEGEDGE_NAMES: "segformer"}
_LN_EPS = {HF: 1e-5, HF_V5: 1e-5, NVLABS: 1e-6, NVLABS_BACKBONE: 1e-6, MMSEG: 1e-6}
# The MiT hyper-parameters segedge implements (shared by B0…B5); a HF config that differs cannot be loaded.
_MIT_FIXED = dict(num_attention_heads=[1, 2, 5, 8], sr_ratios=[8, 4, 2, 1], patch_sizes=[7, 3, 3, 3],
                  strides=[4, 2, 2, 2], mlp_ratios=[4, 4, 4, 4], num_channels=3, num_encoder_blocks=4)
# Classifier heads of ImageNet-pretraining checkpoints: dropped when only the backbone is wanted.
_IMAGENET_HEADS = ("head.", "classifier.")


def convert(sd: dict[str, torch.Tensor], header: dict[str, str], spec, backbone_only: bool = False,
            path: Path | None = None) -> tuple[str, dict[str, torch.Tensor], dict[str, Any]]:
    """Detect the layout of `sd` and return (format name, converted state dict, meta)."""
    name = path.name if path else "checkpoint"
    fmt = detect_format(sd)
    if fmt is None:
        raise CheckpointError(
            f"{name}: unrecognised checkpoint layout (first keys: {', '.join(list(sd)[:3]) or 'none'}); "
            "supported: segedge .safetensors, Hugging Face SegFormer, NVlabs SegFormer .pth, mmseg MiT backbone, "
            "official TopFormer .pth")
    label = _FORMAT_LABEL[fmt]
    family = _FAMILY[fmt]
    if family != spec.family:
        guess = _guess_model(sd, fmt)
        raise CheckpointError(
            f"{name} is a {family} checkpoint ({label} format), but '{spec.name}' is a {spec.family} model; "
            f"pass --model {guess or ('b0…b5' if family == 'segformer' else 'topformer-t/s/b')}")

    meta: dict[str, Any] = {"source_format": fmt}
    if fmt in _LN_EPS:
        meta["ln_eps"] = _LN_EPS[fmt]
    if fmt in (HF, HF_V5):
        out, dropped = _convert_hf(sd, fmt, backbone_only)
        hf_config = _hf_config(header, name)
        if hf_config is not None:
            _check_hf_config(hf_config, name)
            meta.update(_hf_meta(hf_config, path))
    elif fmt in (NVLABS, NVLABS_BACKBONE, SEGEDGE_NAMES):
        out, dropped = _convert_nvlabs(sd, backbone_only)
    elif fmt == MMSEG:
        out, dropped = _convert_mmseg(sd, backbone_only, name)
    else:
        out, dropped = _convert_topformer(sd, backbone_only)

    has_head = any(k.startswith("decode_head.") for k in out)
    if backbone_only:
        out = {k: v for k, v in out.items() if not k.startswith("decode_head.")}
    elif not has_head:
        raise CheckpointError(
            f"{name} ({label} format) holds only a backbone, no decode head; train a head on it with "
            "`segedge train --weights` (or create_model(..., backbone_only=True) in Python)")
    if not any(k.startswith("backbone.") for k in out):
        raise CheckpointError(f"{name} ({label} format) holds no backbone weights "
                              f"(first keys: {', '.join(list(sd)[:3])}); pass a full or backbone checkpoint")
    _add_bn_counters(out)
    if spec.family == "segformer":
        _check_segformer_variant(out, spec, name, label, check_head=not backbone_only)
    else:
        _check_topformer_variant(out, spec, name, label, check_head=not backbone_only)
    if "class_names" in meta and (backbone_only or len(meta["class_names"]) != _num_classes(out, spec.family)):
        del meta["class_names"]
    if dropped:
        meta["dropped_keys"] = dropped[:20]
    return fmt, out, meta


# ----------------------------------------------------------------------------------------------- detection

def detect_format(sd: dict[str, torch.Tensor]) -> str | None:
    """Name the layout of a state dict from its keys (None when it is none of the supported ones)."""
    keys = list(sd)

    def any_match(pattern: str) -> bool:
        rx = re.compile(pattern)
        return any(rx.match(k) for k in keys)

    if any_match(r"(segformer\.)?encoder\.(patch_embeddings|block|layer_norm)\.\d"):
        return HF
    if any_match(r"(segformer\.)?stages\.\d+\.(patch_embeddings|blocks|layer_norm)\."):
        return HF_V5
    if any_match(r"(backbone\.)?layers\.\d+\.0\.projection\."):
        return MMSEG
    if any_match(r"(backbone\.)?tpm\.stem\.") or any_match(r"(backbone\.)?trans\.transformer_blocks\."):
        return TOPFORMER
    if any_match(r"backbone\.patch_embed1\.proj\."):
        return NVLABS if any_match(r"backbone\.block\d\.\d+\.attn\.kv\.") else SEGEDGE_NAMES
    if any_match(r"patch_embed1\.proj\."):
        return NVLABS_BACKBONE
    return None


def _guess_model(sd: dict[str, torch.Tensor], fmt: str) -> str | None:
    """Best-effort name of the registered model a checkpoint fits (for the hint in error messages)."""
    try:
        if fmt in (HF, HF_V5):
            out = _convert_hf(sd, fmt, True)[0]
        elif fmt == MMSEG:
            out = _convert_mmseg(sd, True, "")[0]
        elif fmt == TOPFORMER:
            out = _convert_topformer(sd, True)[0]
        else:
            out = _convert_nvlabs(sd, True)[0]
        family = _FAMILY[fmt]
        sig = (_segformer_signature if family == "segformer" else _topformer_signature)(out, check_head=False)
        return _match_variant(family, sig, check_head=False)
    except Exception:  # only a hint: the caller raises its own clear error either way
        return None


# ----------------------------------------------------------------------------------------------- Hugging Face

def _hf_config(header: dict[str, str], name: str) -> dict | None:
    text = header.get("hf_config")
    if not text:
        return None
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"config.json next to {name} is not valid JSON ({e.msg}, line {e.lineno}); "
                              "fix or remove it") from e
    return cfg if isinstance(cfg, dict) else None


# Sub-module names inside one HF block → segedge names, for both generations of transformers.
_HF_BLOCK = {
    "layer_norm_1": "norm1", "layer_norm_2": "norm2", "layernorm_before": "norm1", "layernorm_after": "norm2",
    "attention.self.query": "attn.q", "attention.self.key": "attn.k", "attention.self.value": "attn.v",
    "attention.output.dense": "attn.proj", "attention.self.sr": "attn.sr", "attention.self.layer_norm": "attn.norm",
    "attention.q_proj": "attn.q", "attention.k_proj": "attn.k", "attention.v_proj": "attn.v",
    "attention.o_proj": "attn.proj", "attention.sequence_reduction.sequence_reduction": "attn.sr",
    "attention.sequence_reduction.layer_norm": "attn.norm",
    "mlp.dense1": "mlp.fc1", "mlp.dense2": "mlp.fc2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
    "mlp.dwconv.dwconv": "mlp.dwconv.dwconv",
}
_HF_PATCH = {"proj": "proj", "layer_norm": "norm"}


def _stage(m: re.Match, g: int = 1) -> int:
    return int(m[g]) + 1


def _hf_rules() -> list[tuple[re.Pattern, Callable[[re.Match], str | None]]]:
    p = r"(?:segformer\.)?"
    rules: list[tuple[str, Callable[[re.Match], str | None]]] = [
        (p + r"encoder\.patch_embeddings\.(\d+)\.(proj|layer_norm)\.(\w+)",
         lambda m: f"backbone.patch_embed{_stage(m)}.{_HF_PATCH[m[2]]}.{m[3]}"),
        (p + r"stages\.(\d+)\.patch_embeddings\.(proj|layer_norm)\.(\w+)",
         lambda m: f"backbone.patch_embed{_stage(m)}.{_HF_PATCH[m[2]]}.{m[3]}"),
        (p + r"(?:encoder\.block\.(\d+)|stages\.(\d+)\.blocks)\.(\d+)\.(.+)\.(weight|bias)",
         lambda m: (f"backbone.block{int(m[1] or m[2]) + 1}.{m[3]}.{_HF_BLOCK[m[4]]}.{m[5]}"
                    if m[4] in _HF_BLOCK else None)),
        (p + r"(?:encoder\.layer_norm\.(\d+)|stages\.(\d+)\.layer_norm)\.(weight|bias)",
         lambda m: f"backbone.norm{int(m[1] or m[2]) + 1}.{m[3]}"),
        (r"decode_head\.(?:linear_c|linear_projections)\.(\d+)\.proj\.(\w+)",
         lambda m: f"decode_head.linear_c{_stage(m)}.proj.{m[2]}"),
        (r"decode_head\.linear_fuse\.weight", lambda m: "decode_head.linear_fuse.conv.weight"),
        (r"decode_head\.batch_norm\.(\w+)", lambda m: f"decode_head.linear_fuse.bn.{m[1]}"),
        (r"decode_head\.classifier\.(\w+)", lambda m: f"decode_head.linear_pred.{m[1]}"),
    ]
    return [(re.compile(rx), fn) for rx, fn in rules]


_HF_RULES = _hf_rules()


def _convert_hf(sd: dict[str, torch.Tensor], fmt: str, backbone_only: bool
                ) -> tuple[dict[str, torch.Tensor], list[str]]:
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for k, v in sd.items():
        if backbone_only and k.startswith(_IMAGENET_HEADS):  # SegformerForImageClassification's classifier
            dropped.append(k)
            continue
        new = None
        for rx, fn in _HF_RULES:
            m = rx.fullmatch(k)
            if m:
                new = fn(m)
                break
        out[new or k] = v
    return out, dropped


def _check_hf_config(cfg: dict, name: str) -> None:
    mt = cfg.get("model_type")
    if mt is not None and mt != "segformer":
        raise CheckpointError(f"config.json next to {name} describes a '{mt}' model, not SegFormer; "
                              "pass a SegFormer checkpoint")
    for key, want in _MIT_FIXED.items():
        got = cfg.get(key)
        if got is not None and got != want:
            raise CheckpointError(f"{name}: config.json sets {key}={got}, but segedge's MiT uses {want}; "
                                  "this checkpoint is not a standard MiT-B0…B5 SegFormer")
    act = cfg.get("hidden_act", "gelu")
    if act != "gelu":
        raise CheckpointError(f"{name}: config.json sets hidden_act='{act}', but MiT uses exact 'gelu'; "
                              "this checkpoint is not a standard MiT-B0…B5 SegFormer")


def _hf_meta(cfg: dict, path: Path | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"hf_config": {k: cfg[k] for k in ("hidden_sizes", "depths", "decoder_hidden_size",
                                                               "num_labels") if k in cfg}}
    id2label = cfg.get("id2label") or {}
    try:
        names = [str(id2label[str(i)] if str(i) in id2label else id2label[i]) for i in range(len(id2label))]
    except KeyError:
        names = []
    # transformers fills LABEL_0…LABEL_n when no labels were given: those carry no information.
    if names and names != [f"LABEL_{i}" for i in range(len(names))]:
        meta["class_names"] = names
    if path is not None:
        pp = (path if path.is_dir() else path.parent) / "preprocessor_config.json"
        if pp.is_file():
            try:
                prep = json.loads(pp.read_text())
            except (json.JSONDecodeError, OSError):
                prep = {}
            scale = 255.0 if prep.get("do_rescale", True) else 1.0
            if prep.get("do_normalize", True) and len(prep.get("image_mean") or []) == 3 \
                    and len(prep.get("image_std") or []) == 3:
                # segedge keeps mean/std on the 0-255 scale; HF stores them for 0-1 inputs after rescaling.
                meta["mean"] = [round(float(m) * scale, 6) for m in prep["image_mean"]]
                meta["std"] = [round(float(s) * scale, 6) for s in prep["image_std"]]
    return meta


# ----------------------------------------------------------------------------------------------- NVlabs

def _convert_nvlabs(sd: dict[str, torch.Tensor], backbone_only: bool) -> tuple[dict[str, torch.Tensor], list[str]]:
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    bare = not any(k.startswith("backbone.") for k in sd)
    for k, v in sd.items():
        if k.startswith("decode_head.conv_seg."):
            # BaseDecodeHead creates conv_seg but NVlabs' SegFormerHead predicts with linear_pred: unused.
            dropped.append(k)
            continue
        if bare:
            if k.startswith(_IMAGENET_HEADS):
                if backbone_only:
                    dropped.append(k)
                    continue
            else:
                k = "backbone." + k
        m = re.fullmatch(r"(backbone\.block\d\.\d+\.attn)\.kv\.(weight|bias)", k)
        if m:
            kk, vv = v.chunk(2, dim=0)  # NVlabs reshapes kv output as (2, heads, head_dim): k first, then v
            out[f"{m[1]}.k.{m[2]}"] = kk.contiguous()
            out[f"{m[1]}.v.{m[2]}"] = vv.contiguous()
        else:
            out[k] = v
    return out, dropped


# ----------------------------------------------------------------------------------------------- mmseg

_MMSEG_BLOCK = {"norm1": "norm1", "norm2": "norm2", "attn.attn.out_proj": "attn.proj", "attn.sr": "attn.sr",
                "attn.norm": "attn.norm", "ffn.layers.0": "mlp.fc1", "ffn.layers.1": "mlp.dwconv.dwconv",
                "ffn.layers.4": "mlp.fc2"}


def _convert_mmseg(sd: dict[str, torch.Tensor], backbone_only: bool, name: str
                   ) -> tuple[dict[str, torch.Tensor], list[str]]:
    heads = [k for k in sd if k.startswith(("decode_head.", "auxiliary_head."))]
    if heads and not backbone_only:
        raise CheckpointError(
            f"{name} is an mmseg SegFormer checkpoint: its SegformerHead (decode_head.convs / fusion_conv, a "
            "conv+BN+ReLU per stage) is a different decoder from segedge's All-MLP head; load only its backbone "
            "and train the head: `segedge train --weights` (or create_model(..., backbone_only=True) in Python)")
    out: dict[str, torch.Tensor] = {}
    dropped = list(heads)
    for k, v in sd.items():
        if k in heads:
            continue
        kb = k[len("backbone."):] if k.startswith("backbone.") else k
        if backbone_only and kb.startswith(_IMAGENET_HEADS):
            dropped.append(k)
            continue
        m = re.fullmatch(r"layers\.(\d+)\.0\.(projection|norm)\.(\w+)", kb)
        if m:
            out[f"backbone.patch_embed{_stage(m)}.{'proj' if m[2] == 'projection' else 'norm'}.{m[3]}"] = v
            continue
        m = re.fullmatch(r"layers\.(\d+)\.2\.(\w+)", kb)
        if m:
            out[f"backbone.norm{_stage(m)}.{m[2]}"] = v
            continue
        m = re.fullmatch(r"layers\.(\d+)\.1\.(\d+)\.attn\.attn\.in_proj_(weight|bias)", kb)
        if m:
            # nn.MultiheadAttention stacks the q, k, v projections in that order along dim 0.
            for part, t in zip("qkv", v.chunk(3, dim=0)):
                out[f"backbone.block{_stage(m)}.{m[2]}.attn.{part}.{m[3]}"] = t.contiguous()
            continue
        m = re.fullmatch(r"layers\.(\d+)\.1\.(\d+)\.(.+)\.(weight|bias)", kb)
        if m and m[3] in _MMSEG_BLOCK:
            sub = _MMSEG_BLOCK[m[3]]
            if sub in ("mlp.fc1", "mlp.fc2") and m[4] == "weight" and v.ndim == 4:
                v = v.reshape(v.shape[0], v.shape[1])  # 1×1 conv over the token grid == linear per token
            out[f"backbone.block{_stage(m)}.{m[2]}.{sub}.{m[4]}"] = v
            continue
        out[k] = v  # unmapped: load_into reports it as unexpected
    return out, dropped


# ----------------------------------------------------------------------------------------------- TopFormer

def _convert_topformer(sd: dict[str, torch.Tensor], backbone_only: bool) -> tuple[dict[str, torch.Tensor], list[str]]:
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for k, v in sd.items():
        if k.startswith(("tpm.", "trans.", "SIM.")):
            k = "backbone." + k  # the backbone saved on its own (e.g. ImageNet pretraining)
        elif backbone_only and k.startswith(_IMAGENET_HEADS + ("auxiliary_head.",)):
            dropped.append(k)
            continue
        out[k] = v  # official module names are segedge's; decode_head.conv_seg is TopFormer's classifier
    return out, dropped


# ----------------------------------------------------------------------------------------------- checks

def _add_bn_counters(sd: dict[str, torch.Tensor]) -> None:
    # Older PyTorch / some exporters omit BatchNorm's num_batches_tracked; it never affects inference.
    for k in [k for k in sd if k.endswith(".running_mean")]:
        c = k[: -len("running_mean")] + "num_batches_tracked"
        sd.setdefault(c, torch.tensor(0, dtype=torch.long))


def _num_classes(sd: dict[str, torch.Tensor], family: str) -> int | None:
    w = sd.get("decode_head.linear_pred.weight" if family == "segformer" else "decode_head.conv_seg.weight")
    return int(w.shape[0]) if w is not None else None


def _segformer_signature(sd: dict[str, torch.Tensor], check_head: bool) -> dict[str, Any]:
    dims, depths = [], []
    for i in range(1, 5):
        w = sd.get(f"backbone.patch_embed{i}.proj.weight")
        dims.append(int(w.shape[0]) if w is not None else None)
        idx = [int(m[1]) for k in sd if (m := re.match(rf"backbone\.block{i}\.(\d+)\.", k))]
        depths.append(max(idx) + 1 if idx else 0)
    sig: dict[str, Any] = {"embed dims": tuple(dims), "depths": tuple(depths)}
    if check_head:
        w = sd.get("decode_head.linear_c1.proj.weight")
        sig["decoder dim"] = int(w.shape[0]) if w is not None else None
    return sig


def _segformer_expected(spec, check_head: bool) -> dict[str, Any]:
    cfg = spec.config
    sig: dict[str, Any] = {"embed dims": tuple(cfg["embed_dims"]), "depths": tuple(cfg["depths"])}
    if check_head:
        sig["decoder dim"] = cfg["decoder_dim"]
    return sig


def _topformer_signature(sd: dict[str, torch.Tensor], check_head: bool) -> dict[str, Any]:
    layers = {int(m[1]) for k in sd if (m := re.match(r"backbone\.tpm\.layer(\d+)\.", k))}
    q = sd.get("backbone.trans.transformer_blocks.0.attn.to_q.c.weight")
    sig: dict[str, Any] = {
        "token layers": len(layers),
        "semantic dim": int(q.shape[1]) if q is not None else None,
        "heads": int(q.shape[0]) // 16 if q is not None else None,
    }
    if check_head:
        w = sd.get("decode_head.linear_fuse.conv.weight")
        sig["head channels"] = int(w.shape[0]) if w is not None else None
    return sig


def _topformer_expected(spec, check_head: bool) -> dict[str, Any]:
    from .topformer import TOPFORMER_CONFIGS

    cfg = TOPFORMER_CONFIGS[spec.config["variant"]]
    sig: dict[str, Any] = {"token layers": len(cfg["cfgs"]), "semantic dim": sum(cfg["channels"]),
                           "heads": cfg["num_heads"]}
    if check_head:
        sig["head channels"] = cfg["head_channels"]
    return sig


def _match_variant(family: str, sig: dict[str, Any], check_head: bool) -> str | None:
    from .registry import get_spec, list_models

    expected = _segformer_expected if family == "segformer" else _topformer_expected
    for name in list_models():
        s = get_spec(name)
        if s.family == family and expected(s, check_head) == sig:
            return s.name
    return None


def _fmt_sig(sig: dict[str, Any]) -> str:
    def val(v: Any) -> str:
        return "/".join(str(x) for x in v) if isinstance(v, tuple) else str(v)
    return ", ".join(f"{k} {val(v)}" for k, v in sig.items())


def _variant_error(name: str, label: str, spec, sig: dict, want: dict, found: str | None) -> CheckpointError:
    what = f"'{found}'" if found else "an unknown variant"
    fix = f"pass --model {found}" if found else "pick the --model this checkpoint was trained as"
    return CheckpointError(f"{name} ({label} format) holds {what} ({_fmt_sig(sig)}), but --model {spec.name} "
                           f"expects {_fmt_sig(want)}; {fix}")


def _check_segformer_variant(sd: dict[str, torch.Tensor], spec, name: str, label: str, check_head: bool) -> None:
    sig = _segformer_signature(sd, check_head)
    want = _segformer_expected(spec, check_head)
    if sig != want:
        raise _variant_error(name, label, spec, sig, want, _match_variant("segformer", sig, check_head))


def _check_topformer_variant(sd: dict[str, torch.Tensor], spec, name: str, label: str, check_head: bool) -> None:
    sig = _topformer_signature(sd, check_head)
    want = _topformer_expected(spec, check_head)
    if sig != want:
        raise _variant_error(name, label, spec, sig, want, _match_variant("topformer", sig, check_head))
