"""Weights in 2 MiB pages: a decode step streams every weight once, and on 4 KiB pages it crosses a page
(a TLB miss, and a restart of the hardware prefetcher, which stops at page edges) every 4 KiB.

Linux backs anonymous memory with 2 MiB pages where asked (madvise(MADV_HUGEPAGE); transparent huge
pages set to "madvise", as on our test machine, gives them to nobody else). torch allocates its tensors
without asking, and a model loaded from safetensors reads its weights from the file's 4 KiB pages, so
`place` copies a loaded model's weights (models.py: after lean_forward has stacked them) into one mapping
that asked, and `empty` makes such memory for other large buffers (the bandwidth measurement's).

Measured on the 2-core test machine, A/B in one process (two loads of the embedded model): the compiled
decode step after 32 tokens 12.4-17.7 ms in 2 MiB pages against 14.8-19.0 ms in 4 KiB pages, pair by
pair 5-16 % less; its 121 weight products alone 0.5-15 % less; a copy streams ~6 % faster (37 against
35 GB/s in a slow minute), and hardware.py measures the bandwidth in such pages too. The same numbers:
the same kernel over the same bytes (a product's sums may round differently by its weight's alignment,
as between any two allocations). Where the kernel gives no huge pages (THP off, not Linux), the memory
is plain memory.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Iterable

import torch

PAGE = 2 ** 21          # 2 MiB
MIN_BYTES = PAGE        # `empty` below this: plain torch.empty (a page of its own would be mostly unused)
PLACED_BYTES = 2 ** 16  # `place` packs storages from 64 KiB up (every weight matrix, not the norms) into one mapping
ALIGN = 4096            # apart in it, so every weight starts on a cache line and a 4 KiB page, as torch's would


def empty_bytes(nbytes: int) -> torch.Tensor:
    """An uninitialised uint8 tensor of nbytes starting on a 2 MiB boundary of anonymous memory that asked
    for huge pages (plain memory where the kernel cannot). The tensor keeps its mapping alive."""
    pages = -(-max(nbytes, 1) // PAGE)
    region = mmap.mmap(-1, (pages + 1) * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)   # room to align
    try:
        region.madvise(mmap.MADV_HUGEPAGE)
    except (AttributeError, OSError):        # no THP in this kernel, or not Linux: plain pages
        pass
    start = -torch.frombuffer(region, dtype=torch.uint8, count=1).data_ptr() % PAGE   # to the next page edge
    return torch.frombuffer(region, dtype=torch.uint8, offset=start, count=nbytes)


def empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """torch.empty(shape, dtype=) on the CPU, in 2 MiB pages from MIN_BYTES up."""
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < MIN_BYTES:
        return torch.empty(shape, dtype=dtype)
    return empty_bytes(nbytes).view(dtype).view(shape)


def place(tensors: Iterable[torch.Tensor]) -> int:
    """Copy the CPU storages of `tensors` that hold PLACED_BYTES or more, back to back (ALIGN apart), into one
    mapping in 2 MiB pages, and point every given tensor at its storage's copy in place (`.data`), so tensors
    that shared a storage (a tied embedding, the views of a stacked weight and the stacked weight itself)
    still share it and every holder of those tensor objects sees the move. A storage none of `tensors`
    still holds is freed as usual; give every tensor of a storage, or the rest keep the old copy.
    Returns the bytes moved."""
    groups: dict[int, tuple[torch.UntypedStorage, dict[int, torch.Tensor]]] = {}   # storage address -> (it, its tensors by id)
    for tensor in tensors:
        storage = tensor.untyped_storage()
        if tensor.device.type == "cpu" and storage.nbytes() >= PLACED_BYTES:
            groups.setdefault(storage.data_ptr(), (storage, {}))[1][id(tensor)] = tensor
    if not groups:
        return 0
    sizes = [-(-storage.nbytes() // ALIGN) * ALIGN for storage, _ in groups.values()]
    region = empty_bytes(sum(sizes)).untyped_storage()      # the mapping's storage starts at its first byte
    offset = 0
    with torch.no_grad():
        for (old, group), size in zip(groups.values(), sizes):
            region[offset:offset + old.nbytes()].copy_(old)
            for tensor in group.values():      # element offsets: ALIGN is a multiple of every dtype's size
                tensor.data = torch.empty(0, dtype=tensor.dtype).set_(
                    region, offset // tensor.element_size() + tensor.storage_offset(), tensor.shape, tensor.stride())
            offset += size
    return sum(storage.nbytes() for storage, _ in groups.values())
