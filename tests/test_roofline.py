"""The bench's decode-step report (playground/benchmarks/roofline.py): the floor is weight bytes over
the measured bandwidth, and each path's share of it is floor / its step time, on hand numbers."""

from __future__ import annotations

import pytest

from playground.benchmarks import roofline
from conftest import build_tiny_llama


def test_floor_and_share_on_hand_numbers(monkeypatch):
    model = build_tiny_llama(seed=1, layers=2)
    params = {p.data_ptr(): p.numel() * p.element_size() for p in model.parameters()}   # tied weights once
    readings = iter([1.5, 2.0])                          # before and after the timings: the faster counts
    monkeypatch.setattr(roofline, "measure_bandwidth_gb_s", lambda: next(readings))
    monkeypatch.setattr(roofline, "step_seconds", lambda model, context, lean: 0.004 if lean else 0.008)
    monkeypatch.setattr(roofline, "products_seconds", lambda model: 0.002)
    result = roofline.report(model)
    floor_s = sum(params.values()) / 2.0e9
    assert result["weight_mb"] == pytest.approx(sum(params.values()) / 1e6)
    assert result["floor_ms"] == pytest.approx(floor_s * 1e3)
    assert result["float32_floor_ms"] == pytest.approx(floor_s * 1e3)        # no codes in a float64 model
    shares = {(s["context"], s["path"]): s["of_roofline"] for s in result["steps"]}
    assert shares == {(32, "ours"): pytest.approx(floor_s / 0.004), (32, "transformers"): pytest.approx(floor_s / 0.008),
                      (640, "ours"): pytest.approx(floor_s / 0.004), (640, "transformers"): pytest.approx(floor_s / 0.008),
                      (0, "products only"): pytest.approx(floor_s / 0.002)}


def test_step_seconds_times_real_passes():
    model = build_tiny_llama(seed=1, layers=2)
    assert 0 < roofline.step_seconds(model, 8, lean=True, steps=3) < 5
    assert 0 < roofline.step_seconds(model, 8, lean=False, steps=3) < 5
    assert 0 < roofline.products_seconds(model, steps=3) < 5
