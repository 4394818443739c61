"""Numerical parity with Hugging Face transformers' SegformerForSemanticSegmentation, through files on disk."""

from __future__ import annotations

import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")

from segedge.errors import CheckpointError  # noqa: E402
from segedge.models import create_model  # noqa: E402

HF_CONFIGS = {
    "b0": dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], decoder_hidden_size=256),
    "b1": dict(hidden_sizes=[64, 128, 320, 512], depths=[2, 2, 2, 2], decoder_hidden_size=256),
}
LABELS = ["sky", "building", "pole", "road", "sidewalk", "tree", "car"]
X_SHAPE = (1, 3, 96, 128)  # non-square so that a height/width mix-up shows


def _randomize(model: torch.nn.Module) -> None:
    """Make every parameter and BN statistic matter, and make LayerNorm eps matter too."""
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm2d)):
                m.weight.normal_(1.0, 0.2)
                m.bias.normal_(0.0, 0.1)
            if isinstance(m, torch.nn.LayerNorm) and "patch_embeddings" in name:
                # Tiny activations entering the block norms: a 1e-5 vs 1e-6 eps mix-up then moves the logits.
                m.weight.mul_(0.003)
                m.bias.mul_(0.003)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and m.bias is not None:
                m.bias.normal_(0.0, 0.02)
        model.decode_head.classifier.weight.mul_(10.0)  # logits of order 1


def _hf_model(variant: str, seed: int = 0):
    cfg = transformers.SegformerConfig(
        **HF_CONFIGS[variant], num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)})
    torch.manual_seed(seed)
    model = transformers.SegformerForSemanticSegmentation(cfg).eval()
    _randomize(model)
    return model


@pytest.fixture(scope="module")
def hf_b0():
    return _hf_model("b0")


@pytest.fixture(scope="module")
def b0_dir(hf_b0, tmp_path_factory):
    d = tmp_path_factory.mktemp("hf_b0")
    hf_b0.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def x():
    return torch.randn(*X_SHAPE, generator=torch.Generator().manual_seed(1))


def _max_diff(hf_model, ours, x) -> float:
    with torch.no_grad():
        ref = hf_model(pixel_values=x).logits
        out = ours.eval()(x)
    assert out.shape == ref.shape == (x.shape[0], len(LABELS), x.shape[2] // 4, x.shape[3] // 4)
    return float((out - ref).abs().max())


@pytest.mark.parametrize("variant", ["b0", "b1"])
def test_save_pretrained_folder_parity(variant, x, tmp_path, request):
    if variant == "b0":
        hf_model, folder = request.getfixturevalue("hf_b0"), request.getfixturevalue("b0_dir")
    else:
        hf_model, folder = _hf_model(variant), tmp_path
        hf_model.save_pretrained(folder)
    ours = create_model(variant, weights=folder)
    assert _max_diff(hf_model, ours, x) <= 1e-4
    cfg = ours.pretrained_cfg
    assert cfg["weights_format"] == "huggingface"
    assert cfg["num_classes"] == len(LABELS)
    assert cfg["class_names"] == LABELS
    assert cfg["ln_eps"] == 1e-5


def test_layernorm_eps_matters(hf_b0, b0_dir, x):
    # Guards the test's sensitivity: with NVlabs' 1e-6 eps the same weights miss the tolerance by far.
    wrong = create_model("b0", weights=b0_dir, ln_eps=1e-6)
    assert _max_diff(hf_b0, wrong, x) > 1e-3


def test_safetensors_file_alone(hf_b0, b0_dir, x, tmp_path):
    (tmp_path / "alone").mkdir()
    shutil.copy(b0_dir / "model.safetensors", tmp_path / "alone" / "segformer.safetensors")
    ours = create_model("b0", weights=tmp_path / "alone" / "segformer.safetensors")
    assert _max_diff(hf_b0, ours, x) <= 1e-4
    assert ours.pretrained_cfg["ln_eps"] == 1e-5
    assert ours.pretrained_cfg["class_names"] == [f"class_{i}" for i in range(len(LABELS))]  # no config.json


def test_pytorch_model_bin_folder(hf_b0, b0_dir, x, tmp_path):
    from safetensors.torch import load_file

    legacy = tmp_path / "legacy"
    legacy.mkdir()
    shutil.copy(b0_dir / "config.json", legacy / "config.json")
    # What transformers 4.x wrote with safe_serialization=False: the classic key names, pickled tensors.
    torch.save(load_file(str(b0_dir / "model.safetensors")), legacy / "pytorch_model.bin")
    ours = create_model("b0", weights=legacy)
    assert _max_diff(hf_b0, ours, x) <= 1e-4
    assert ours.pretrained_cfg["class_names"] == LABELS


def test_transformers5_in_memory_names(hf_b0, x, tmp_path):
    # save_original_format=False writes transformers 5's own names (stages.N.blocks.M.attention.q_proj, …).
    hf_b0.save_pretrained(tmp_path / "v5", save_original_format=False)
    ours = create_model("b0", weights=tmp_path / "v5")
    assert ours.pretrained_cfg["weights_format"] == "huggingface-v5"
    assert _max_diff(hf_b0, ours, x) <= 1e-4
    torch.save(hf_b0.state_dict(), tmp_path / "state.pth")
    assert any(".attention.q_proj." in k for k in hf_b0.state_dict())
    ours = create_model("b0", weights=tmp_path / "state.pth")
    assert _max_diff(hf_b0, ours, x) <= 1e-4


def test_preprocessor_config_mean_std(hf_b0, tmp_path):
    hf_b0.save_pretrained(tmp_path)
    transformers.SegformerImageProcessor(image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3]).save_pretrained(
        tmp_path)
    cfg = create_model("b0", weights=tmp_path).pretrained_cfg
    assert cfg["mean"] == pytest.approx([127.5, 102.0, 76.5])
    assert cfg["std"] == pytest.approx([51.0, 63.75, 76.5])


def test_wrong_variant_names_both(tmp_path):
    _hf_model("b1").save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"holds 'b1' .*--model b0 expects embed dims 32/64/160/256.*"
                                              r"pass --model b1"):
        create_model("b0", weights=tmp_path)


def test_wrong_family(b0_dir):
    with pytest.raises(CheckpointError, match=r"segformer checkpoint \(Hugging Face SegFormer format\).*"
                                              r"'topformer-t' is a topformer model; pass --model b0"):
        create_model("topformer-t", weights=b0_dir)


def test_non_mit_config_rejected(tmp_path):
    cfg = transformers.SegformerConfig(**HF_CONFIGS["b0"], num_attention_heads=[1, 2, 4, 8], num_labels=3)
    transformers.SegformerForSemanticSegmentation(cfg).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"num_attention_heads=\[1, 2, 4, 8\].*uses \[1, 2, 5, 8\]"):
        create_model("b0", weights=tmp_path)


def test_backbone_only_from_imagenet_classifier(x, tmp_path):
    cfg = transformers.SegformerConfig(**HF_CONFIGS["b0"], num_labels=10)
    torch.manual_seed(3)
    clf = transformers.SegformerForImageClassification(cfg).eval()
    with torch.no_grad():
        for m in clf.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.normal_(1.0, 0.2)
                m.bias.normal_(0.0, 0.1)
    clf.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="holds only a backbone.*segedge train --weights"):
        create_model("b0", weights=tmp_path)
    ours = create_model("b0", weights=tmp_path, backbone_only=True, num_classes=4).eval()
    with torch.no_grad():
        ref = clf.segformer(pixel_values=x, output_hidden_states=True).hidden_states
        feats = ours.backbone(x)
    assert len(ref) == len(feats) == 4
    for r, f in zip(ref, feats):
        assert float((r - f).abs().max()) <= 1e-4
