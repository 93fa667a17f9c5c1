"""The ``payload`` rate count: each extractor against the file it came from.

Every payload is at most its file, and either a contiguous part of the file (WebP, AVIF, the
HEIF item data, VVC) or a stream that decodes to the file's pixels once the decoder's known
tables are put back (JPEG). Malformed input raises ``BitstreamError`` and nothing else.
"""

from __future__ import annotations

import io
import random
import struct

import numpy as np
import pytest
from PIL import Image

from icm_core.baselines import payload as pl
from icm_core.baselines.classical import CodecUnavailableError, code_at_scale, get_codec
from icm_core.data.synthetic import render_scene
from icm_core.errors import BitstreamError, ConfigError

FAST = {"vvc": {"preset": "faster"}}


def _codec(name: str, **options):
    try:
        return get_codec(name, **{**FAST.get(name, {}), **options})
    except CodecUnavailableError as e:
        pytest.skip(f"{name} unavailable here: {e}")


def _scene(h: int, w: int, seed: int = 5) -> Image.Image:
    return Image.fromarray(np.rint(render_scene(seed, (h, w))["image"] * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def scenes() -> list[Image.Image]:
    return [_scene(64, 64), _scene(131, 97, seed=2)]  # the 1/4-scale size, and odd sides


def _files(name: str, scenes) -> list[bytes]:
    codec = _codec(name)
    qs = sorted({codec.qualities[0], codec.qualities[len(codec.qualities) // 2],
                 codec.qualities[-1]})
    return [codec.encode(im, q) for im in scenes for q in qs]


def _top_boxes(data: bytes) -> dict[bytes, tuple[int, int]]:
    """{type: (content start, end)} of the top-level ISOBMFF boxes (a test-side parser)."""
    out, pos = {}, 0
    while pos < len(data):
        size, typ = struct.unpack(">I4s", data[pos:pos + 8])
        out[typ] = (pos + 8, pos + size)
        pos += size
    return out


def _segments(data: bytes) -> list[int]:
    """Markers of the JPEG header segments up to SOS (a test-side parser)."""
    markers, pos = [], 2
    while data[pos + 1] != 0xDA:
        markers.append(data[pos + 1])
        pos += 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
    return markers


def _tables_of_quality(quality: int, subsampling: str) -> bytes:
    """The DQT segments libjpeg writes for ``quality``: what a decoder knows from the quality."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="JPEG", quality=quality, subsampling=subsampling)
    data, out, pos = buf.getvalue(), b"", 2
    while data[pos + 1] != 0xDA:
        end = pos + 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if data[pos + 1] == 0xDB:
            out += data[pos:end]
        pos = end
    return out


def _standard_dht() -> bytes:
    body = b"".join(bytes([c << 4 | t]) + table
                    for (c, t), table in sorted(pl.standard_huffman_tables().items()))
    return b"\xff\xc4" + struct.pack(">H", 2 + len(body)) + body


# ------------------------------------------------------------------------------------------
# every codec
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["jpeg", "webp", "avif", "hevc", "vvc"])
def test_payload_is_at_most_the_file_and_code_at_scale_counts_both(name, scenes):
    for data in _files(name, scenes):
        p = pl.payload_bytes(name, data)
        assert 0 < len(p) <= len(data)
        assert pl.payload_size(name, data) == len(p)
    codec = _codec(name)
    point = code_at_scale(codec, scenes[0], codec.qualities[0], 0.5)
    assert point.file_bytes == len(point.data)
    assert point.payload_bytes == len(pl.payload_bytes(name, point.data)) <= point.file_bytes
    assert point.rate_bpp("file") == point.bpp == 8 * point.file_bytes / 64 ** 2
    assert point.rate_bpp("payload") == pytest.approx(8 * point.payload_bytes / 64 ** 2)
    assert point.encoder_command and point.encoder_version
    with pytest.raises(ConfigError, match="rate='bits'"):
        point.rate_bpp("bits")


def test_payload_strips_most_of_the_container_at_low_rates(scenes):
    """At the 1/4-scale size and the lowest quality the headers are most of each file."""
    for name in ("jpeg", "avif", "hevc"):
        codec = _codec(name)
        data = codec.encode(scenes[0], codec.qualities[0])
        assert len(pl.payload_bytes(name, data)) < 0.6 * len(data), name


def test_unknown_codec_and_registration():
    with pytest.raises(ConfigError, match="'mpeg2' has no payload extractor"):
        pl.payload_bytes("mpeg2", b"abc")
    with pytest.raises(ConfigError, match="callable"):
        pl.register_payload("x", 3)
    assert pl.RATES == ("file", "payload")


# ------------------------------------------------------------------------------------------
# JPEG: an abbreviated stream that decodes once the quality's tables are put back
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("chroma", ["4:2:0", "4:4:4"])
def test_jpeg_payload_decodes_with_the_qualitys_tables(chroma, scenes):
    codec = _codec("jpeg", chroma=chroma)
    forms = set()
    for im in scenes + [_scene(256, 256)]:
        for q in (1, 10, 50, 95):
            data = codec.encode(im, q)
            p = pl.jpeg_payload(data)
            assert p[:2] == b"\xff\xd8" and p[-2:] == b"\xff\xd9" and len(p) < len(data)
            markers = _segments(p)
            assert 0xDB not in markers and 0xE0 not in markers and 0xFE not in markers
            assert markers[0] == 0xC0  # SOF kept
            known = _tables_of_quality(q, chroma) + (b"" if 0xC4 in markers else _standard_dht())
            forms.add(0xC4 in markers)
            full = p[:2] + known + p[2:]
            with Image.open(io.BytesIO(full)) as f:
                assert np.array_equal(np.asarray(f.convert("RGB")), np.asarray(codec.decode(data)))
    assert False in forms  # the re-coded form (standard tables, no DHT) is used


def test_jpeg_recoding_with_standard_tables_is_lossless():
    """A file written with the standard tables re-codes to its own scan, byte for byte."""
    buf = io.BytesIO()
    _scene(64, 64).save(buf, format="JPEG", quality=40, optimize=False)
    data = buf.getvalue()
    p = pl.jpeg_payload(data)
    assert p.endswith(data[data.index(b"\xff\xda"):][14:])  # SOS header (12 + 2) then the scan
    assert len(data) - len(p) == sum(2 + struct.unpack(">H", data[i + 2:i + 4])[0]
                                     for i in _marker_offsets(data, (0xE0, 0xDB, 0xC4)))


def _marker_offsets(data: bytes, wanted: tuple[int, ...]) -> list[int]:
    out, pos = [], 2
    while data[pos + 1] != 0xDA:
        if data[pos + 1] in wanted:
            out.append(pos)
        pos += 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
    return out


def test_progressive_jpeg_keeps_its_own_tables_and_scans(scenes):
    buf = io.BytesIO()
    scenes[1].save(buf, format="JPEG", quality=30, progressive=True, optimize=True)
    data = buf.getvalue()
    p = pl.jpeg_payload(data)
    assert 0xC2 in _segments(p) and len(p) < len(data)
    with Image.open(io.BytesIO(p[:2] + _tables_of_quality(30, "4:2:0") + p[2:])) as f, \
            Image.open(io.BytesIO(data)) as g:
        assert np.array_equal(np.asarray(f.convert("RGB")), np.asarray(g.convert("RGB")))


# ------------------------------------------------------------------------------------------
# WebP, AVIF, HEIF, VVC: contiguous parts of the file
# ------------------------------------------------------------------------------------------

def test_webp_payload_is_the_vp8_chunk(scenes):
    for data in _files("webp", scenes):
        p = pl.webp_payload(data)
        assert data[12:16] in (b"VP8 ", b"VP8L")
        assert p == data[20:20 + struct.unpack("<I", data[16:20])[0]]
        # and it decodes once a RIFF header is put back around it
        riff = b"WEBP" + data[12:16] + struct.pack("<I", len(p)) + p + b"\0" * (len(p) & 1)
        with Image.open(io.BytesIO(b"RIFF" + struct.pack("<I", len(riff)) + riff)) as f:
            assert np.array_equal(np.asarray(f.convert("RGB")),
                                  np.asarray(get_codec("webp").decode(data)))


def test_avif_payload_is_the_mdat_item_less_its_temporal_delimiter(scenes):
    for data in _files("avif", scenes):
        p = pl.avif_payload(data)
        s, e = _top_boxes(data)[b"mdat"]
        item = data[s:e]  # one item: the whole mdat content
        assert item.endswith(p)  # a contiguous slice of the file
        assert item[:len(item) - len(p)] in (b"", b"\x12\x00")  # less a temporal delimiter
        assert (p[0] >> 3) & 15 == 1  # first OBU: the sequence header (type 1)


def _nal_types(stream: bytes) -> list[int]:
    types, pos = [], 0
    while pos < len(stream):
        n = int.from_bytes(stream[pos:pos + 4], "big")
        types.append((stream[pos + 4] >> 1) & 0x3F)
        pos += 4 + n
    assert pos == len(stream)
    return types


def test_heif_payload_is_parameter_sets_then_the_mdat_item(scenes):
    for data in _files("hevc", scenes):
        p = pl.heif_payload(data)
        s, e = _top_boxes(data)[b"mdat"]
        item = data[s:e]
        assert p.endswith(item) and len(p) < len(data)
        types = _nal_types(p)
        assert types[:3] == [32, 33, 34]  # VPS, SPS, PPS from hvcC
        assert all(t < 32 for t in types[3:]) and len(types) > 3  # then slices, no SEI
        assert _nal_types(item) == types[3:]


def test_vvc_payload_is_the_raw_266_stream(scenes):
    for data in _files("vvc", scenes):
        assert pl.vvc_payload(data) == data[1:]
        assert data[1:5] == b"\x00\x00\x00\x01"


def test_vvc_payload_without_the_apps():
    stream = b"\x00\x00\x00\x01" + bytes(range(20))
    assert pl.payload_bytes("vvc", b"\x03" + stream) == stream
    with pytest.raises(BitstreamError, match="crop byte"):
        pl.vvc_payload(b"\x07" + stream)
    with pytest.raises(BitstreamError, match="start code"):
        pl.vvc_payload(b"\x00" + bytes(20))


# ------------------------------------------------------------------------------------------
# malformed input: a clear BitstreamError, nothing else
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["jpeg", "webp", "avif", "hevc"])
def test_truncated_files_raise_bitstream_errors(name, scenes):
    data = _files(name, scenes[:1])[0]
    cuts = sorted({0, 1, 5, 11, 30, len(data) // 3, len(data) // 2, len(data) - 3,
                   len(data) - 1})
    for cut in cuts:
        with pytest.raises(BitstreamError, match=name):
            pl.payload_bytes(name, data[:cut])


@pytest.mark.parametrize("name", ["jpeg", "webp", "avif", "hevc", "vvc"])
def test_corrupted_bytes_never_escape_as_other_errors(name, scenes):
    """Flipped bytes either still parse (payload <= file) or raise BitstreamError."""
    try:
        data = _files(name, scenes[:1])[0]
    except pytest.skip.Exception:
        data = b"\x00\x00\x00\x00\x01" + bytes(range(40))
    rng = random.Random(0)
    for _ in range(150):
        bad = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            bad[rng.randrange(len(bad))] = rng.randrange(256)
        try:
            p = pl.payload_bytes(name, bytes(bad))
        except BitstreamError:
            continue
        assert len(p) <= len(bad)
    with pytest.raises(BitstreamError):
        pl.payload_bytes(name, b"garbage, not a coded image at all")
