"""Model zoo: forward shapes and strides, aliases, input-size rules, determinism, traceability, LayerNorm eps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segedge.errors import SegedgeError
from segedge.models import create_model, get_spec, list_models, validate_input_size

# Small sizes keep the file fast on 2 cores; non-square sizes catch swapped H/W.
FORWARD_SIZES = {
    "b0": [(128, 128), (128, 192)],
    "b1": [(64, 64)],
    "b2": [(64, 64)],
    "b3": [(64, 64)],
    "b4": [(64, 64)],
    "b5": [(64, 64)],
    "topformer-t": [(128, 128), (256, 256), (128, 256)],
    "topformer-s": [(128, 128)],
    "topformer-b": [(128, 192)],
}
NUM_CLASSES = 7
# Building B3-B5 on the CPU spends seconds in truncated-normal init of 45-85 M weights; for shape checks they are
# built on the meta device (same builder, same modules) and materialised with cheap random weights.
CHEAP_INIT = {"b3", "b4", "b5"}


def _cheap_model(name: str, num_classes: int) -> nn.Module:
    from segedge.models.complexity import build_meta_model

    model = build_meta_model(name, num_classes).to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, t in [*model.named_parameters(), *model.named_buffers()]:
            if n.endswith("running_var"):
                t.fill_(1.0)
            elif n.endswith(("running_mean", "num_batches_tracked")):
                t.zero_()
            elif t.is_floating_point():
                t.normal_(0.0, 0.02, generator=g)
    return model.eval()


def test_every_registered_model_is_covered():
    assert sorted(FORWARD_SIZES) == sorted(list_models())


@pytest.mark.parametrize("name", list(FORWARD_SIZES))
def test_forward_shape_and_output_stride(name):
    torch.manual_seed(0)
    spec = get_spec(name)
    if name in CHEAP_INIT:
        model = _cheap_model(name, NUM_CLASSES)
    else:
        model = create_model(name, num_classes=NUM_CLASSES).eval()
        assert model.pretrained_cfg["output_stride"] == spec.output_stride
    assert model.output_stride == spec.output_stride == (4 if spec.family == "segformer" else 8)
    for h, w in FORWARD_SIZES[name]:
        with torch.no_grad():
            out = model(torch.randn(1, 3, h, w))
        assert out.shape == (1, NUM_CLASSES, h // spec.output_stride, w // spec.output_stride)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("alias,canonical", [
    ("b0", "b0"), ("mit-b0", "b0"), ("SegFormer-B0", "b0"), ("segformer_b2", "b2"), ("MIT-B5", "b5"),
    ("topformer-t", "topformer-t"), ("topformer_tiny", "topformer-t"), ("TopFormer-Small", "topformer-s"),
    ("topformerb", "topformer-b"), ("  b1 ", "b1"),
])
def test_aliases_resolve(alias, canonical):
    assert get_spec(alias).name == canonical


def test_create_model_by_alias_records_the_canonical_name():
    model = create_model("TopFormer-Tiny", num_classes=3)
    assert model.pretrained_cfg["model"] == "topformer-t"
    assert model.pretrained_cfg["family"] == "topformer"


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(SegedgeError) as ei:
        get_spec("b9")
    msg = str(ei.value)
    assert "b9" in msg and "\n" not in msg
    for name in list_models():
        assert name in msg


@pytest.mark.parametrize("name,size,ok", [
    ("b0", (512, 512), True), ("b0", (384, 512), True), ("b0", (96, 160), True),
    ("b0", (100, 128), False), ("b0", (128, 100), False), ("b0", (0, 64), False), ("b0", (-32, 64), False),
    ("topformer-t", (384, 512), True), ("topformer-t", (64, 64), True),
    ("topformer-t", (96, 128), False), ("topformer-s", (128, 100), False), ("topformer-b", (0, 0), False),
])
def test_input_size_validation(name, size, ok):
    if ok:
        assert validate_input_size(name, size) == size
    else:
        with pytest.raises(SegedgeError) as ei:
            validate_input_size(name, size)
        assert "\n" not in str(ei.value)


def test_topformer_size_error_names_nearest_multiples_of_64():
    with pytest.raises(SegedgeError) as ei:
        validate_input_size("topformer-t", (100, 100))
    msg = str(ei.value)
    assert "64" in msg and "64 or 128" in msg


def test_topformer_forward_rejects_sizes_that_are_not_multiples_of_64():
    model = create_model("topformer-t", num_classes=3).eval()
    with pytest.raises(ValueError, match="multiples of 64"):
        model(torch.randn(1, 3, 96, 128))


@pytest.mark.parametrize("name,size", [("b0", (128, 128)), ("topformer-t", (128, 192))])
def test_eval_mode_is_deterministic_and_batch_independent(name, size):
    torch.manual_seed(1)
    model = create_model(name, num_classes=5).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        a, b = model(x), model(x)
        singles = torch.cat([model(x[:1]), model(x[1:])])
    assert torch.equal(a, b)
    # Each sample's logits must not depend on the other samples in the batch (BN in eval, no cross-batch ops);
    # oneDNN picks different kernels per batch size, so compare relative to the logits' scale.
    scale = a.abs().max().item()
    assert (a - singles).abs().max().item() <= 1e-5 * scale


def test_train_mode_uses_dropout_and_eval_does_not():
    torch.manual_seed(2)
    model = create_model("b0", num_classes=5)
    x = torch.randn(1, 3, 64, 64)
    model.train()
    with torch.no_grad():
        t1, t2 = model(x), model(x)
    model.eval()
    with torch.no_grad():
        e1, e2 = model(x), model(x)
    assert not torch.equal(t1, t2)
    assert torch.equal(e1, e2)


# resize() turns traced shape values into ints: sizes are static per export, which is what the warning is about.
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("name,size", [("b0", (128, 160)), ("topformer-t", (128, 192))])
def test_traced_graph_matches_eager_on_other_data(name, size):
    """A trace records one path; if the forward branched on data, other inputs would diverge from eager."""
    torch.manual_seed(3)
    model = create_model(name, num_classes=6).eval()
    g = torch.Generator().manual_seed(10)
    other = torch.randn(1, 3, *size, generator=g) * 3.0 + 1.0
    # Profiling executor passes only cost time here; the recorded graph is what is checked.
    with torch.no_grad(), torch.jit.optimized_execution(False):
        traced = torch.jit.trace(model, torch.randn(1, 3, *size), check_trace=False)
        expected = model(other)
        got = traced(other)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()


def _layernorm_eps(model: nn.Module) -> dict[str, float]:
    return {n: m.eps for n, m in model.backbone.named_modules() if isinstance(m, nn.LayerNorm)}


def test_set_layernorm_eps_switches_block_and_stage_norms_only():
    model = create_model("b0", num_classes=3).eval()
    before = _layernorm_eps(model)
    block_or_stage = {n for n in before if n.endswith((".norm1", ".norm2")) or n in ("norm1", "norm2", "norm3", "norm4")}
    others = set(before) - block_or_stage
    # NVlabs layout: 4 stage norms + 2 per block; patch-embed and spatial-reduction norms keep eps 1e-5.
    assert len(block_or_stage) == 4 + 2 * 8
    assert any(".patch_embed" in f".{n}" for n in others) and any(".attn.norm" in f".{n}" for n in others)
    assert all(before[n] == 1e-6 for n in block_or_stage)
    assert all(before[n] == 1e-5 for n in others)

    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        y_before = model(x)
    model.set_layernorm_eps(1e-3)
    after = _layernorm_eps(model)
    assert all(after[n] == 1e-3 for n in block_or_stage)
    assert all(after[n] == 1e-5 for n in others)
    assert model.ln_eps == 1e-3
    with torch.no_grad():
        assert not torch.equal(model(x), y_before)  # the eps takes effect in the computation


@pytest.mark.parametrize("name", ["b0", "b2"])
def test_deploy_form_folds_the_segformer_decoder_exactly(name):
    from segedge.models import deploy_form

    torch.manual_seed(0)
    m = create_model(name, num_classes=11).eval()
    bn = m.decode_head.linear_fuse.bn  # non-trivial statistics, so the BatchNorm fold is exercised too
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2.0)
    nn.init.uniform_(bn.weight, 0.5, 1.5)
    nn.init.uniform_(bn.bias, -0.5, 0.5)
    folded, paths = deploy_form(m)
    assert paths == ["decode_head"] and type(m.decode_head).__name__ == "SegFormerHead"  # the original is untouched
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        a, b = m(x), folded(x)
    assert (a - b).abs().max() <= 1e-4 * a.abs().max()
    dim = m.decode_head.linear_fuse.conv.out_channels
    convs = {n: c for n, c in folded.decode_head.named_modules() if isinstance(c, nn.Conv2d)}
    assert set(convs) == {"linear_c1.proj", "linear_c2.proj", "linear_c3.proj", "linear_c4.proj", "linear_pred"}
    assert all(c.in_channels < 4 * dim for c in convs.values())  # no 4·dim → dim conv at 1/4 resolution left
    with torch.no_grad():  # export mode (symbolic resize) computes the same
        assert torch.allclose(folded.set_export_mode(True)(x), b, atol=1e-5)


def test_deploy_form_leaves_a_model_without_one_as_it_is():
    from segedge.models import deploy_form

    torch.manual_seed(0)
    m = create_model("topformer-t", num_classes=5).eval()
    folded, paths = deploy_form(m)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert paths == [] and torch.equal(m(x), folded(x))
