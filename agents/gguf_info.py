"""Read a GGUF file's metadata and parameter counts (standard library only).

Reports need total and active parameters for every model, including real GGUF
files that edgefarm did not write. Synthetic files carry
``edgefarm.params.total``/``.active``; for any other file they are counted
from the tensor table: ``total`` is the sum of all tensor sizes, ``active``
counts expert tensors (names containing ``_exps``) at
``expert_used_count / expert_count``. Llama-3's ``rope_freqs`` scaling
factors are not parameters and are not counted (as in edgefarm's presets).

A file that is not GGUF, uses an unsupported GGUF version, or is cut short
(in its header or in the tensor data the header declares) raises
``ValueError``.
"""

import os
import struct
from typing import IO, Dict, List, Optional, Tuple

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_KEEP_ARRAYS_UP_TO = 64  # longer arrays (vocabularies) are skipped, not kept
_VERSIONS = (2, 3)  # v1 used 32-bit counts and is not read
_DEFAULT_ALIGNMENT = 32

#: ggml tensor types found in model files: type id -> (elements per block,
#: bytes per block). Used to check that the file holds all the tensor data
#: its header declares; tensors of other types are not size-checked.
_TYPE_SIZES: Dict[int, Tuple[int, int]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24),
    8: (32, 34), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176),
    14: (256, 210), 16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50),
    20: (32, 18), 21: (256, 110), 22: (256, 82), 23: (256, 136), 24: (1, 1),
    25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2),
    34: (256, 54), 35: (256, 66), 39: (32, 17),
}


class _Reader(object):
    """Little-endian GGUF values from a file, never reading past its end."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.size = os.fstat(handle.fileno()).st_size

    def read(self, fmt: str) -> object:
        size = struct.calcsize(fmt)
        data = self.handle.read(size)
        if len(data) != size:
            raise ValueError("truncated GGUF file")
        return struct.unpack(fmt, data)[0]

    def uint(self, fmt: str) -> int:
        return int(self.read(fmt))  # type: ignore[call-overload]

    def skip(self, nbytes: int) -> None:
        if nbytes > self.size - self.handle.tell():
            raise ValueError("truncated GGUF file (array of %d bytes)" % nbytes)
        self.handle.seek(nbytes, 1)

    def string(self) -> str:
        length = self.uint("<Q")
        # Checked before reading: a corrupt length must not allocate gigabytes.
        if length > self.size - self.handle.tell():
            raise ValueError("truncated GGUF file (string of %d bytes)" % length)
        data = self.handle.read(length)
        if len(data) != length:
            raise ValueError("truncated GGUF file (string of %d bytes)" % length)
        return data.decode("utf-8", "replace")

    def value(self, vtype: int) -> object:
        if vtype in _SCALARS:
            return self.read(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype = self.uint("<I")
            count = self.uint("<Q")
            if etype in _SCALARS and count > _KEEP_ARRAYS_UP_TO:
                self.skip(struct.calcsize(_SCALARS[etype]) * count)
                return {"array_len": count}
            if count > self.size - self.handle.tell():  # every element takes a byte or more
                raise ValueError("truncated GGUF file (array of %d items)" % count)
            items = [self.value(etype) for _ in range(count)]
            return items if count <= _KEEP_ARRAYS_UP_TO else {"array_len": count}
        raise ValueError("unknown GGUF value type %d" % vtype)


def _tensor_nbytes(ggml_type: int, shape: List[int]) -> Optional[int]:
    sizes = _TYPE_SIZES.get(ggml_type)
    if sizes is None:
        return None
    count = 1
    for dim in shape:
        count *= dim
    block, size = sizes
    return (count + block - 1) // block * size


def read_gguf_info(path: str) -> Dict[str, object]:
    """Return ``{"metadata": {...}, "params_total": int, "params_active": int, ...}``."""
    with open(path, "rb") as handle:
        reader = _Reader(handle)
        if handle.read(4) != b"GGUF":
            raise ValueError("%s is not a GGUF file" % path)
        version = reader.uint("<I")
        if version not in _VERSIONS:
            raise ValueError("%s: unsupported GGUF version %d" % (path, version))
        n_tensors = reader.uint("<Q")
        n_kv = reader.uint("<Q")
        meta: Dict[str, object] = {}
        for _ in range(n_kv):
            key = reader.string()
            vtype = reader.uint("<I")
            meta[key] = reader.value(vtype)
        total = 0
        experts = 0
        tensors: List[List[object]] = []  # [name, shape, nbytes]: agents/decode_traffic.py
        data_end = 0  # relative to the start of the tensor data
        for _ in range(n_tensors):
            name = reader.string()
            n_dims = reader.uint("<I")
            shape = [reader.uint("<Q") for _d in range(n_dims)]
            ggml_type = reader.uint("<I")
            offset = reader.uint("<Q")
            count = 1
            for dim in shape:
                count *= dim
            if not name.startswith("rope_freqs"):
                total += count
            if "_exps" in name:
                experts += count
            nbytes = _tensor_nbytes(ggml_type, shape)
            tensors.append([name, shape, nbytes])
            if nbytes is not None:
                data_end = max(data_end, offset + nbytes)
        alignment = meta.get("general.alignment", _DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0:
            alignment = _DEFAULT_ALIGNMENT
        header_end = handle.tell()
        file_size = reader.size
    data_start = (header_end + alignment - 1) // alignment * alignment
    if n_tensors and data_start + data_end > file_size:
        raise ValueError("truncated GGUF file: %s holds %d bytes, its tensors need %d"
                         % (path, file_size, data_start + data_end))
    counted_total, active = _active(meta, total, experts)
    return {"gguf_version": version, "n_tensors": n_tensors, "metadata": meta,
            "params_total": int(meta.get("edgefarm.params.total", counted_total)),  # type: ignore[call-overload]
            "params_active": int(meta.get("edgefarm.params.active", active)),  # type: ignore[call-overload]
            "architecture": meta.get("general.architecture"), "tensors": tensors}


def _active(meta: Dict[str, object], total: int, experts: int) -> Tuple[int, int]:
    arch = meta.get("general.architecture")
    n_expert = meta.get("%s.expert_count" % arch)
    n_used = meta.get("%s.expert_used_count" % arch)
    if experts and isinstance(n_expert, int) and isinstance(n_used, int) and n_expert > 0:
        return total, total - experts + experts * n_used // n_expert
    return total, total
