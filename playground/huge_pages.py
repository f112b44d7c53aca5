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
35 GB/s in a slow minute), and hardware.py measures the bandwidth in such pages too. The same numbers: the same kernel over the same bytes (a product's
sums may round differently by its weight's alignment, as between any two allocations).
Where the kernel gives no huge pages (THP off, not Linux), the memory is plain memory.
"""

from __future__ import annotations

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


def empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    """torch.empty(shape, dtype=, device=), in 2 MiB pages for a CPU tensor of MIN_BYTES or more."""
    numel = 1
    for size in shape:
        numel *= size
    nbytes = numel * dtype.itemsize
    if torch.device(device).type != "cpu" or nbytes < MIN_BYTES:
        return torch.empty(shape, dtype=dtype, device=device)
    return empty_bytes(nbytes).view(dtype).view(shape)


def place(tensors: Iterable[torch.Tensor]) -> int:
    """Copy the CPU storages of `tensors` that hold PLACED_BYTES or more, back to back (ALIGN apart), into one
    mapping in 2 MiB pages, and point every given tensor at its storage's copy in place (`.data`), so tensors
    that shared a storage (a tied embedding, the views of a stacked weight and the stacked weight itself)
    still share it and every holder of those tensor objects sees the move. A storage none of `tensors`
    still holds is freed as usual; give every tensor of a storage, or the rest keep the old copy.
    Returns the bytes moved."""
    by_storage: dict[int, list[torch.Tensor]] = {}
    for tensor in tensors:
        if tensor.device.type == "cpu" and tensor.untyped_storage().nbytes() >= PLACED_BYTES:
            group = by_storage.setdefault(tensor.untyped_storage().data_ptr(), [])
            if not any(t is tensor for t in group):
                group.append(tensor)
    sizes = [-(-group[0].untyped_storage().nbytes() // ALIGN) * ALIGN for group in by_storage.values()]
    if not sizes:
        return 0
    moved = sum(group[0].untyped_storage().nbytes() for group in by_storage.values())
    region = empty_bytes(sum(sizes))
    offset = 0
    with torch.no_grad():
        for group, size in zip(by_storage.values(), sizes):
            old = group[0].untyped_storage()
            new = region[offset:offset + old.nbytes()]
            new.copy_(torch.empty(0, dtype=torch.uint8).set_(old, 0, (old.nbytes(),), (1,)))
            for tensor in group:          # element offsets: ALIGN is a multiple of every dtype's size
                tensor.data = torch.empty(0, dtype=tensor.dtype).set_(
                    region.untyped_storage(), (offset + region.storage_offset()) // tensor.element_size()
                    + tensor.storage_offset(), tensor.shape, tensor.stride())
            offset += size
    return moved


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
