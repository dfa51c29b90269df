"""Read a GGUF file's metadata and parameter counts (standard library only).

Reports need total and active parameters for every model, including real GGUF
files that edgefarm did not write. Synthetic files carry
``edgefarm.params.total``/``.active``; for any other file they are counted
from the tensor table: ``total`` is the sum of all tensor sizes, ``active``
counts expert tensors (names containing ``_exps``) at
``expert_used_count / expert_count``.
"""

import struct
from typing import IO, Dict, Tuple

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_KEEP_ARRAYS_UP_TO = 64  # longer arrays (vocabularies) are skipped, not kept


def _read(handle, fmt):
    # type: (IO[bytes], str) -> object
    size = struct.calcsize(fmt)
    data = handle.read(size)
    if len(data) != size:
        raise ValueError("truncated GGUF file")
    return struct.unpack(fmt, data)[0]


def _string(handle):
    # type: (IO[bytes]) -> str
    length = int(_read(handle, "<Q"))  # type: ignore[arg-type]
    return handle.read(length).decode("utf-8", "replace")


def _value(handle, vtype):
    # type: (IO[bytes], int) -> object
    if vtype in _SCALARS:
        return _read(handle, _SCALARS[vtype])
    if vtype == _STRING:
        return _string(handle)
    if vtype == _ARRAY:
        etype = int(_read(handle, "<I"))  # type: ignore[arg-type]
        count = int(_read(handle, "<Q"))  # type: ignore[arg-type]
        if etype in _SCALARS and count > _KEEP_ARRAYS_UP_TO:
            handle.seek(struct.calcsize(_SCALARS[etype]) * count, 1)
            return {"array_len": count}
        items = [_value(handle, etype) for _ in range(count)]
        return items if count <= _KEEP_ARRAYS_UP_TO else {"array_len": count}
    raise ValueError("unknown GGUF value type %d" % vtype)


def read_gguf_info(path):
    # type: (str) -> Dict[str, object]
    """Return ``{"metadata": {...}, "params_total": int, "params_active": int, ...}``."""
    with open(path, "rb") as handle:
        if handle.read(4) != b"GGUF":
            raise ValueError("%s is not a GGUF file" % path)
        version = _read(handle, "<I")
        n_tensors = int(_read(handle, "<Q"))  # type: ignore[arg-type]
        n_kv = int(_read(handle, "<Q"))  # type: ignore[arg-type]
        meta = {}  # type: Dict[str, object]
        for _ in range(n_kv):
            key = _string(handle)
            vtype = int(_read(handle, "<I"))  # type: ignore[arg-type]
            meta[key] = _value(handle, vtype)
        total = 0
        experts = 0
        for _ in range(n_tensors):
            name = _string(handle)
            n_dims = int(_read(handle, "<I"))  # type: ignore[arg-type]
            count = 1
            for _d in range(n_dims):
                count *= int(_read(handle, "<Q"))  # type: ignore[arg-type]
            handle.read(4 + 8)  # type, offset
            total += count
            if "_exps" in name:
                experts += count
    counted_total, active = _active(meta, total, experts)
    return {"gguf_version": version, "n_tensors": n_tensors, "metadata": meta,
            "params_total": int(meta.get("edgefarm.params.total", counted_total)),  # type: ignore[call-overload]
            "params_active": int(meta.get("edgefarm.params.active", active)),  # type: ignore[call-overload]
            "architecture": meta.get("general.architecture")}


def _active(meta, total, experts):
    # type: (Dict[str, object], int, int) -> Tuple[int, int]
    arch = meta.get("general.architecture")
    n_expert = meta.get("%s.expert_count" % arch)
    n_used = meta.get("%s.expert_used_count" % arch)
    if experts and isinstance(n_expert, int) and isinstance(n_used, int) and n_expert > 0:
        return total, total - experts + experts * n_used // n_expert
    return total, total
