"""The decode roofline and the vendor bandwidth table, against hand-computed answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.roofline import CHIPS, chip_for, decode_roofline

#: Bytes per decoded token at Q4_0, from tests/test_decode_traffic.py's tables.
OLMOE_BYTES = 670_852_224
LLAMA_BYTES = 695_377_920


def test_h200_bounds_and_the_fractions_issue_11_measured() -> None:
    """H200: 4.8 TB/s. OLMoE decoded at 854 tok/s, Llama-3.2-1B at 1023 (CUDA llama.cpp)."""
    h200 = chip_for("NVIDIA H200")
    assert h200 is not None and h200.bandwidth_gbps == 4800
    olmoe = decode_roofline(OLMOE_BYTES, 4.8e12, h200.source, measured_tps=854)
    llama = decode_roofline(LLAMA_BYTES, 4.8e12, h200.source, measured_tps=1023)
    # 4.8e12 / 670,852,224 = 7155.08 tok/s; 854 of it = 11.94%.
    assert olmoe.bound_tps == pytest.approx(7155.08, abs=0.01)
    assert olmoe.fraction == pytest.approx(0.11936, abs=1e-5)
    # 4.8e12 / 695,377,920 = 6902.72 tok/s; 1023 of it = 14.82%.
    assert llama.bound_tps == pytest.approx(6902.72, abs=0.01)
    assert llama.fraction == pytest.approx(0.14820, abs=1e-5)


def test_orin_nano_bound_for_the_study_models() -> None:
    # 68 GB/s / 670,852,224 B = 101.36 tok/s; the Super mode's 102 GB/s: 152.05.
    nano = chip_for("NVIDIA Jetson Orin Nano Developer Kit")
    assert nano is not None and nano.name == "Jetson Orin Nano 8GB"
    assert decode_roofline(OLMOE_BYTES, nano.bandwidth_gbps * 1e9, nano.source).bound_tps == \
        pytest.approx(101.364, abs=1e-3)
    assert decode_roofline(OLMOE_BYTES, 102e9, "").bound_tps == pytest.approx(152.046, abs=1e-3)


@pytest.mark.parametrize("names, expected", [
    (("Apple M2 Pro",), "Apple M2 Pro"),
    (("Apple M2",), "Apple M2"),
    (("Apple M4 Max",), "Apple M4 Max"),
    (("NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super",),
     "Jetson Orin Nano Super"),
    (("NVIDIA Jetson Orin Nano Developer Kit", "MAXN_SUPER"), "Jetson Orin Nano Super"),
    (("NVIDIA Jetson Orin Nano Developer Kit", "15W"), "Jetson Orin Nano 8GB"),
    (("NVIDIA Jetson AGX Orin Developer Kit",), "Jetson AGX Orin"),
    (("NVIDIA H100 80GB HBM3",), "NVIDIA H100 SXM"),
    (("NVIDIA H100 PCIe",), "NVIDIA H100 PCIe"),
    (("NVIDIA A100-SXM4-80GB",), "NVIDIA A100 80GB"),
    (("NVIDIA L40S",), "NVIDIA L40S"),
    (("NVIDIA L4",), "NVIDIA L4"),
    ((None, "Intel(R) Xeon(R) Platinum 8481C"), None),
])
def test_chips_match_the_names_devices_report(names: tuple[str | None, ...],
                                              expected: str | None) -> None:
    chip = chip_for(*names)
    assert (chip.name if chip else None) == expected


def test_every_chip_names_its_source_and_a_positive_bandwidth() -> None:
    assert len({c.name for c in CHIPS}) == len(CHIPS)
    for chip in CHIPS:
        assert chip.source and chip.bandwidth_gbps > 0, chip


def test_nonsense_is_refused() -> None:
    with pytest.raises(ValueError):
        decode_roofline(0, 1e9, "")


def test_gpu_facts_from_recorded_nvidia_smi_output() -> None:
    """Recorded on the lent H200 machine (bench/routing_h200.sh probe): nvidia-smi is not here.

    143,771 MiB is what ``nvidia-smi --query-gpu=name,memory.total`` printed there.
    """
    from agents.probe import parse_nvidia_smi_gpus
    from orchestrator.roofline import device_gpu_chip

    text = (Path(__file__).parent / "data" / "nvidia-smi"
            / "h200-query-gpu-name-memory.csv").read_text()
    gpus = parse_nvidia_smi_gpus(text)
    assert gpus == [{"name": "NVIDIA H200", "memory_total_bytes": 143771 * 2**20}]
    chip, name = device_gpu_chip({"gpus": gpus})
    assert name == "NVIDIA H200" and chip is not None and chip.bandwidth_gbps == 4800
    assert parse_nvidia_smi_gpus("garbage\n, 12\nNVIDIA L4, n/a\n") == []
