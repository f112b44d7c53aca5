"""Weights in 2 MiB pages (playground/huge_pages.py): where they live, and that nothing else changes."""

from pathlib import Path

import pytest
import torch

from playground import huge_pages, lean_forward


def advised(tensor: torch.Tensor) -> bool:
    """Whether the mapping holding `tensor` asked for huge pages ("hg" among its VmFlags in
    /proc/self/smaps; False where there is no such file)."""
    address = tensor.data_ptr()
    try:
        lines = open("/proc/self/smaps").read().splitlines()
    except OSError:
        return False
    inside = False
    for line in lines:
        head = line.split(" ", 1)[0]
        if "-" in head and ":" not in head:            # a mapping's first line: "start-end perms ..."
            start, end = (int(part, 16) for part in head.split("-"))
            inside = start <= address < end
        elif inside and line.startswith("VmFlags:"):
            return "hg" in line.split()
    return False


needs_thp = pytest.mark.skipif(not Path("/sys/kernel/mm/transparent_hugepage/enabled").exists(),
                               reason="this kernel has no transparent huge pages")


@needs_thp
def test_large_tensors_start_on_a_page_and_ask_for_huge_pages():
    big = huge_pages.empty((1024, 1024), torch.float32)            # 4 MiB
    assert big.shape == (1024, 1024) and big.dtype == torch.float32 and big.is_contiguous()
    assert big.data_ptr() % huge_pages.PAGE == 0
    assert advised(big)
    big.fill_(3.0)
    assert float(big.sum()) == 3.0 * 2**20                         # real, writable memory
    small = huge_pages.empty((16, 16), torch.float32)              # below a page: plain torch.empty
    assert not advised(small)
    assert not advised(torch.empty(1024, 1024))          # torch alone does not ask


@needs_thp
def test_place_moves_large_weights_into_one_mapping_and_keeps_ties_and_values():
    big, small = torch.nn.Linear(1024, 1024, bias=False), torch.nn.Linear(8, 8)
    head = torch.nn.Linear(1024, 1024, bias=False)
    head.weight = big.weight                                        # tied, as an LM head and its embedding
    other = torch.nn.Linear(256, 100, bias=False)                   # 100 KiB: not a whole number of pages
    model = torch.nn.ModuleList([big, small, head, other])
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    small_at = small.weight.data_ptr()

    assert huge_pages.place(model.parameters()) == (1024 * 1024 + 256 * 100) * 4   # the tied weight once
    assert advised(big.weight) and advised(other.weight) and head.weight is big.weight
    assert other.weight.data_ptr() - big.weight.data_ptr() == 2**22    # back to back: one mapping
    assert small.weight.data_ptr() == small_at                      # too small to move
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) and isinstance(p, torch.nn.Parameter) and p.requires_grad
    x = torch.randn(3, 1024)
    assert torch.allclose(head(x), x @ before["0.weight"].T)


@needs_thp
def test_a_stacked_weight_and_its_layers_views_move_together():
    q, k = torch.nn.Linear(512, 1024, bias=False), torch.nn.Linear(512, 512, bias=False)
    expected = torch.cat([q.weight, k.weight]).detach()
    weight, _ = lean_forward.stacked(q, k)
    huge_pages.place([q.weight, k.weight, weight])
    assert advised(weight) and torch.equal(weight, expected)
    assert q.weight.data_ptr() == weight.data_ptr() and k.weight.data_ptr() == weight[1024:].data_ptr()
    assert lean_forward.stacked(q, k)[0] is weight                  # the memo still holds: the same object moved


@needs_thp
def test_the_loaded_embedded_model_reads_its_weights_from_huge_pages(embedded):
    model = embedded.model
    plan = lean_forward.layer_plans(model.model)[0]
    assert advised(model.lm_head.weight)
    assert all(advised(w) for w, _ in (plan.qkv, plan.o, plan.gate_up, plan.down))
