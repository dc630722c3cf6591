"""Datasheet figures of the GPUs the benchmarks run on, looked up by the name CUDA reports.

The roofline in ``engine_speed.py`` divides the bytes a decode step reads by a bandwidth: the one measured
in the same run (a device-to-device copy) and, beside it, the vendor's datasheet figure for that GPU. The
datasheet figure is a peak no kernel reaches (a copy gets ~85-90% of it), so it is shown, not used for goals.

Sources: NVIDIA's product pages and datasheets (SXM forms unless named). Dense bf16 tensor-core peak, no
sparsity. Order matters: the first key contained in the device name wins, so longer names come first.
"""

from __future__ import annotations

from typing import NamedTuple


class Datasheet(NamedTuple):
    """Peak HBM bandwidth (TB/s, 10^12 bytes/s) and dense bf16 tensor throughput (TFLOP/s)."""

    name: str
    hbm_tb_s: float
    bf16_tflops: float


DATASHEETS = (
    Datasheet("H100 PCIe", 2.0, 756.0),
    Datasheet("H100 NVL", 3.9, 835.0),
    Datasheet("H100", 3.35, 989.0),  # SXM5 80 GB HBM3
    Datasheet("GH200", 4.0, 989.0),  # the 96 GB HBM3 part; before "H200", which its name contains
    Datasheet("H200", 4.8, 989.0),  # SXM 141 GB HBM3e; before "H20", which its name contains
    Datasheet("H20", 4.0, 148.0),
    Datasheet("B200", 8.0, 2250.0),
    Datasheet("A100-SXM4-80GB", 2.039, 312.0),
    Datasheet("A100 80GB PCIe", 1.935, 312.0),
    Datasheet("A100", 1.555, 312.0),  # 40 GB
    Datasheet("L40S", 0.864, 362.0),
    Datasheet("L4", 0.3, 121.0),
)


def lookup(device_name: str) -> Datasheet | None:
    """The datasheet of a CUDA device name (``torch.cuda.get_device_name()``), or None for an unknown GPU."""
    for sheet in DATASHEETS:
        if sheet.name.lower() in device_name.lower():
            return sheet
    return None
