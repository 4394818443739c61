"""Export mode of every registered model: traceable by torch.fx and torch.jit.trace without outside patches, outputs
equal to eager, and normal mode unchanged (resize still makes static sizes; DropPath still drops in training).

torch.jit.script is not covered: the models look up their stages by name (`getattr(self, f"block{i}")`, kept so
that every checkpoint family loads by name), which TorchScript's compiler cannot follow.
"""

from __future__ import annotations

import pytest
import torch
import torch.fx

from segedge.models import create_model, export_mode, list_models, set_export_mode
from segedge.models.layers import DropPath

HEAVY = {"b2", "b3", "b4", "b5"}  # 25-82 M parameters: building and tracing them takes > 20 s here
MODELS = [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in list_models()]
SIZE = 64  # a multiple of every family's size_multiple (SegFormer 32, TopFormer 64)


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=5).eval()


@pytest.mark.parametrize("name", MODELS)
def test_fx_and_jit_trace_match_eager(name: str) -> None:
    model = _model(name)
    x, y = torch.randn(1, 3, SIZE, SIZE), torch.randn(2, 3, 2 * SIZE, SIZE)
    with torch.no_grad():
        ref_x, ref_y = model(x), model(y)
        with export_mode(model):
            assert torch.equal(model(x), ref_x)  # export mode computes exactly what normal mode does
            graph = torch.fx.symbolic_trace(model)
            traced = torch.jit.trace(model, x, check_trace=False)
        assert torch.equal(graph(x), ref_x)
        assert torch.equal(graph(y), ref_y)  # the FX graph keeps shapes symbolic: any valid size and batch
        torch.testing.assert_close(traced(x), ref_x, rtol=0, atol=1e-5)
    assert any(n.op == "call_module" for n in graph.graph.nodes)
    assert not any(getattr(m, "export_mode", False) for m in model.modules())  # the context restored normal mode


@pytest.mark.parametrize("name", ["b0", "topformer-t"])
def test_fx_trace_in_training_mode(name: str) -> None:
    """QAT tools (coremltools' LinearQuantizer) trace the model in training mode, where DropPath is active."""
    model = _model(name).train()
    assert any(isinstance(m, DropPath) and m.p > 0 for m in model.modules())
    with export_mode(model):
        graph = torch.fx.symbolic_trace(model)
    graph.eval()
    model.eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(graph(x), model(x))


def test_normal_mode_is_not_fx_traceable() -> None:
    """Why the mode exists: normal mode turns traced sizes into ints (static ONNX Resize sizes)."""
    model = _model("b0")
    with pytest.raises(TypeError, match="Proxy"):
        torch.fx.symbolic_trace(model)
    assert set_export_mode(model) is model
    torch.fx.symbolic_trace(model)
    assert model.set_export_mode(False) is model and not model.decode_head.export_mode


def test_drop_path_only_in_normal_training_mode() -> None:
    torch.manual_seed(0)
    dp = DropPath(0.5).train()
    x = torch.ones(64, 4, 3)
    y = dp(x)
    assert set(y[:, 0, 0].tolist()) == {0.0, 2.0}  # per-sample drop, survivors scaled by 1/keep
    dp.export_mode = True
    assert dp(x) is x
    dp.export_mode = False
    assert dp.eval()(x) is x
