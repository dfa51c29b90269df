"""Configuration: the device inventory and benchmark sweeps, validated with file:line errors.

Import from here rather than from the submodules; the CLI, planner and
scheduler depend only on these names.
"""

from orchestrator.config.inventory import Device, DeviceSelector, Inventory
from orchestrator.config.sweep import (
    KNOWN_PRESETS,
    Matrix,
    MatrixPoint,
    ModelSource,
    ModelSpec,
    Pair,
    Sweep,
    check_against_inventory,
    load_sweep_with_inventory,
)
from orchestrator.config.yaml_loader import LoadedYaml, load_yaml, validate

__all__ = [
    "KNOWN_PRESETS",
    "Device",
    "DeviceSelector",
    "Inventory",
    "LoadedYaml",
    "Matrix",
    "MatrixPoint",
    "ModelSource",
    "ModelSpec",
    "Pair",
    "Sweep",
    "check_against_inventory",
    "load_sweep_with_inventory",
    "load_yaml",
    "validate",
]
