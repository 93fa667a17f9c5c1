"""The coded bitstream inside a classical codec's file: the ``payload`` rate count.

A rate is counted two ways (:data:`RATES`):

``file``
    every byte a user stores: ``len(data)`` of what ``Codec.encode`` returns.
``payload``
    the coded bitstream without container or metadata bytes, i.e. what a decoder that
    already knows the format's fixed tables needs, as the learned decoder holds its CDF tables
    in the model. :func:`payload_bytes` returns it; ``payload <= file`` always.

What each extractor keeps (and why):

========  ===================================================================================
codec     payload
========  ===================================================================================
``jpeg``  an abbreviated-format JPEG stream (ITU T.81 B.4): SOI, SOF, SOS, the entropy-coded
          scan, EOI. The quantization tables (DQT) are those of the quality, which the decoder
          knows, and APPn/COM are metadata, so neither is counted. The file's Huffman tables
          are optimized per image (``optimize=True``), so a decoder cannot know them: the scan
          is losslessly re-coded with the standard Annex K tables (no DHT sent), unless the
          file's own tables plus their DHT segments are smaller (then those are kept; the
          stream says which by carrying DHT or not, as libjpeg's abbreviated streams do).
          Progressive, arithmetic or restart-interval files keep their scans and non-standard
          tables verbatim.
``webp``  the ``VP8 `` / ``VP8L`` chunk's data (with an ``ALPH`` chunk's data in front when
          there is one) without the RIFF header, chunk headers, VP8X, ICC, EXIF or XMP.
``avif``  the primary item's data in ``mdat`` as ``iloc`` locates it: the AV1 OBUs (the AVIF
          spec puts the sequence header OBU in the item data, so it is counted), without
          temporal delimiter, metadata and padding OBUs (libavif writes a 2-byte temporal
          delimiter first, so the payload is the item data from its third byte).
``hevc``  the parameter-set NAL units (VPS, SPS, PPS) from the primary item's ``hvcC``, framed
          like the item data (``lengthSizeMinusOne + 1`` length bytes each), followed by the
          item's data in ``mdat`` (its NAL units). The parameter sets are counted because the
          decoder cannot decode without them and the other codecs' payloads carry theirs too
          (VVC's SPS/PPS, AV1's sequence header); SEI NAL units are metadata and dropped.
``vvc``   the raw ``.266`` stream (Annex B byte stream: SPS, PPS and the slice); only the
          crop byte in front (``VVCCodec``'s container for odd sizes) is not counted.
========  ===================================================================================

Malformed or truncated input raises :class:`~icm_core.errors.BitstreamError` naming the codec,
the byte offset and what was expected. New codecs add their extractor with
:func:`register_payload` (``classical.register_codec(..., payload=fn)`` does it).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from functools import cache

from PIL import Image

from icm_core.errors import BitstreamError, ConfigError

RATES = ("file", "payload")
"""The two rate counts: every stored byte, or the coded bitstream only."""

_EXTRACTORS: dict[str, Callable[[bytes], bytes]] = {}


def register_payload(codec_name: str, extractor: Callable[[bytes], bytes]) -> None:
    """Make ``payload_bytes(codec_name, data)`` call ``extractor(data) -> bytes``."""
    if not callable(extractor):
        raise ConfigError(f"payload extractor for codec {codec_name!r} must be callable "
                          f"(bytes -> bytes), got {type(extractor).__name__}")
    _EXTRACTORS[str(codec_name).lower()] = extractor


def has_payload(codec_name: str) -> bool:
    """Whether an extractor is registered for ``codec_name``."""
    return str(codec_name).lower() in _EXTRACTORS


def payload_bytes(codec_name: str, data: bytes) -> bytes:
    """The coded bitstream of ``data`` (a file from codec ``codec_name``'s ``encode``).

    Raises ``BitstreamError`` on malformed data, ``ConfigError`` for a codec without an
    extractor.
    """
    key = str(codec_name).lower()
    if key not in _EXTRACTORS:
        raise ConfigError(f"codec {codec_name!r} has no payload extractor; known: "
                          f"{sorted(_EXTRACTORS)} (register one with "
                          "classical.register_codec(..., payload=fn))")
    out = _EXTRACTORS[key](bytes(data))
    if len(out) > len(data):  # e.g. overlapping extents: the file counts them once
        raise BitstreamError(f"{key} file of {len(data)} bytes: its payload would be "
                             f"{len(out)} bytes, more than the file; the file is malformed")
    return out


def payload_size(codec_name: str, data: bytes) -> int:
    """``len(payload_bytes(codec_name, data))``."""
    return len(payload_bytes(codec_name, data))


def _need(data: bytes, end: int, what: str, at: int) -> None:
    if end > len(data) or at < 0:
        raise BitstreamError(f"{what}: truncated at byte {at} (needs {end} of "
                             f"{len(data)} bytes)")


# --------------------------------------------------------------------------------------------
# raw streams
# --------------------------------------------------------------------------------------------

def vvc_payload(data: bytes) -> bytes:
    """``VVCCodec`` bytes (crop byte + ``.266`` Annex B stream) -> the ``.266`` stream."""
    what = f"vvc stream of {len(data)} bytes"
    if len(data) < 6 or data[0] > 3:
        raise BitstreamError(f"{what} is not from VVCCodec.encode: it must start with a crop "
                             "byte 0..3 followed by a .266 stream")
    stream = data[1:]
    if not (stream.startswith(b"\x00\x00\x01") or stream.startswith(b"\x00\x00\x00\x01")):
        raise BitstreamError(f"{what}: no Annex B start code after the crop byte (got "
                             f"{stream[:4].hex()}); not a raw .266 stream")
    return stream


# --------------------------------------------------------------------------------------------
# WebP (RIFF)
# --------------------------------------------------------------------------------------------

def webp_payload(data: bytes) -> bytes:
    """The ``VP8 ``/``VP8L`` chunk data of a WebP file (``ALPH`` data in front if present)."""
    what = f"webp file of {len(data)} bytes"
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise BitstreamError(f"{what}: no RIFF/WEBP header (got {data[:12]!r})")
    riff_end = 8 + struct.unpack("<I", data[4:8])[0]
    _need(data, riff_end, what + " (RIFF size)", 4)
    pos, alpha = 12, b""
    while pos + 8 <= riff_end:
        fourcc, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        start, end = pos + 8, pos + 8 + size
        if end > riff_end:
            raise BitstreamError(f"{what}: chunk {fourcc!r} at byte {pos} runs past the RIFF "
                                 f"end ({end} > {riff_end})")
        if fourcc == b"ALPH":
            alpha = data[start:end]
        elif fourcc in (b"VP8 ", b"VP8L"):
            if size < 5:
                raise BitstreamError(f"{what}: {fourcc.decode()} chunk at byte {pos} holds "
                                     f"only {size} bytes")
            return alpha + data[start:end]
        pos = end + (size & 1)
    raise BitstreamError(f"{what}: no VP8 or VP8L chunk (truncated, or not a still image)")


# --------------------------------------------------------------------------------------------
# ISOBMFF (AVIF, HEIF)
# --------------------------------------------------------------------------------------------

def _boxes(data: bytes, start: int, end: int, what: str) -> dict[bytes, list[tuple[int, int]]]:
    """{type: [(payload start, box end)]} of the boxes in data[start:end]."""
    out: dict[bytes, list[tuple[int, int]]] = {}
    pos = start
    while pos < end:
        _need(data, pos + 8, f"{what}: box header", pos)
        size, typ = struct.unpack(">I4s", data[pos:pos + 8])
        head = 8
        if size == 1:
            _need(data, pos + 16, f"{what}: box {typ!r} large size", pos)
            size, head = struct.unpack(">Q", data[pos + 8:pos + 16])[0], 16
        elif size == 0:
            size = end - pos
        if size < head or pos + size > end:
            raise BitstreamError(f"{what}: box {typ!r} at byte {pos} declares {size} bytes, "
                                 f"beyond its parent's end at {end} (truncated file?)")
        out.setdefault(typ, []).append((pos + head, pos + size))
        pos += size
    return out


def _one(boxes: dict, typ: bytes, what: str) -> tuple[int, int]:
    found = boxes.get(typ)
    if not found:
        raise BitstreamError(f"{what}: no {typ.decode()!r} box")
    return found[0]


class _Reader:
    def __init__(self, data: bytes, pos: int, end: int, what: str):
        self.data, self.pos, self.end, self.what = data, pos, end, what

    def uint(self, n: int) -> int:
        if n == 0:
            return 0
        if self.pos + n > self.end:
            raise BitstreamError(f"{self.what}: truncated at byte {self.pos}")
        v = int.from_bytes(self.data[self.pos:self.pos + n], "big")
        self.pos += n
        return v

    def take(self, n: int) -> bytes:
        if self.pos + n > self.end:
            raise BitstreamError(f"{self.what}: truncated at byte {self.pos}")
        self.pos += n
        return self.data[self.pos - n:self.pos]


def _primary_item(data: bytes, item_type: bytes, what: str) -> dict:
    """Where the primary item's data lies, and its property boxes: {extents, props}."""
    top = _boxes(data, 0, len(data), what)
    if b"ftyp" not in top:
        raise BitstreamError(f"{what}: no 'ftyp' box; not an ISOBMFF (HEIF/AVIF) file")
    m0, m1 = _one(top, b"meta", what)
    meta = _boxes(data, m0 + 4, m1, what + " meta")  # FullBox: version + flags first

    r = _Reader(data, *_one(meta, b"pitm", what), what + " pitm")
    version = r.uint(1)
    r.uint(3)
    primary = r.uint(2 if version == 0 else 4)

    r = _Reader(data, *_one(meta, b"iinf", what), what + " iinf")
    version = r.uint(1)
    r.uint(3)
    r.uint(2 if version == 0 else 4)
    types = {}
    for s, e in _boxes(data, r.pos, r.end, what + " iinf").get(b"infe", []):
        ir = _Reader(data, s, e, what + " infe")
        v = ir.uint(1)
        ir.uint(3)
        if v < 2:
            continue
        item = ir.uint(2 if v == 2 else 4)
        ir.uint(2)
        types[item] = ir.take(4)
    if types.get(primary) != item_type:
        raise BitstreamError(f"{what}: primary item {primary} is of type {types.get(primary)!r}, "
                             f"not {item_type!r} (grid or derived images are not supported)")

    r = _Reader(data, *_one(meta, b"iloc", what), what + " iloc")
    version = r.uint(1)
    r.uint(3)
    sizes = r.uint(1)
    offset_size, length_size = sizes >> 4, sizes & 15
    sizes = r.uint(1)
    base_size, index_size = sizes >> 4, (sizes & 15 if version in (1, 2) else 0)
    extents = None
    for _ in range(r.uint(2 if version < 2 else 4)):
        item = r.uint(2 if version < 2 else 4)
        method = r.uint(2) & 15 if version in (1, 2) else 0
        r.uint(2)  # data_reference_index
        base = r.uint(base_size)
        ext = []
        for _ in range(r.uint(2)):
            r.uint(index_size)
            off, length = r.uint(offset_size), r.uint(length_size)
            ext.append((base + off, length))
        if item == primary:
            if method != 0:
                raise BitstreamError(f"{what}: primary item {primary} uses iloc construction "
                                     f"method {method}; only file offsets (0) are supported")
            extents = ext
    if not extents:
        raise BitstreamError(f"{what}: iloc has no extent for primary item {primary}")
    mdat = top.get(b"mdat", [])
    checked = []
    for off, length in extents:
        end = len(data) if length == 0 else off + length
        if not any(s <= off and end <= e for s, e in mdat):
            raise BitstreamError(f"{what}: item {primary}'s extent [{off}, {end}) is not inside "
                                 f"an mdat box (truncated file?)")
        if any(off < e and s < end for s, e in checked):
            raise BitstreamError(f"{what}: item {primary}'s extents overlap at byte {off}")
        checked.append((off, end))

    props = {}
    if b"iprp" in meta:
        iprp = _boxes(data, *_one(meta, b"iprp", what), what + " iprp")
        s, e = _one(iprp, b"ipco", what)
        pos, ipco = s, []
        while pos < e:  # properties in order: ipma indexes them from 1
            _need(data, pos + 8, f"{what}: property box header", pos)
            size, typ = struct.unpack(">I4s", data[pos:pos + 8])
            if size < 8 or pos + size > e:
                raise BitstreamError(f"{what}: property box at byte {pos} is malformed")
            ipco.append((typ, pos + 8, pos + size))
            pos += size
        for s, e in iprp.get(b"ipma", []):
            ir = _Reader(data, s, e, what + " ipma")
            v, flags = ir.uint(1), ir.uint(3)
            for _ in range(ir.uint(4)):
                item = ir.uint(2 if v < 1 else 4)
                for _ in range(ir.uint(1)):
                    index = ir.uint(2 if flags & 1 else 1) & (0x7FFF if flags & 1 else 0x7F)
                    if item == primary and 1 <= index <= len(ipco):
                        typ, ps, pe = ipco[index - 1]
                        props[typ] = (ps, pe)
    return {"extents": checked, "props": props}


_AV1_DROPPED = (2, 5, 15)  # temporal delimiter, metadata, padding: nothing a decoder needs


def avif_payload(data: bytes) -> bytes:
    """The AV1 OBUs of an AVIF file's primary item (its data in ``mdat``), without temporal
    delimiter, metadata and padding OBUs."""
    what = f"avif file of {len(data)} bytes"
    item = _primary_item(data, b"av01", what)
    body = b"".join(data[s:e] for s, e in item["extents"])
    kept, pos = [], 0
    while pos < len(body):
        header = body[pos]
        if header & 0x81:
            raise BitstreamError(f"{what}: OBU at item byte {pos} has its forbidden or reserved "
                                 "bit set; not an AV1 stream")
        obu_type, i = (header >> 3) & 15, pos + 1 + ((header >> 2) & 1)
        if header & 2:  # obu_has_size_field: leb128
            size = shift = 0
            while True:
                if i >= len(body) or shift > 56:
                    raise BitstreamError(f"{what}: OBU size at item byte {pos} is truncated")
                size |= (body[i] & 0x7F) << shift
                shift, i = shift + 7, i + 1
                if body[i - 1] < 0x80:
                    break
            end = i + size
        else:
            end = len(body)
        if end > len(body):
            raise BitstreamError(f"{what}: OBU at item byte {pos} declares {end - i} bytes, past "
                                 f"the item's {len(body)}")
        if obu_type not in _AV1_DROPPED:
            kept.append(body[pos:end])
        pos = end
    if not kept:
        raise BitstreamError(f"{what}: the item holds no AV1 sequence header or frame OBU")
    return b"".join(kept)


_HEVC_SEI = (39, 40)


def heif_payload(data: bytes) -> bytes:
    """The HEVC parameter sets (from ``hvcC``) + NAL units of a HEIF file's primary item."""
    what = f"hevc (HEIF) file of {len(data)} bytes"
    item = _primary_item(data, b"hvc1", what)
    if b"hvcC" not in item["props"]:
        raise BitstreamError(f"{what}: the primary item has no hvcC property")
    r = _Reader(data, *item["props"][b"hvcC"], what + " hvcC")
    r.take(21)
    n_len = (r.uint(1) & 3) + 1
    params = []
    for _ in range(r.uint(1)):
        nal_type = r.uint(1) & 0x3F
        for _ in range(r.uint(2)):
            nal = r.take(r.uint(2))
            if nal_type not in _HEVC_SEI:
                params.append(len(nal).to_bytes(n_len, "big") + nal)
    body = b"".join(data[s:e] for s, e in item["extents"])
    nals, pos = [], 0
    while pos < len(body):  # drop SEI NAL units; check the framing
        if pos + n_len > len(body):
            raise BitstreamError(f"{what}: NAL length field truncated at item byte {pos}")
        size = int.from_bytes(body[pos:pos + n_len], "big")
        end = pos + n_len + size
        if size < 2 or end > len(body):
            raise BitstreamError(f"{what}: NAL unit at item byte {pos} declares {size} bytes, "
                                 f"past the item's {len(body)}")
        if (body[pos + n_len] >> 1) & 0x3F not in _HEVC_SEI:
            nals.append(body[pos:end])
        pos = end
    return b"".join(params) + b"".join(nals)


# --------------------------------------------------------------------------------------------
# JPEG
# --------------------------------------------------------------------------------------------

_SOF_HUFFMAN_SEQUENTIAL = (0xC0, 0xC1)
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_parse(data: bytes, what: str) -> list[tuple[int, int, int]]:
    """[(marker, start, end)] of every segment (marker included); a scan's entropy-coded data
    is the pseudo-segment (0, start, end). Stops after EOI."""
    if data[:2] != b"\xff\xd8":
        raise BitstreamError(f"{what}: no SOI marker (got {data[:2].hex()}); not a JPEG file")
    segs, pos, n = [(0xD8, 0, 2)], 2, len(data)
    while True:
        if pos + 2 > n or data[pos] != 0xFF:
            raise BitstreamError(f"{what}: expected a marker at byte {pos} "
                                 f"(truncated, or not a JPEG)")
        while pos + 1 < n and data[pos + 1] == 0xFF:  # fill bytes
            pos += 1
        _need(data, pos + 2, what, pos)
        marker = data[pos + 1]
        if marker == 0xD9:
            segs.append((0xD9, pos, pos + 2))
            return segs
        if marker in (0x00, 0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            raise BitstreamError(f"{what}: unexpected marker FF{marker:02X} at byte {pos}")
        _need(data, pos + 4, what, pos)
        end = pos + 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if end < pos + 4:
            raise BitstreamError(f"{what}: segment FF{marker:02X} at byte {pos} is too short")
        _need(data, end, f"{what}: segment FF{marker:02X}", pos)
        segs.append((marker, pos, end))
        pos = end
        if marker == 0xDA:  # entropy-coded data up to the next marker other than RSTn/stuffing
            start = pos
            while True:
                pos = data.find(b"\xff", pos)
                if pos < 0 or pos + 1 >= n:
                    raise BitstreamError(f"{what}: scan starting at byte {start} has no end "
                                         "marker (truncated)")
                nxt = data[pos + 1]
                if nxt == 0x00 or 0xD0 <= nxt <= 0xD7:
                    pos += 2
                    continue
                if nxt == 0xFF:
                    pos += 1
                    continue
                break
            segs.append((0, start, pos))


def _dht_tables(seg: bytes, what: str) -> list[tuple[int, int, bytes]]:
    """[(class, id, counts + symbols)] of one DHT segment (``seg`` without marker/length)."""
    out, pos = [], 0
    while pos < len(seg):
        if pos + 17 > len(seg):
            raise BitstreamError(f"{what}: DHT table truncated")
        counts = seg[pos + 1:pos + 17]
        total = sum(counts)
        if pos + 17 + total > len(seg) or total > 256:
            raise BitstreamError(f"{what}: DHT table declares {total} symbols, beyond the "
                                 "segment")
        out.append((seg[pos] >> 4, seg[pos] & 15, bytes(seg[pos + 1:pos + 17 + total])))
        pos += 17 + total
    return out


def _codes(table: bytes) -> dict[int, str]:
    """Huffman table (16 counts + symbols) -> {symbol: code bits} (T.81 Annex C)."""
    codes, code, k = {}, 0, 16
    for length in range(1, 17):
        for _ in range(table[length - 1]):
            codes[table[k]] = format(code, f"0{length}b")
            code, k = code + 1, k + 1
        code <<= 1
    return codes


@cache
def standard_huffman_tables() -> dict[tuple[int, int], bytes]:
    """{(class, id): table} of the standard tables (T.81 Annex K.3), as libjpeg writes them."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, format="JPEG", quality=50, optimize=False)
    data = buf.getvalue()
    tables = {}
    for marker, s, e in _jpeg_parse(data, "standard tables"):
        if marker == 0xC4:
            for cls, tid, table in _dht_tables(data[s + 4:e], "standard tables"):
                tables[(cls, tid)] = table
    return tables


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _unstuff(scan: bytes) -> bytes:
    return scan.replace(b"\xff\x00", b"\xff")


def _recode_scan(scan: bytes, frame: dict, comps: list[tuple[int, int, int]],
                 tables: dict, standard: dict, what: str) -> bytes:
    """Decode the Huffman symbols of a baseline interleaved scan and re-code them with
    ``standard`` tables (luma: 0, chroma: 1). The DCT coefficients are unchanged."""
    data = _unstuff(scan)
    bits = format(int.from_bytes(data, "big"), f"0{8 * len(data)}b") if data else ""
    hmax = max(c["h"] for c in frame["comps"].values())
    vmax = max(c["v"] for c in frame["comps"].values())
    w, h = frame["size"]
    order = []  # per MCU: (component index in scan, number of blocks)
    if len(comps) == 1:
        fc = frame["comps"][comps[0][0]]
        bw = _ceil(_ceil(w * fc["h"], hmax), 8)
        bh = _ceil(_ceil(h * fc["v"], vmax), 8)
        n_mcu, order = bw * bh, [(0, 1)]
    else:
        n_mcu = _ceil(w, 8 * hmax) * _ceil(h, 8 * vmax)
        order = [(i, frame["comps"][cid]["h"] * frame["comps"][cid]["v"])
                 for i, (cid, _, _) in enumerate(comps)]
    dec = []  # per scan component: (dc {code: sym}, ac {code: sym}, dc codes, ac codes)
    for i, (_, td, ta) in enumerate(comps):
        if (0, td) not in tables or (1, ta) not in tables:
            raise BitstreamError(f"{what}: scan uses Huffman table DC{td}/AC{ta}, not defined")
        dc = {v: k for k, v in _codes(tables[(0, td)]).items()}
        ac = {v: k for k, v in _codes(tables[(1, ta)]).items()}
        std = 0 if i == 0 else 1
        dec.append((dc, ac, _codes(standard[(0, std)]), _codes(standard[(1, std)])))
    pos, n, out = 0, len(bits), []

    def symbol(table: dict[str, int]) -> int:
        nonlocal pos
        for length in range(1, 17):
            sym = table.get(bits[pos:pos + length])
            if sym is not None:
                pos += length
                return sym
            if pos + length >= n:
                break
        raise BitstreamError(f"{what}: invalid or truncated Huffman code at scan bit {pos}")

    for _ in range(n_mcu):
        for ci, blocks in order:
            dc, ac, sdc, sac = dec[ci]
            for _ in range(blocks):
                s = symbol(dc)
                if s > 11 or pos + s > n:
                    raise BitstreamError(f"{what}: bad DC coefficient at scan bit {pos}")
                out.append(sdc[s] + bits[pos:pos + s])
                pos += s
                k = 1
                while k < 64:
                    rs = symbol(ac)
                    r, s = rs >> 4, rs & 15
                    if rs not in sac or pos + s > n:
                        raise BitstreamError(f"{what}: bad AC symbol {rs:#x} at scan bit {pos}")
                    out.append(sac[rs] + bits[pos:pos + s])
                    pos += s
                    if s == 0 and r != 15:
                        break  # EOB
                    k += r + 1
                if k > 64:
                    raise BitstreamError(f"{what}: AC run past coefficient 63 at scan bit {pos}")
    coded = "".join(out)
    coded += "1" * (-len(coded) % 8)
    raw = int(coded, 2).to_bytes(len(coded) // 8, "big") if coded else b""
    return raw.replace(b"\xff", b"\xff\x00")


def jpeg_payload(data: bytes) -> bytes:
    """The abbreviated-format JPEG stream: SOI, SOF, [DHT], SOS, scan, EOI (see module doc)."""
    what = f"jpeg file of {len(data)} bytes"
    segs = _jpeg_parse(data, what)
    frame, tables, scans, restart = None, {}, [], False
    kept = []  # (marker, bytes) of what the verbatim form keeps
    standard = standard_huffman_tables()
    for marker, s, e in segs:
        seg = data[s:e]
        if marker in _SOF:
            if e - s < 10:
                raise BitstreamError(f"{what}: SOF at byte {s} is too short")
            h, w, nc = struct.unpack(">HHB", data[s + 5:s + 10])
            _need(data, s + 10 + 3 * nc, what + " SOF", s)
            if e - s < 10 + 3 * nc or nc == 0:
                raise BitstreamError(f"{what}: SOF at byte {s} lists {nc} components in "
                                     f"{e - s} bytes")
            comps = {data[s + 10 + 3 * i]: {"h": data[s + 11 + 3 * i] >> 4,
                                            "v": data[s + 11 + 3 * i] & 15}
                     for i in range(nc)}
            if any(not (1 <= c["h"] <= 4 and 1 <= c["v"] <= 4) for c in comps.values()):
                raise BitstreamError(f"{what}: SOF at byte {s} has a sampling factor out of 1..4")
            frame = {"marker": marker, "size": (w, h), "comps": comps,
                     "precision": data[s + 4]}
            kept.append((marker, seg))
        elif marker == 0xC4:
            for cls, tid, table in _dht_tables(data[s + 4:e], what):
                tables[(cls, tid)] = table
            kept.append((marker, seg))
        elif marker == 0xDD:
            if e - s != 6:
                raise BitstreamError(f"{what}: DRI segment at byte {s} is not 4 bytes long")
            restart = restart or struct.unpack(">H", data[s + 4:s + 6])[0] > 0
            kept.append((marker, seg))
        elif marker == 0xDA:
            if frame is None:
                raise BitstreamError(f"{what}: SOS at byte {s} before any SOF")
            nc = data[s + 4] if e - s > 4 else 0
            if nc == 0 or e - s < 8 + 2 * nc:
                raise BitstreamError(f"{what}: SOS at byte {s} is malformed")
            comps_s = [(data[s + 5 + 2 * i], data[s + 6 + 2 * i] >> 4, data[s + 6 + 2 * i] & 15)
                       for i in range(nc)]
            if any(c not in frame["comps"] for c, _, _ in comps_s):
                raise BitstreamError(f"{what}: SOS at byte {s} names a component not in SOF")
            scans.append({"sos": seg, "comps": comps_s, "spectral": data[e - 3:e],
                          "tables": dict(tables)})
            kept.append((marker, seg))
        elif marker == 0:
            scans[-1]["data"] = seg
            kept.append((marker, seg))
        elif marker in (0xD8, 0xD9):
            kept.append((marker, seg))
        # DQT (the quality's tables), APPn, COM and the rest are not counted
    if frame is None or not scans:
        raise BitstreamError(f"{what}: no frame (SOF) or no scan (SOS)")
    # the verbatim form: the file's own tables, standard DHT tables dropped
    verbatim = []
    for marker, seg in kept:
        if marker == 0xC4:
            own = [(c, t, tb) for c, t, tb in _dht_tables(seg[4:], what)
                   if standard.get((c, t)) != tb]
            if not own:
                continue
            body = b"".join(bytes([c << 4 | t]) + tb for c, t, tb in own)
            seg = b"\xff\xc4" + struct.pack(">H", 2 + len(body)) + body
        verbatim.append(seg)
    verbatim = b"".join(verbatim)
    if (frame["marker"] not in _SOF_HUFFMAN_SEQUENTIAL or frame["precision"] != 8
            or len(scans) != 1 or restart or len(scans[0]["comps"]) != len(frame["comps"])
            or len(frame["comps"]) > 4 or scans[0]["spectral"] != b"\x00\x3f\x00"):
        return verbatim
    scan = scans[0]
    recoded = _recode_scan(scan["data"], frame, scan["comps"], scan["tables"], standard, what)
    sos = bytearray(scan["sos"])
    for i in range(len(scan["comps"])):  # luma: standard tables 0, chroma: 1
        sos[6 + 2 * i] = 0x00 if i == 0 else 0x11
    sof = next(seg for marker, seg in kept if marker == frame["marker"])
    abbreviated = b"\xff\xd8" + sof + bytes(sos) + recoded + b"\xff\xd9"
    return abbreviated if len(abbreviated) <= len(verbatim) else verbatim


register_payload("jpeg", jpeg_payload)
register_payload("webp", webp_payload)
register_payload("avif", avif_payload)
register_payload("hevc", heif_payload)
register_payload("vvc", vvc_payload)
