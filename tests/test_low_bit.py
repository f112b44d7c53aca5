"""playground/low_bit.py: weights that are exact GGUF codes are found again bit for bit, the kernel decodes
every weight to the float32 number the tensor holds and multiplies like F.linear, and a model whose weights
are such codes decodes the tokens transformers' `generate` does, eagerly and through the compiled step.

Quantised with gguf-py, the library transformers loads GGUF files with (its quantiser and de-quantiser)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType, quants

from playground import compiled_step, cpu_linear, lean_forward, low_bit, models
from playground.decoding import weight_bytes
from playground.kv_cache import GrowingCache

from conftest import build_tiny_llama

Q4_1, Q8_0 = GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q8_0
pytestmark = pytest.mark.skipif(not low_bit.kernel(), reason="no C++ compiler for the low-bit kernel")


def gguf_round_trip(weight: torch.Tensor, kind) -> torch.Tensor:
    """`weight` as the GGUF file would hold it, loaded back as transformers loads it (float32)."""
    data = weight.detach().to(torch.float32).numpy()
    return torch.from_numpy(quants.dequantize(quants.quantize(data, kind), kind)).to(torch.float32)


def quantised(out: int, k: int, kind, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return gguf_round_trip(torch.randn(out, k, generator=g) * 0.05, kind)


@pytest.mark.parametrize("kind", [Q4_1, Q8_0])
@pytest.mark.parametrize("out, k", [(8, 32), (12, 96), (64, 576)])
def test_every_weight_decodes_to_the_float_the_tensor_holds(kind, out, k):
    """x = the identity picks each weight out alone (one nonzero term per sum): a wrong nibble, scale,
    low or record order anywhere shows as a different float."""
    weight = quantised(out, k, kind)
    codes = low_bit.encode(weight)
    assert codes is not None and codes.bits == (4 if kind == Q4_1 else 8)
    assert torch.equal(codes.linear(torch.eye(k)), weight.t())


@pytest.mark.parametrize("kind", [Q4_1, Q8_0])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8, 9, 16, 17, 35])
def test_products_equal_the_float_product(kind, rows):
    """Every row count the kernel has a path for (1-4 rows: four weight rows at a time; 5-8: two; more:
    eight input rows at a time), output rows split over threads."""
    weight = quantised(40, 64, kind, seed=rows)
    x = torch.randn(1, rows, 64, generator=torch.Generator().manual_seed(rows))
    got = low_bit.encode(weight).linear(x)
    assert got.shape == (1, rows, 40)
    torch.testing.assert_close(got, F.linear(x, weight), atol=2e-6, rtol=1e-5)


def test_weights_that_are_not_codes_stay_float():
    weight = quantised(8, 64, Q4_1)
    nudged = weight.clone()
    nudged[3, 17] = torch.nextafter(nudged[3, 17], torch.tensor(1.0))     # one weight one float off
    assert low_bit.encode(weight) is not None
    assert low_bit.encode(nudged) is None
    assert low_bit.encode(torch.randn(8, 64)) is None                      # plain float32 weights
    assert low_bit.encode(quantised(8, 64, Q4_1).double()) is None
    assert low_bit.encode(torch.zeros(6, 64)) is None                      # rows not a multiple of GROUP
    assert low_bit.encode(torch.zeros(8, 48)) is None                      # inputs not a multiple of 32


def test_few_row_products_go_through_the_codes():
    weight = quantised(16, 64, Q4_1)
    low_bit.attach(weight)
    calls = []
    real = low_bit.Codes.linear
    try:
        low_bit.Codes.linear = lambda self, x: calls.append(x.shape) or real(self, x)
        x = torch.randn(1, 3, 64)
        torch.testing.assert_close(cpu_linear.linear(x, weight), F.linear(x, weight), atol=2e-6, rtol=1e-5)
        cpu_linear.linear(torch.randn(1, low_bit.MAX_ROWS + 1, 64), weight)        # a prompt: float32
    finally:
        low_bit.Codes.linear = real
    assert calls == [(1, 3, 64)]


def tiny_gguf_llama(seed: int = 3):
    """A tiny llama whose products are Q4_1 and whose tied embedding / head is Q8_0, as the embedded GGUF."""
    model = build_tiny_llama(seed=seed, layers=2).to(torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.copy_(gguf_round_trip(p, Q8_0 if "embed" in name else Q4_1))
    models.lay_out(model)
    return model


def greedy(model, prompt: list[int], steps: int) -> list[int]:
    cache, tokens = GrowingCache(model.config), []
    with torch.inference_mode():
        logits = lean_forward.forward(model, torch.tensor([prompt]), cache).logits[0, -1]
        for _ in range(steps):
            tokens.append(int(logits.argmax()))
            logits = lean_forward.forward(model, torch.tensor([[tokens[-1]]]), cache).logits[0, -1]
    return tokens


def test_a_gguf_model_decodes_as_generate_eagerly_and_compiled():
    model = tiny_gguf_llama()
    products = low_bit._products(model)
    assert all(low_bit.codes_of(w) is not None for w in products)
    prompt = [5, 17, 33, 2, 60, 41]
    with torch.inference_mode():
        expected = model.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False)[0, len(prompt):].tolist()
    assert greedy(model, prompt, 40) == expected
    step = compiled_step.prepare(model)
    assert step is not None and step.ready
    assert step.head_codes is low_bit.codes_of(model.lm_head.weight)
    assert greedy(model, prompt, 40) == expected


def test_the_embedded_model_is_read_as_its_codes(embedded):
    """Every product of the embedded model is codes, and a pass is counted at their bytes: Q4_1 records
    hold 24 bytes per 32 weights, Q8_0 36, the norms stay float32 (sizes from the config, not the code)."""
    model, config = embedded.model, embedded.model.config
    assert all(low_bit.codes_of(w) is not None for w in low_bit._products(model))
    hidden, inter, head_dim = config.hidden_size, config.intermediate_size, config.head_dim
    per_layer = hidden * head_dim * (2 * config.num_attention_heads + 2 * config.num_key_value_heads) + 3 * hidden * inter
    norms = (2 * config.num_hidden_layers + 1) * hidden * 4
    expected = config.num_hidden_layers * per_layer * 24 // 32 + config.vocab_size * hidden * 36 // 32 + norms
    assert weight_bytes(model) == expected
    assert weight_bytes(model) < 0.21 * sum(p.numel() * 4 for p in model.parameters())


def test_the_roofline_report_shows_the_bytes_read_and_the_float32_floor(monkeypatch):
    from playground.benchmarks import roofline

    model = tiny_gguf_llama()
    float32 = sum({p.data_ptr(): p.numel() * 4 for p in model.parameters()}.values())
    monkeypatch.setattr(roofline, "measure_bandwidth_gb_s", lambda: 1.0)
    monkeypatch.setattr(roofline, "step_seconds", lambda model, context, lean: 0.004)
    monkeypatch.setattr(roofline, "products_seconds", lambda model: 0.002)
    result = roofline.report(model)
    assert result["weight_mb"] * 1e6 == pytest.approx(weight_bytes(model)) and weight_bytes(model) < float32 / 2
    assert result["float32_mb"] * 1e6 == pytest.approx(float32)
    step = result["steps"][0]
    assert step["of_roofline"] == pytest.approx(weight_bytes(model) / 1e9 / 0.004)
    assert step["of_float32_roofline"] == pytest.approx(float32 / 1e9 / 0.004)


def test_without_a_compiler_nothing_is_loaded_and_the_reason_is_logged(tmp_path, monkeypatch, caplog):
    from playground import native

    source = tmp_path / "never_built.cpp"
    source.write_text("// an operator library that cannot be built here\n")
    monkeypatch.setenv("CXX", "false")               # a compiler that always fails
    assert native.load(source, {}) is False
    assert native.load(source, {}) is False          # decided once per process
    assert "never_built.cpp unavailable" in caplog.text
