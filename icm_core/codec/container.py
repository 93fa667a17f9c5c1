"""The container of one compressed image for one task.

Layout (all integers little-endian)::

    magic      3 bytes  b"ICM"
    version    u8       1: fixed rate; 2: variable rate (VARIABLE_RATE_VERSION)
    task       u8       TASK_CODES[task]
    model      8 bytes  fingerprint of the weights needed to decode (adapter, heads,
                        entropy model, decoder of that task)
    height     u16      input image height   } the latent shape (H/16, W/16 after padding
    width      u16      input image width    } to 64) and the hyper-latent shape follow
    rate       u16      version 2 only: the rate r in [0, 1] as r * RATE_STEPS (0 .. 55440)
    lengths    3 LEB128 varints: bytes of the z, step-1 and step-2 rANS streams
    payload    the three streams
    crc32      u32      of everything above

Everything but the payload is at most 34 bytes.

Why a second version rather than a field in every stream: fixed-rate models (the paper's
per-lambda protocol) keep writing version 1, byte for byte what they wrote before variable
rate existed, so their streams, goldens and sizes do not change; this reader reads both, and
a reader that knows only version 1 refuses a variable-rate stream with its "format version 2
is not supported" instead of decoding it at the wrong rate. ``unpack`` checks size, magic, version,
CRC, task, dimensions, the pixel budget and section lengths before anything is allocated or
decoded; any mismatch raises ``BitstreamError`` saying what is wrong. The CRC only catches
accidents (anyone can recompute it): the model's decoder checks that each section is exactly
what its encoder writes (``icm_core.models.entropy.rans_decode``).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from icm_core.data.images import MAX_SIDE
from icm_core.errors import BitstreamError
from icm_core.models.rate import RATE_STEPS

MAGIC = b"ICM"
FORMAT_VERSION = 1  # fixed rate
VARIABLE_RATE_VERSION = 2  # + the rate
VERSIONS = (FORMAT_VERSION, VARIABLE_RATE_VERSION)
# decoding work and memory grow with the claimed size: streams above this many pixels are
# refused unless the caller raises the budget (``unpack(..., max_pixels=)``, ``ICMModel.decode``)
MAX_PIXELS = 4096 * 4096
# stable codes: never renumber, only append
TASK_CODES = {"semseg": 1, "depth": 2, "normals": 3, "boundary": 4, "human_parts": 5, "saliency": 6}
_CODE_TASKS = {v: k for k, v in TASK_CODES.items()}
_FIXED = struct.Struct("<3sBB8sHH")
_RATE = struct.Struct("<H")


@dataclass(frozen=True)
class Packet:
    task: str
    fingerprint: bytes
    height: int
    width: int
    sections: tuple[bytes, bytes, bytes]
    rate_code: int | None = None  # variable rate: r * RATE_STEPS (icm_core.models.rate); None: fixed

    @property
    def rate(self) -> float | None:
        return None if self.rate_code is None else self.rate_code / RATE_STEPS

    @property
    def header_bytes(self) -> int:
        return len(pack(self)) - sum(len(s) for s in self.sections)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(data: bytes, pos: int, limit: int) -> tuple[int, int]:
    value = shift = 0
    for _ in range(5):  # < 2^35 bytes: more is not a section length
        if pos >= limit:
            raise BitstreamError("stream truncated inside the section lengths")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos
    raise BitstreamError("a section length is longer than 5 bytes: the stream is corrupted")


def pack(p: Packet) -> bytes:
    if p.task not in TASK_CODES:
        raise BitstreamError(f"task {p.task!r} has no bitstream code; known: {sorted(TASK_CODES)}")
    if not (1 <= p.height <= MAX_SIDE and 1 <= p.width <= MAX_SIDE):
        raise BitstreamError(f"image size {p.height}x{p.width} outside 1..{MAX_SIDE}")
    if len(p.fingerprint) != 8 or len(p.sections) != 3:
        raise BitstreamError("a packet needs an 8-byte fingerprint and 3 sections")
    code = p.rate_code
    if code is not None and (isinstance(code, bool) or not isinstance(code, int)
                             or not 0 <= code <= RATE_STEPS):
        raise BitstreamError(f"rate code {code!r} outside 0..{RATE_STEPS}")
    version = FORMAT_VERSION if code is None else VARIABLE_RATE_VERSION
    body = _FIXED.pack(MAGIC, version, TASK_CODES[p.task], p.fingerprint, p.height, p.width)
    if code is not None:
        body += _RATE.pack(code)
    body += b"".join(_varint(len(s)) for s in p.sections) + b"".join(p.sections)
    return body + struct.pack("<I", zlib.crc32(body))


def unpack(data: bytes, max_pixels: int = MAX_PIXELS) -> Packet:
    """Parse and check a container; nothing is allocated for images above ``max_pixels``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BitstreamError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < _FIXED.size + 3 + 4:
        raise BitstreamError(f"stream of {len(data)} bytes is shorter than the smallest valid header")
    if data[:3] != MAGIC:
        raise BitstreamError(f"not an ICM stream: starts with {data[:3]!r}, expected {MAGIC!r}")
    if data[3] not in VERSIONS:
        raise BitstreamError(f"format version {data[3]} is not supported (this reader: "
                             f"{', '.join(map(str, VERSIONS))})")
    variable = data[3] == VARIABLE_RATE_VERSION
    if variable and len(data) < _FIXED.size + _RATE.size + 3 + 4:
        raise BitstreamError(f"stream of {len(data)} bytes is shorter than the smallest valid "
                             "variable-rate header")
    (crc,) = struct.unpack("<I", data[-4:])
    if zlib.crc32(data[:-4]) != crc:
        raise BitstreamError("CRC32 mismatch: the stream is truncated or corrupted")
    _, _, code, fingerprint, height, width = _FIXED.unpack_from(data)
    if code not in _CODE_TASKS:
        raise BitstreamError(f"unknown task code {code} in the header")
    if not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE):
        raise BitstreamError(f"image size {height}x{width} in the header is outside 1..{MAX_SIDE}")
    if height * width > max_pixels:
        raise BitstreamError(f"image size {height}x{width} in the header is {height * width} "
                             f"pixels, above the decoding budget max_pixels={max_pixels}; raise "
                             "max_pixels to decode it if the stream is trusted")
    pos, end, rate_code = _FIXED.size, len(data) - 4, None
    if variable:
        (rate_code,) = _RATE.unpack_from(data, pos)
        pos += _RATE.size
        if rate_code > RATE_STEPS:
            raise BitstreamError(f"rate code {rate_code} in the header is above {RATE_STEPS} "
                                 "(rate 1): damaged or foreign stream")
    lengths = []
    for _ in range(3):
        n, pos = _read_varint(data, pos, end)
        lengths.append(n)
    if pos + sum(lengths) != end:
        raise BitstreamError(f"section lengths {lengths} do not add up to the {end - pos} payload bytes")
    sections = []
    for n in lengths:
        sections.append(data[pos:pos + n])
        pos += n
    return Packet(_CODE_TASKS[code], fingerprint, height, width, tuple(sections), rate_code)
