"""The built-in levers: where each applies, why it does not elsewhere, and that none changes the
caller's model or its outputs beyond its own rounding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from energyprune.errors import UsageError
from energyprune.levers import builtin, candidate_levers, lever_named, ordered, parse_levers
from energyprune.levers.base import Lever, LeverContext

CPU = torch.device("cpu")


def context(inputs, batch=2, device=CPU):
    return LeverContext(device=device, inputs=inputs, batch_size=batch, make_inputs=None)


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(16, 48)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.proj(x).view(x.shape[0], x.shape[1], 3, 2, 8).unbind(2)
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))


def test_names_resolve_and_typos_are_refused():
    assert lever_named("threads:1").name == "threads:1"
    assert lever_named("compile:reduce-overhead").name == "compile:reduce-overhead"
    assert isinstance(lever_named("bf16"), Lever)
    with pytest.raises(UsageError, match="unknown lever 'bfloat'"):
        lever_named("bfloat")
    with pytest.raises(UsageError, match="threads:N needs a whole number"):
        lever_named("threads:many")
    with pytest.raises(UsageError, match="unknown torch.compile mode"):
        lever_named("compile:fast")
    assert parse_levers("auto") == ["auto"]
    assert parse_levers("compile, bf16") == ["compile", "bf16"]


def test_levers_combine_weights_first_then_compiler_then_context():
    names = [lever.name for lever in ordered([lever_named("threads:1"), lever_named("compile"), lever_named("bf16")])]
    assert names == ["bf16", "compile", "threads:1"]


def test_threads_runs_with_its_count_and_restores_the_setting():
    model = nn.Linear(8, 8)
    x = torch.randn(2, 8)
    before = torch.get_num_threads()
    seen = []
    model.register_forward_hook(lambda *args: seen.append(torch.get_num_threads()))
    lever = builtin.Threads(1)
    if before == 1:
        assert "already the setting" in lever.applies_to(model, context(x))
        return
    assert lever.applies_to(model, context(x)) is None
    wrapped = lever.apply(model, context(x))
    assert torch.equal(wrapped(x), model(x))
    assert seen == [1, before] and torch.get_num_threads() == before
    assert "CPU runs only" in lever.applies_to(model, context(x, device=torch.device("cuda")))


def test_bf16_works_on_a_copy_and_keeps_the_outputs_close(monkeypatch):
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    x = torch.randn(3, 8)
    lever = builtin.Precision("bf16")
    monkeypatch.setattr(builtin, "_cpu_has_native_bf16", lambda: False)
    assert "no native bf16" in lever.applies_to(model, context(x))
    monkeypatch.setattr(builtin, "_cpu_has_native_bf16", lambda: True)
    assert lever.applies_to(model, context(x)) is None
    converted = lever.apply(model, context(x))
    out = converted(x)  # the float input is cast for it
    assert out.dtype == torch.bfloat16 and model[0].weight.dtype == torch.float32
    assert torch.allclose(out.float(), model(x), atol=0.05)
    assert lever.lossy
    assert "emulated" in builtin.Precision("fp16").applies_to(model, context(x))
    assert "already runs in 16-bit" in lever.applies_to(model.to(torch.bfloat16), context(x))


def test_sdpa_kernels_apply_only_to_models_that_call_sdpa():
    x = torch.randn(2, 5, 16)
    assert "never calls scaled_dot_product_attention" in builtin.SdpaKernel("math").applies_to(nn.Linear(16, 16), context(x))
    model = Attention()
    lever = builtin.SdpaKernel("math")
    assert lever.applies_to(model, context(x)) is None
    assert torch.allclose(lever.apply(model, context(x))(x), model(x), atol=1e-6)
    assert "GPUs only" in builtin.SdpaKernel("efficient").applies_to(model, context(x))


def test_compile_says_where_it_cannot_apply(monkeypatch):
    x = torch.randn(2, 8)
    assert "need a GPU" in builtin.Compile("reduce-overhead").applies_to(nn.Linear(8, 8), context(x))
    monkeypatch.setattr(builtin.shutil, "which", lambda name: None)
    assert "no C++ compiler" in builtin.Compile().applies_to(nn.Linear(8, 8), context(x))


def test_hf_attention_needs_an_eager_hugging_face_model():
    assert builtin.HfSdpa().applies_to(nn.Linear(2, 2), context(torch.randn(1, 2))) == "not a Hugging Face model"


def test_candidates_fit_the_device():
    cpu = [lever.name for lever in candidate_levers("cpu", 1)]
    assert "compile" in cpu and "bf16" in cpu and "batch:8" in cpu
    assert "compile:reduce-overhead" not in cpu and "fp16" not in cpu
    gpu = [lever.name for lever in candidate_levers("cuda", 8, workload=False)]
    assert "compile:reduce-overhead" in gpu and "fp16" in gpu and not any(n.startswith(("threads", "batch")) for n in gpu)


@pytest.mark.slow
def test_compile_keeps_the_outputs_of_a_small_model():
    model = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 4)).eval()
    x = torch.randn(2, 8)
    lever = builtin.Compile()
    if lever.applies_to(model, context(x)):
        pytest.skip(lever.applies_to(model, context(x)))
    compiled = lever.apply(model, context(x))
    with torch.inference_mode():
        assert torch.allclose(compiled(x), model(x), atol=1e-5)
