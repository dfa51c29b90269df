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


def test_prefill_roofline_by_hand() -> None:
    """OLMoE-1B-7B Q4_0 (1,282,017,280 active params, 3,900,752,544 B file) on an H200.

    128 tokens: intensity 2 x 1,282,017,280 x 128 / 3,900,752,544 = 84.137 FLOP/B;
    memory roof 4.8e12 x 128 / 3,900,752,544 = 157,508.07 tok/s; compute roof
    989e12 / 2,564,034,560 = 385,720.23 tok/s; ridge 989e12 / 4.8e12 = 206.04 FLOP/B,
    so 128 tokens are memory-bound and 30,000 tok/s is 19.05% of the roof.
    """
    from orchestrator.roofline import prefill_roofline

    roof = prefill_roofline(1_282_017_280, 3_900_752_544, 128, 4.8e12, 989e12, 30_000)
    assert roof.intensity == pytest.approx(84.1367, abs=1e-3)
    assert roof.memory_bound_tps == pytest.approx(157_508.07, abs=0.01)
    assert roof.compute_bound_tps == pytest.approx(385_720.23, abs=0.01)
    assert roof.ridge == pytest.approx(206.0417, abs=1e-3)
    assert roof.bound_tps == roof.memory_bound_tps
    assert roof.fraction == pytest.approx(0.190466, abs=1e-6)
    # 512 tokens: intensity 336.5 FLOP/B, past the ridge: compute-bound.
    big = prefill_roofline(1_282_017_280, 3_900_752_544, 512, 4.8e12, 989e12)
    assert big.bound_tps == big.compute_bound_tps and big.fraction is None
    # No compute roof known (a CPU): the memory roof alone.
    cpu = prefill_roofline(1_282_017_280, 3_900_752_544, 64, 20e9, None, 36.8)
    assert cpu.compute_bound_tps is None and cpu.ridge is None
    assert cpu.bound_tps == pytest.approx(20e9 * 64 / 3_900_752_544)
    with pytest.raises(ValueError):
        prefill_roofline(0, 1, 1, 1, None)


def test_prefill_reads_the_experts_a_batch_touches() -> None:
    """OLMoE-1B-7B Q4_0: 670,852,224 B per token, of which 452,984,832 B are the top-8 experts.

    All experts: 452,984,832 x 64 / 8 = 3,623,878,656 B; the rest: 217,867,392 B.
    One token reads exactly its top-8 (670,852,224 B). Eight tokens touch
    1 - (7/8)^8 = 0.656391 of the experts: 217,867,392 + 0.656391 x 3,623,878,656 =
    2,596,549,032 B. 128 tokens touch all but 4e-8 of them. A dense model reads
    its weights whatever the batch.
    """
    from orchestrator.roofline import prefill_bytes

    w, e = 670_852_224, 452_984_832
    assert prefill_bytes(w, e, 64, 8, 1) == pytest.approx(w)
    assert prefill_bytes(w, e, 64, 8, 8) == pytest.approx(2_596_549_032, abs=1)
    assert prefill_bytes(w, e, 64, 8, 128) == pytest.approx(217_867_392 + 3_623_878_656,
                                                            rel=1e-7)
    assert prefill_bytes(695_377_920, 0, 0, 0, 512) == 695_377_920


def test_the_prefill_roofline_counts_the_whole_prompt_for_torch_and_a_micro_batch_else(
) -> None:
    # llama.cpp prefills a 2048-token prompt in 512-token micro-batches (each
    # reads the weights); backend torch runs it in one forward.
    from orchestrator.report import ModelStats, _prefill_summary
    from orchestrator.roofline import chip_for, prefill_bytes, prefill_roofline

    def side(backend: str, ubatch: int | None) -> ModelStats:
        return ModelStats(model_id=backend, arch="dense", n=1, decode_tps_median=1.0,
                          decode=None, prefill_tps_median=10_000.0, ttft_s_median=None,
                          peak_rss_bytes=None, model_size_bytes=None,
                          params_total=1_235_814_400, params_active=1_235_814_400,
                          decode_tps=[1.0], job_state="done",
                          provenance={"backend": backend, "n_ubatch": ubatch},
                          weight_bytes_per_token=2_471_628_800.0)

    chip = chip_for("NVIDIA H200")
    config = {"prompt_tokens": 2048, "gen_tokens": 128, "gpu_layers": 99}
    out = _prefill_summary(chip, None, config, [side("torch", None), side("llama-bench", 512),
                                                side("xllamacpp", 256)])
    for name, tokens in (("torch", 2048), ("llama-bench", 512), ("xllamacpp", 256)):
        expected = prefill_roofline(1_235_814_400, prefill_bytes(2_471_628_800.0, 0.0, 0, 0,
                                                                 tokens),
                                    tokens, 4800e9, 989e12, 10_000.0)
        got = out["models"][name]
        assert got["tokens"] == tokens
        assert got["bound_tps"] == pytest.approx(expected.bound_tps)
    # By hand: 2048 tokens x 2 FLOP x 1.2358e9 params over 2.4716e9 bytes = 2048 FLOP/B,
    # past the ridge (989e12 / 4.8e12 = 206): compute-bound at 989e12 / 2.4716e9 per token.
    assert out["models"]["torch"]["intensity"] == pytest.approx(2048.0, rel=1e-6)
    assert out["models"]["torch"]["bound_tps"] == pytest.approx(989e12 / (2 * 1_235_814_400))
