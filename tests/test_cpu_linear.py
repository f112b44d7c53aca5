"""playground/cpu_linear.py: each kernel equals F.linear on synthetic tensors.

The row split in float64 to 1e-12 for every row count up to the split limit, odd and even output
sizes, a bias, batched leading dimensions; the oneDNN path in float32 to float rounding; a
non-contiguous weight falls back.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from playground import cpu_linear


@pytest.mark.parametrize("threads, out, parts", [(2, 576, 2), (2, 49152, 2), (4, 6, 3), (16, 192, 16),
                                                 (16, 100, 10), (2, 7, 1), (1, 576, 1)])
def test_parts_divide_the_output_rows(threads, out, parts):
    assert cpu_linear.parts_for(out, threads) == parts


@pytest.mark.parametrize("rows", [1, 2, 3, 8, 9])
@pytest.mark.parametrize("out", [12, 7])
@pytest.mark.parametrize("threads", [2, 3])
def test_equals_plain_product(rows, out, threads):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(rows * 100 + out)
        weight = torch.randn(out, 5, dtype=torch.float64, generator=g)
        bias = torch.randn(out, dtype=torch.float64, generator=g)
        x = torch.randn(1, rows, 5, dtype=torch.float64, generator=g)
        got = cpu_linear.linear(x, weight, bias)
        assert got.shape == (1, rows, out)
        torch.testing.assert_close(got, F.linear(x, weight, bias), atol=1e-12, rtol=0)
        torch.testing.assert_close(cpu_linear.linear(x[0], weight), F.linear(x[0], weight), atol=1e-12, rtol=0)
    finally:
        torch.set_num_threads(previous)


def test_batched_rows_keep_their_order():
    """(batch, n, in) with batch * n <= SPLIT_ROWS: every row lands in its own place (a transposed
    block order would swap the halves of each output row)."""
    weight = torch.arange(24, dtype=torch.float64).view(6, 4)
    x = torch.arange(2 * 3 * 4, dtype=torch.float64).view(2, 3, 4)
    torch.testing.assert_close(cpu_linear.linear(x, weight), F.linear(x, weight), atol=0, rtol=0)


def test_non_contiguous_weight_falls_back():
    weight = torch.randn(8, 6, dtype=torch.float64).t()           # (6, 8) view, not contiguous
    x = torch.randn(1, 8, dtype=torch.float64)
    torch.testing.assert_close(cpu_linear.linear(x, weight), F.linear(x, weight), atol=1e-12, rtol=0)


@pytest.mark.parametrize("rows", [8, 11, 64])
def test_many_rows_in_float32_match(rows):
    g = torch.Generator().manual_seed(rows)
    weight, bias = torch.randn(48, 32, generator=g), torch.randn(48, generator=g)
    x = torch.randn(2, rows, 32, generator=g)
    torch.testing.assert_close(cpu_linear.linear(x, weight, bias), F.linear(x, weight, bias), atol=1e-5, rtol=1e-5)


def test_split_blocks_land_in_order_for_several_rows():
    """Rows and blocks of the split product keep their places (a transposed block order would swap
    the halves of each output row; a wrong permute would mix rows)."""
    weight = torch.arange(8 * 3, dtype=torch.float64).view(8, 3)
    x = torch.arange(5 * 3, dtype=torch.float64).view(5, 3)
    torch.testing.assert_close(cpu_linear.split_linear(x, weight, 4), F.linear(x, weight), atol=0, rtol=0)


@pytest.mark.parametrize("rows", [2, 3, 7])
def test_split_output_is_row_major_for_the_next_product(rows):
    """The split's output is (..., out) in row-major order, whatever the block layout inside: left
    column-major, the MLP's down projection (after silu(gate) * up, which keeps its input's layout)
    got a transposed input, and a 2-row decode pass took 40 ms instead of 27 on the test machine."""
    x = torch.randn(1, rows, 64)
    out = cpu_linear.split_linear(x, torch.randn(96, 64), 2)
    assert out.is_contiguous() and out.stride() == (rows * 96, 96, 1)
    assert (F.silu(out) * out).is_contiguous()
