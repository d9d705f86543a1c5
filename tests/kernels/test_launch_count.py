"""How many kernels a decode step launches per decoder layer, counted on the CPU.

Inside a decode step's CUDA graph each launch costs a few microseconds whatever it moves, which at
batch 1 is as much as the weights' own streaming time for the small ones (kernels/NOTES.md). The
fusions that keep the count down (norms, SiLU-and-mul and residual adds inside the projections'
GEMMs, q/k norms + rotary + KV store in one kernel, the split merge inside decode attention) are
what this pins: the model's forward on one decode row is run with the Triton kernels interpreted,
counting each Triton launch and each ATen op that would launch a kernel on a GPU (views and
allocations launch none).
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from torch.utils._python_dispatch import TorchDispatchMode
from triton.runtime.interpreter import InterpretedFunction

from pagoda.engine.llm import LLM
from pagoda.engine.models.llama import DecoderLayer
from pagoda.engine.sampling_params import SamplingParams
from tests.kernels.conftest import ON_GPU

# ATen ops that only reshape, alias, allocate or compute on the host: no kernel.
_NO_KERNEL = {"view", "_unsafe_view", "slice", "split", "split_with_sizes", "as_strided", "t", "transpose", "expand",
              "detach", "unsqueeze", "squeeze", "permute", "empty", "empty_strided", "alias", "select", "unflatten",
              "reshape", "_reshape_alias", "lift_fresh", "promote_types"}


class _Launches(TorchDispatchMode):
    """Counts kernel-launching ATen ops; a Triton launch counts once (the interpreter's own ops do not)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()
        self.inside_triton = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        name = func.overloadpacket.__name__
        if not self.inside_triton and name not in _NO_KERNEL:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


@contextmanager
def _counting(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Launches]:
    launches = _Launches()
    run = InterpretedFunction.run

    def counted(self: InterpretedFunction, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        launches.counts[self.fn.__name__] += 1
        launches.inside_triton = True
        try:
            return run(self, *args, **kwargs)
        finally:
            launches.inside_triton = False

    with monkeypatch.context() as patch, launches:
        patch.setattr(InterpretedFunction, "run", counted)
        yield launches


@pytest.mark.skipif(ON_GPU, reason="counts launches of the interpreted kernels")
@pytest.mark.parametrize("folded", [True, False])
@pytest.mark.parametrize("arch", ["llama3", "qwen3"])
def test_decode_step_launches_six_kernels_per_layer(arch: str, folded: bool, tiny_model, triton_everywhere: None,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Per layer: the qkv projection with the input norm inside, rotate_and_store_kv (Qwen3's per-head norms
    inside it), decode attention (one launch, splits or not), o_proj adding the residual, gate_up with the
    second norm inside, down with SiLU-and-mul before and the residual add after; per step the embedding and
    the final norm. Unfolded (steps past one row tile of the fused GEMM, quantized or LoRA'd projections)
    nine: the fused residual norm, qkv, rotary/store, attention, o_proj, the second norm, gate_up,
    SiLU-and-mul, down."""
    if not folded:
        monkeypatch.setattr(DecoderLayer, "fused_rows", 0)
    llm = LLM(str(tiny_model(arch)), device="cpu", max_num_seqs=2)
    layers = llm.engine.model_config.num_layers
    model = llm.engine.runner.model
    steps: list[collections.Counter[str]] = []
    forward = model.forward

    def counted_forward(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        with _counting(monkeypatch) as launches:
            out = forward(*args, **kwargs)
        steps.append(launches.counts)
        return out

    monkeypatch.setattr(model, "forward", counted_forward)
    llm.generate(["Hello, my name is"], SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True))
    decode = steps[-1]  # the prompt's step, then one decode step
    per_step = {"embedding": 1, "_rotary_kernel": layers, "_decode_kernel": layers}
    if folded:
        assert decode == {**per_step, "_fused_linear_kernel": 4 * layers, "_rms_norm_kernel": 1}, decode
    else:
        assert decode == {**per_step, "linear": 4 * layers, "_rms_norm_kernel": 2 * layers + 1,
                          "_act_and_mul_kernel": layers}, decode
