"""A streaming GGUF v3 writer and fast deterministic random tensor data.

Standard library only; Python 3.8+ (this runs on the devices, inside the
agent's zipapp). The ``gguf`` package is the reference reader in the tests.

File layout (GGUF v3, little-endian)::

    "GGUF" | version u32 | tensor_count u64 | kv_count u64
    kv_count x (key: string, type: u32, value)
    tensor_count x (name: string, n_dims u32, ne[n_dims] u64, ggml_type u32, offset u64)
    padding to general.alignment
    tensor data, each tensor starting at an aligned offset

A string is ``u64 length + UTF-8 bytes``; an array is ``elem_type u32 +
count u64 + elements``.

:class:`GGUFWriter` lays out the header from the declared tensors (names,
shapes, types) and then streams each tensor's bytes from a chunk iterator,
so memory stays bounded by one chunk (a few MB) whatever the file size.

Random weights (:func:`random_chunks`) come from ``random.Random`` seeded
per tensor, so files are reproducible byte for byte from a seed, and are
made with C-speed bulk operations only (``getrandbits`` for the bytes,
``bytes.translate`` to confine fp16 exponents, extended-slice assignment to
lay block scales into quantized blocks); there is no Python loop per weight.
"""

import hashlib
import math
import random
import struct
import sys
from array import array
from typing import IO, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
DEFAULT_ALIGNMENT = 32

# GGUF metadata value types.
T_UINT8, T_INT8, T_UINT16, T_INT16, T_UINT32, T_INT32, T_FLOAT32, T_BOOL = range(8)
T_STRING, T_ARRAY, T_UINT64, T_INT64, T_FLOAT64 = 8, 9, 10, 11, 12

_SCALAR_FMT = {
    T_UINT8: "<B", T_INT8: "<b", T_UINT16: "<H", T_INT16: "<h",
    T_UINT32: "<I", T_INT32: "<i", T_FLOAT32: "<f", T_BOOL: "<?",
    T_UINT64: "<Q", T_INT64: "<q", T_FLOAT64: "<d",
}

# ggml tensor types this writer produces: name -> (id, block elements, block bytes).
GGML_TYPES: Dict[str, Tuple[int, int, int]] = {
    "F32": (0, 1, 4),
    "F16": (1, 1, 2),
    "Q4_0": (2, 32, 18),
    "Q8_0": (8, 32, 34),
}

#: llama.cpp's ``general.file_type`` (llama_ftype) for a whole-file quantization.
FILE_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q8_0": 7}

#: A tensor's data: a zero-argument callable returning its byte chunks.
Chunks = Callable[[], Iterable[bytes]]

#: Target size of one chunk of tensor data, in bytes.
CHUNK_BYTES = 4 << 20


def tensor_nbytes(shape: Sequence[int], ggml_type: str) -> int:
    """Bytes of a tensor of ``shape`` (ne0 first) stored as ``ggml_type``."""
    _, blk, bsz = GGML_TYPES[ggml_type]
    if shape[0] % blk:
        raise ValueError("ne0=%d is not a multiple of the %s block (%d)"
                         % (shape[0], ggml_type, blk))
    n = 1
    for d in shape:
        n *= d
    return n // blk * bsz


def _pad(n: int, align: int) -> int:
    return (align - n % align) % align


def _str(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _encode_value(vtype: int, value: object) -> bytes:
    if vtype == T_STRING:
        return _str(value)  # type: ignore[arg-type]
    if vtype in _SCALAR_FMT:
        return struct.pack(_SCALAR_FMT[vtype], value)
    raise ValueError("unsupported scalar GGUF type %r" % vtype)


def _encode_array(elem_type: int, values: Sequence[object]) -> bytes:
    head = struct.pack("<IQ", elem_type, len(values))
    if elem_type == T_STRING:
        parts = [head]
        pack = struct.Struct("<Q").pack
        for v in values:
            b = str(v).encode("utf-8")
            parts.append(pack(len(b)))
            parts.append(b)
        return b"".join(parts)
    if elem_type in _SCALAR_FMT:
        fmt = "<%d%s" % (len(values), _SCALAR_FMT[elem_type][1])
        return head + struct.pack(fmt, *values)
    raise ValueError("unsupported GGUF array element type %r" % elem_type)


class _Tensor(object):
    __slots__ = ("name", "shape", "ggml_type", "chunks", "nbytes", "offset")

    def __init__(self, name: str, shape: Tuple[int, ...], ggml_type: str,
                 chunks: Chunks, nbytes: int, offset: int) -> None:
        self.name = name
        self.shape = shape
        self.ggml_type = ggml_type
        self.chunks = chunks
        self.nbytes = nbytes
        self.offset = offset


class GGUFWriter(object):
    """Declare metadata and tensors, then :meth:`write` the whole file once.

    ``add_tensor(name, shape, ggml_type, chunks)`` takes a zero-argument
    callable returning an iterable of ``bytes`` chunks; it is called only
    while the data section is written, one tensor at a time, and must yield
    exactly :func:`tensor_nbytes` bytes in total.
    """

    def __init__(self, alignment: int = DEFAULT_ALIGNMENT) -> None:
        self.alignment = alignment
        self._kv: List[bytes] = []
        self._keys: set = set()
        self._tensors: List[_Tensor] = []
        self._data_size = 0
        self.add_uint32("general.alignment", alignment)

    # -- metadata -------------------------------------------------------
    def add(self, key: str, vtype: int, value: object) -> None:
        """Add ``key`` with a scalar ``value`` of GGUF type ``vtype``."""
        self._add_raw(key, struct.pack("<I", vtype) + _encode_value(vtype, value))

    def add_array(self, key: str, elem_type: int, values: Sequence[object]) -> None:
        """Add ``key`` with an array of ``elem_type`` elements."""
        self._add_raw(key, struct.pack("<I", T_ARRAY) + _encode_array(elem_type, values))

    def _add_raw(self, key: str, payload: bytes) -> None:
        if key in self._keys:
            raise ValueError("duplicate GGUF key %r" % key)
        self._keys.add(key)
        self._kv.append(_str(key) + payload)

    def add_string(self, key: str, value: str) -> None:
        self.add(key, T_STRING, value)

    def add_uint32(self, key: str, value: int) -> None:
        self.add(key, T_UINT32, value)

    def add_int32(self, key: str, value: int) -> None:
        self.add(key, T_INT32, value)

    def add_uint64(self, key: str, value: int) -> None:
        self.add(key, T_UINT64, value)

    def add_float32(self, key: str, value: float) -> None:
        self.add(key, T_FLOAT32, value)

    def add_bool(self, key: str, value: bool) -> None:
        self.add(key, T_BOOL, bool(value))

    # -- tensors --------------------------------------------------------
    def add_tensor(self, name: str, shape: Sequence[int], ggml_type: str,
                   chunks: Chunks) -> None:
        if ggml_type not in GGML_TYPES:
            raise ValueError("unsupported ggml type %r" % ggml_type)
        nbytes = tensor_nbytes(shape, ggml_type)
        self._data_size += _pad(self._data_size, self.alignment)
        self._tensors.append(_Tensor(name, tuple(shape), ggml_type, chunks, nbytes,
                                     self._data_size))
        self._data_size += nbytes

    # -- output ---------------------------------------------------------
    def header_bytes(self) -> bytes:
        """Everything before the data section, padding included."""
        parts = [GGUF_MAGIC, struct.pack("<IQQ", GGUF_VERSION, len(self._tensors), len(self._kv))]
        parts.extend(self._kv)
        for t in self._tensors:
            parts.append(_str(t.name))
            parts.append(struct.pack("<I%dQ" % len(t.shape), len(t.shape), *t.shape))
            parts.append(struct.pack("<IQ", GGML_TYPES[t.ggml_type][0], t.offset))
        head = b"".join(parts)
        return head + b"\0" * _pad(len(head), self.alignment)

    def total_size(self) -> int:
        """Size of the file :meth:`write` produces."""
        return len(self.header_bytes()) + self._data_size

    def write(self, f: IO[bytes], progress: Optional[Callable[[int, int], None]] = None) -> int:
        """Write the file to the binary stream ``f``; returns bytes written.

        ``progress(done_bytes, total_bytes)`` is called after the header and
        after every chunk.
        """
        head = self.header_bytes()
        total = len(head) + self._data_size
        f.write(head)
        done = len(head)
        if progress is not None:
            progress(done, total)
        pos = 0
        for t in self._tensors:
            gap = t.offset - pos
            if gap:
                f.write(b"\0" * gap)
                done += gap
            n = 0
            for chunk in t.chunks():
                f.write(chunk)
                n += len(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
            if n != t.nbytes:
                raise ValueError("tensor %s: got %d bytes of data, expected %d"
                                 % (t.name, n, t.nbytes))
            pos = t.offset + n
        if done != total:
            raise AssertionError("wrote %d bytes, expected %d" % (done, total))
        return done


# ---------------------------------------------------------------------------
# Random tensor data
# ---------------------------------------------------------------------------

def tensor_rng(seed: int, name: str) -> random.Random:
    """The generator for tensor ``name`` of a file made with ``seed``.

    Seeded from SHA-256 of ``"<seed>/<name>"`` so each tensor has its own
    stream, stable across Python versions and processes.
    """
    digest = hashlib.sha256(("%d/%s" % (seed, name)).encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest, "little"))


def _randbytes(rng: random.Random, n: int) -> bytes:
    # random.randbytes is 3.9+; getrandbits(0) raises on 3.8.
    if n <= 0:
        return b""
    return rng.getrandbits(n * 8).to_bytes(n, "little")


def _f16_bits(x: float) -> Tuple[int, int]:
    lo, hi = struct.pack("<e", x)
    return lo, hi


# For each high byte of an fp16 value: the mean of x^2 over its 256 low bytes.
_F16_SUMSQ: Optional[List[float]] = None


def _f16_sumsq() -> List[float]:
    global _F16_SUMSQ
    if _F16_SUMSQ is None:
        vals = struct.unpack("<65536e", struct.pack("<65536H", *range(65536)))
        out = []
        for hi in range(256):
            acc = 0.0
            for lo in range(256):
                v = vals[hi * 256 + lo]
                if v != v or v in (float("inf"), float("-inf")):
                    acc = float("inf")
                    break
                acc += v * v
            out.append(acc / 256.0)
        _F16_SUMSQ = out
    return _F16_SUMSQ


def _little() -> bool:
    return sys.byteorder == "little"


_F16_TABLES: Dict[float, Tuple[bytes, float]] = {}


def f16_table(sigma: float) -> Tuple[bytes, float]:
    """A ``bytes.translate`` table for the high byte of random fp16 values.

    With a uniformly random low byte (the low 8 mantissa bits) and the high
    byte mapped through the table, values are symmetric around zero with a
    roughly uniform magnitude below a power of two: the table keeps the sign
    bit and the two high mantissa bits of the random byte, and turns its 5
    remaining bits into an exponent (half of the 32 codes at the top
    exponent, a quarter one below, ...; ``k`` codes may be lifted one octave
    higher to fine-tune the spread). Returns ``(table, std)`` with the exact
    standard deviation of the resulting values, the closest to ``sigma``.
    """
    if sigma in _F16_TABLES:
        return _F16_TABLES[sigma]
    sumsq = _f16_sumsq()
    best: Optional[Tuple[float, bytes, float]] = None
    top0 = int(math.floor(math.log2(sigma))) + 15
    for top in range(max(top0 - 1, 7), min(top0 + 3, 30)):
        base = [top] * 16 + [top - 1] * 8 + [top - 2] * 4 + [top - 3] * 2 + [top - 4, top - 5]
        for k in range(16):
            exps = [e + 1 if i < k else e for i, e in enumerate(base)]
            if max(exps) > 30 or min(exps) < 1:
                continue
            table = bytearray(256)
            for b in range(256):
                e = exps[(b >> 2) & 0x1F]
                table[b] = (b & 0x80) | (e << 2) | (b & 0x03)
            var = sum(sumsq[t] for t in table) / 256.0
            std = math.sqrt(var)
            err = abs(math.log(std / sigma))
            if best is None or err < best[0]:
                best = (err, bytes(table), std)
    if best is None:
        raise ValueError("sigma %g out of fp16 range" % sigma)
    _F16_TABLES[sigma] = (best[1], best[2])
    return best[1], best[2]


# E[q^2] of the stored integers when the quantized bits are uniformly random.
_Q4_RMS = math.sqrt(sum((q - 8) ** 2 for q in range(16)) / 16.0)      # 4.637
_Q8_RMS = math.sqrt(sum(q * q for q in range(-128, 128)) / 256.0)     # 73.90


def _sign_table(hi: int) -> bytes:
    """Translate table: random byte -> fp16 high byte ``hi`` with a random sign."""
    return bytes(((b & 0x80) | (hi & 0x7F)) for b in range(256))


def quant_scale(ggml_type: str, sigma: float) -> float:
    """The |block scale| (as stored in fp16) giving weights of std ``sigma``."""
    rms = _Q4_RMS if ggml_type == "Q4_0" else _Q8_RMS
    return struct.unpack("<e", struct.pack("<e", sigma / rms))[0]


def expected_std(ggml_type: str, sigma: float) -> float:
    """The exact std of the values :func:`random_chunks` makes for ``sigma``."""
    if ggml_type in ("Q4_0", "Q8_0"):
        rms = _Q4_RMS if ggml_type == "Q4_0" else _Q8_RMS
        return quant_scale(ggml_type, sigma) * rms
    return f16_table(sigma)[1]


def random_chunks(rng: random.Random, n_elements: int, ggml_type: str, sigma: float,
                  chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Yield the bytes of ``n_elements`` random weights of std ~``sigma``.

    * F16: random bytes; every high byte goes through :func:`f16_table`.
    * F32: F16 values widened (``struct`` unpack, ``array('f')``).
    * Q8_0 / Q4_0: random bytes for the quants; each block's fp16 scale is
      ``+-quant_scale`` (random sign, so the -0.5 offset of uniform random
      quants averages out), laid in with extended-slice assignment.
    """
    if ggml_type == "F16" or ggml_type == "F32":
        table = f16_table(sigma)[0]
        per = max(1, chunk_bytes // (2 if ggml_type == "F16" else 4))
        left = n_elements
        while left > 0:
            n = min(per, left)
            buf = bytearray(_randbytes(rng, 2 * n))
            buf[1::2] = buf[1::2].translate(table)
            if ggml_type == "F16":
                yield bytes(buf)
            else:
                yield _f16_to_f32(bytes(buf), n)
            left -= n
        return
    if ggml_type not in ("Q4_0", "Q8_0"):
        raise ValueError("unsupported ggml type %r" % ggml_type)
    _, blk, bsz = GGML_TYPES[ggml_type]
    if n_elements % blk:
        raise ValueError("%d elements is not a whole number of %s blocks" % (n_elements, ggml_type))
    lo, hi = _f16_bits(quant_scale(ggml_type, sigma))
    sign = _sign_table(hi)
    per = max(1, chunk_bytes // bsz)
    left = n_elements // blk
    while left > 0:
        nb = min(per, left)
        buf = bytearray(_randbytes(rng, nb * bsz))
        buf[0::bsz] = bytes((lo,)) * nb
        buf[1::bsz] = buf[1::bsz].translate(sign)
        yield bytes(buf)
        left -= nb


def _f16_to_f32(data: bytes, n: int) -> bytes:
    a = array("f", struct.unpack("<%de" % n, data))
    if not _little():
        a.byteswap()
    return a.tobytes()


def f32_bytes(values: Iterable[float]) -> bytes:
    """Little-endian float32 bytes of ``values``."""
    a = array("f", values)
    if not _little():
        a.byteswap()
    return a.tobytes()


def const_f32_chunks(value: float, n_elements: int,
                     chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Yield ``n_elements`` float32 copies of ``value``."""
    one = f32_bytes([value])
    per = max(1, chunk_bytes // 4)
    left = n_elements
    while left > 0:
        n = min(per, left)
        yield one * n
        left -= n
