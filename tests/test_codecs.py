"""Classical codecs: real files, rates over the original pixels, ladders, untrusted decoding.

VVC round trips run only where VVenC/VVdeC are installed (PATH or ICM_VVENC/ICM_VVDEC); its
plumbing (YUV files, crop byte, Y4M parsing, subprocess errors) is also tested with stand-in
scripts so that it is covered everywhere.
"""

from __future__ import annotations

import io
import os
import re
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from icm_core.baselines import classical as codecs
from icm_core.baselines.classical import (
    CodecError,
    CodecUnavailableError,
    bpp,
    code_at_scale,
    get_codec,
    ladder,
    rgb_to_yuv420,
    yuv420_to_rgb,
)
from icm_core.cli.main import main
from icm_core.data.synthetic import render_scene
from icm_core.errors import BitstreamError, ConfigError, ICMError
from icm_core.studies import compare

ALL = ["jpeg", "webp", "avif", "hevc", "vvc"]
FAST = {"vvc": {"preset": "faster"}}  # keep the VVC tests quick


def _codec(name: str, **options) -> codecs.Codec:
    try:
        return get_codec(name, **{**FAST.get(name, {}), **options})
    except CodecUnavailableError as e:
        pytest.skip(f"{name} unavailable here: {e}")


def _scene(h: int, w: int, seed: int = 3) -> Image.Image:
    rgb = render_scene(seed, (h, w))["image"]
    return Image.fromarray(np.rint(rgb * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def scene256() -> Image.Image:
    return _scene(256, 256)


@pytest.fixture(scope="module")
def scene_odd() -> Image.Image:
    return _scene(131, 97)  # W=97, H=131: odd both ways


def psnr(a: Image.Image, b: Image.Image) -> float:
    x, y = (np.asarray(i, dtype=np.float64) for i in (a, b))
    return float(10 * np.log10(255.0**2 / np.mean((x - y) ** 2)))


# ------------------------------------------------------------------------------------------
# rates and round trips
# ------------------------------------------------------------------------------------------

def test_bpp_counts_every_byte_over_the_original_pixels():
    img = Image.new("RGB", (5, 4))
    assert bpp(b"x" * 10, img) == 8 * 10 / 20
    assert bpp(b"", (7, 3)) == 0.0


@pytest.mark.parametrize("name", ALL)
def test_round_trip_keeps_size_and_quality(name, scene256, scene_odd):
    codec = _codec(name)
    for img in (scene256, scene_odd):
        top = code_at_scale(codec, img, codec.qualities[-1])
        assert top.decoded.size == img.size and top.decoded.mode == "RGB"
        assert top.bpp == 8 * len(top.data) / (img.width * img.height)
        # measured 32-34.5 dB (4:2:0 caps colourful textures); 28 dB catches a broken pipeline
        assert psnr(top.decoded, img) > 28, name
        low = code_at_scale(codec, img, codec.qualities[0])
        assert low.decoded.size == img.size
        assert len(low.data) < len(top.data)
        assert psnr(low.decoded, img) > 15  # still the same picture, not noise
    # decode() alone, from the file's bytes
    data = codec.encode(scene_odd, codec.qualities[-1])
    assert codec.decode(data).size == scene_odd.size


@pytest.mark.parametrize("name", ALL)
def test_quality_ladder_is_monotone_in_bytes(name, scene256):
    codec = _codec(name)
    sizes = [len(codec.encode(scene256, q)) for q in codec.qualities]
    assert list(codec.qualities) == sorted(codec.qualities)
    assert all(a < b for a, b in zip(sizes, sizes[1:])), dict(zip(codec.qualities, sizes))
    # reaches down into a learned codec's range (measured 0.03-0.10 bpp; code_at_scale goes
    # lower) and spans over an order of magnitude (measured 20-40x)
    assert 8 * sizes[0] / 256**2 <= 0.12 and sizes[-1] >= 10 * sizes[0]


@pytest.mark.parametrize("name", ALL)
def test_code_at_scale_returns_original_size_and_fewer_bytes(name, scene256):
    codec = _codec(name)
    q = codec.qualities[len(codec.qualities) // 2]
    points = [code_at_scale(codec, scene256, q, s) for s in (1, 0.5, 0.25)]
    for p, s in zip(points, (1, 0.5, 0.25)):
        assert p.decoded.size == scene256.size and p.scale == s and p.quality == q
        assert p.bpp == 8 * len(p.data) / 256**2  # over the ORIGINAL pixels
    assert len(points[0].data) > len(points[1].data) > len(points[2].data)
    # decoding the quarter-size file alone gives the small picture
    assert codec.decode(points[2].data).size == (64, 64)


def test_code_at_scale_rounds_odd_sizes(scene_odd):
    codec = get_codec("jpeg")
    data = code_at_scale(codec, scene_odd, 50, 0.25).data
    assert codec.decode(data).size == (24, 33)  # round(97/4), round(131/4)
    assert code_at_scale(codec, scene_odd, 50, 0.25).decoded.size == (97, 131)


def test_ladder_visits_every_quality_at_every_scale():
    codec = get_codec("jpeg")
    pts = list(ladder(codec))
    assert pts == [(q, s) for s in (1.0, 0.5, 0.25) for q in codec.qualities]
    assert list(ladder(codec, scales=(0.5,))) == [(q, 0.5) for q in codec.qualities]
    for bad in (0, 1.5, -0.5, "half"):
        with pytest.raises(ConfigError, match="scale"):
            list(ladder(codec, scales=(1, bad)))


# ------------------------------------------------------------------------------------------
# chroma
# ------------------------------------------------------------------------------------------

def _stripes() -> Image.Image:
    """Columns alternating between two colours of similar luma: only 4:4:4 can keep them."""
    a = np.zeros((64, 64, 3), np.uint8)
    a[:, ::2], a[:, 1::2] = (200, 100, 100), (60, 160, 60)
    return Image.fromarray(a)


@pytest.mark.parametrize("name,chroma", [(n, "4:2:0") for n in ALL]
                         + [("jpeg", "4:4:4"), ("avif", "4:4:4"), ("hevc", "4:4:4")])
def test_chroma_attribute_matches_what_the_codec_does(name, chroma):
    codec = _codec(name, chroma=chroma)
    assert codec.chroma == chroma
    img = _stripes()
    quality = psnr(codec.decode(codec.encode(img, codec.qualities[-1])), img)
    # measured: ~15 dB when chroma is halved, 48-52 dB at 4:4:4
    assert (quality < 25) if chroma == "4:2:0" else (quality > 35), quality


def test_default_chroma_is_420_and_unsupported_chroma_is_refused():
    for name in ("jpeg", "webp", "avif", "hevc"):
        assert _codec(name).chroma == "4:2:0"
    with pytest.raises(ConfigError, match="chroma"):
        get_codec("webp", chroma="4:4:4")


def test_jpeg_444_file_is_really_unsubsampled():
    from PIL import JpegImagePlugin

    data = get_codec("jpeg", chroma="4:4:4").encode(_stripes(), 90)
    assert JpegImagePlugin.get_sampling(Image.open(io.BytesIO(data))) == 0  # 0 = 4:4:4
    data = get_codec("jpeg").encode(_stripes(), 90)
    assert JpegImagePlugin.get_sampling(Image.open(io.BytesIO(data))) == 2  # 2 = 4:2:0


# ------------------------------------------------------------------------------------------
# bad input and untrusted bytes
# ------------------------------------------------------------------------------------------

def test_bad_names_options_qualities_and_images():
    with pytest.raises(ConfigError, match="'mpeg2'.*avif"):
        get_codec("mpeg2")
    with pytest.raises(ConfigError, match="speed_up"):
        get_codec("jpeg", speed_up=True)
    codec = get_codec("jpeg")
    img = Image.new("RGB", (16, 16))
    for q in (-1, 101, 50.5, True, "50"):
        with pytest.raises(ConfigError, match="quality"):
            codec.encode(img, q)
    with pytest.raises(ConfigError, match="PIL"):
        codec.encode(np.zeros((16, 16, 3), np.uint8), 50)
    assert codec.decode(codec.encode(img.convert("L"), 50)).mode == "RGB"


@pytest.mark.parametrize("name", ALL)
def test_undecodable_bytes_raise_bitstream_error(name, scene_odd):
    codec = _codec(name)
    good = codec.encode(scene_odd, codec.qualities[-1])
    rng = np.random.default_rng(0)
    for bad in (b"", b"\x00", rng.bytes(300), good[: len(good) // 3]):
        with pytest.raises(BitstreamError):
            codec.decode(bad)


@pytest.mark.parametrize("name", ALL)
def test_decoded_size_is_limited(name, scene_odd):
    data = _codec(name).encode(scene_odd, 30)
    small = _codec(name, max_pixels=97 * 131 - 1)
    with pytest.raises(BitstreamError, match="max_pixels"):
        small.decode(data)
    assert _codec(name, max_pixels=97 * 131).decode(data).size == (97, 131)


# ------------------------------------------------------------------------------------------
# unavailable codecs
# ------------------------------------------------------------------------------------------

def test_missing_vvc_tools_say_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    monkeypatch.delenv("ICM_VVENC", raising=False)
    monkeypatch.delenv("ICM_VVDEC", raising=False)
    with pytest.raises(CodecUnavailableError) as err:
        get_codec("vvc")
    msg = str(err.value)
    assert isinstance(err.value, ICMError)
    for needle in ("vvencapp", "PATH", "github.com/fraunhoferhhi/vvenc", "ICM_VVENC"):
        assert needle in msg
    missing = tmp_path / "nowhere" / "vvencapp"
    monkeypatch.setenv("ICM_VVENC", str(missing))
    with pytest.raises(CodecUnavailableError, match="ICM_VVENC.*nowhere"):
        get_codec("vvc")
    with pytest.raises(CodecUnavailableError, match="argument.*nowhere"):
        get_codec("vvc", encoder=missing)
    assert "vvc" not in codecs.available_codecs()


def test_missing_avif_and_heif_libraries_say_what_to_install(monkeypatch):
    monkeypatch.setattr(codecs.features, "check", lambda feature: False)
    with pytest.raises(CodecUnavailableError, match="pip install -U pillow"):
        get_codec("avif")
    pillow_heif = pytest.importorskip("pillow_heif")
    monkeypatch.setattr(pillow_heif, "libheif_info", lambda: {"HEIF": "", "AVIF": ""})
    with pytest.raises(CodecUnavailableError, match="no x265"):
        get_codec("hevc")
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # import fails
    with pytest.raises(CodecUnavailableError, match="pip install pillow-heif"):
        get_codec("hevc")
    assert codecs.available_codecs()[:2] == ["jpeg", "webp"]
    assert "avif" not in codecs.available_codecs() and "hevc" not in codecs.available_codecs()


# ------------------------------------------------------------------------------------------
# the VVC pipeline without VVC: colour conversion and stand-in tools
# ------------------------------------------------------------------------------------------

def test_rgb_to_yuv420_follows_bt601_full_range():
    colours = [(0, 0, 0), (255, 255, 255), (255, 0, 0), (0, 255, 0), (0, 0, 255), (37, 142, 201)]
    for r, g, b in colours:
        img = np.tile(np.array([r, g, b], np.uint8), (2, 2, 1))
        y, cb, cr = rgb_to_yuv420(img)
        ref_y = 0.299 * r + 0.587 * g + 0.114 * b  # JFIF / BT.601 full range
        ref_cb, ref_cr = 128 + (b - ref_y) / 1.772, 128 + (r - ref_y) / 1.402
        assert y.shape == (2, 2) and cb.shape == cr.shape == (1, 1)
        assert abs(int(y[0, 0]) - ref_y) <= 0.5
        assert abs(int(cb[0, 0]) - min(ref_cb, 255)) <= 0.5
        assert abs(int(cr[0, 0]) - min(ref_cr, 255)) <= 0.5
        back = yuv420_to_rgb(y, cb, cr)
        assert np.abs(back.astype(int) - img).max() <= 2


def test_yuv420_round_trip_is_close_and_10_bit_matches_8_bit(scene256):
    rgb = np.asarray(scene256)
    y, cb, cr = rgb_to_yuv420(rgb)
    back = yuv420_to_rgb(y, cb, cr)
    assert back.shape == rgb.shape and back.dtype == np.uint8
    # luma is kept: compare the luma of both (independent formula)
    w = np.array([0.299, 0.587, 0.114])
    assert np.abs(back @ w - rgb @ w).max() < 3
    # inside flat 8x8 blocks only rounding is lost (bilinear chroma mixes at the block edges)
    flat = np.asarray(scene256.resize((32, 32), Image.Resampling.BOX)).repeat(8, 0).repeat(8, 1)
    err = np.abs(yuv420_to_rgb(*rgb_to_yuv420(flat)).astype(int) - flat).reshape(32, 8, 32, 8, 3)
    assert err[:, 2:6, :, 2:6].max() <= 2
    ten = yuv420_to_rgb(*(p.astype(np.uint16) * 4 for p in (y, cb, cr)), bit_depth=10)
    assert np.array_equal(ten, back)
    with pytest.raises(ConfigError, match="even"):
        rgb_to_yuv420(rgb[:5])


_FAKE = """\
#!{python}
# stand-in for vvencapp / vvdecapp: {mode}
import sys
import numpy as np
args = sys.argv[1:]
opt = lambda *names: next(args[args.index(n) + 1] for n in names if n in args)
mode = "{mode}"
if mode == "fail":
    sys.stderr.write("boom: the tool broke\\n")
    sys.exit(3)
if mode == "silent":
    sys.exit(0)
if mode == "huge":
    open(opt("-o"), "wb").write(b"YUV4MPEG2 W60000 H60000 F25:1 C420p10\\nFRAME\\n")
    sys.exit(0)
if mode == "enc":  # "bitstream" = a start code, then the raw YUV with its size in front
    w, h = opt("-s").split("x")
    open(opt("-o"), "wb").write(b"\\0\\0\\0\\1" + f"{{w}} {{h}}\\n".encode()
                                + open(opt("-i"), "rb").read())
    sys.exit(0)
data = open(opt("-b"), "rb").read()[4:]
size, yuv = data.split(b"\\n", 1)
w, h = map(int, size.split())
if mode == "dec10":
    yuv, colour = (np.frombuffer(yuv, np.uint8).astype("<u2") * 4).tobytes(), "C420p10"
else:
    colour = "C420jpeg"
open(opt("-o"), "wb").write(f"YUV4MPEG2 W{{w}} H{{h}} F25:1 {{colour}}\\nFRAME\\n".encode() + yuv)
"""


def _fake_tool(tmp_path, mode: str) -> str:
    path = tmp_path / f"fake-{mode}"
    path.write_text(textwrap.dedent(_FAKE.format(python=sys.executable, mode=mode)))
    path.chmod(0o755)
    return str(path)


posix_only = pytest.mark.skipif(os.name != "posix", reason="stand-in tools are POSIX scripts")


@posix_only
@pytest.mark.parametrize("decoder", ["dec", "dec10"])
def test_vvc_plumbing_pads_crops_and_converts(tmp_path, scene_odd, decoder):
    codec = get_codec("vvc", encoder=_fake_tool(tmp_path, "enc"),
                      decoder=_fake_tool(tmp_path, decoder))
    data = codec.encode(scene_odd, codec.qualities[0])
    assert data[0] == 0b11 and data[5:].startswith(b"98 132\n")  # padded to even, crop both
    assert len(data) == 5 + len(b"98 132\n") + 98 * 132 * 3 // 2
    out = codec.decode(data)
    assert out.size == scene_odd.size and out.mode == "RGB"
    assert psnr(out, scene_odd) > 30  # only the 4:2:0 conversion in between
    with pytest.raises(BitstreamError, match="crop byte"):
        codec.decode(b"\x07" + data[1:])


@posix_only
def test_vvc_tool_failures_become_icm_errors(tmp_path):
    img = Image.new("RGB", (8, 8), (10, 200, 30))
    failing = get_codec("vvc", encoder=_fake_tool(tmp_path, "fail"),
                        decoder=_fake_tool(tmp_path, "fail"))
    with pytest.raises(CodecError, match="exited with 3.*boom: the tool broke"):
        failing.encode(img, 30)
    with pytest.raises(BitstreamError, match="exited with 3.*boom"):
        failing.decode(b"\x00abc")
    silent = get_codec("vvc", encoder=_fake_tool(tmp_path, "silent"),
                       decoder=_fake_tool(tmp_path, "silent"))
    with pytest.raises(CodecError, match="no bitstream"):
        silent.encode(img, 30)
    with pytest.raises(BitstreamError, match="no picture"):
        silent.decode(b"\x00abc")
    huge = get_codec("vvc", encoder=_fake_tool(tmp_path, "enc"),
                     decoder=_fake_tool(tmp_path, "huge"))
    with pytest.raises(BitstreamError, match="60000x60000.*max_pixels"):
        huge.decode(b"\x00abc")


def test_vvc_quality_is_63_minus_qp():
    assert codecs.VVCCodec.qualities == tuple(63 - qp for qp in (51, 46, 41, 36, 31, 26, 21))
    assert codecs.VVCCodec.qp(42) == 21 and codecs.VVCCodec.qp(12) == 51
    # the small ladder: QP 51..31, the lowest rates of the full ladder
    assert codecs.SMALL_LADDERS["vvc"] == tuple(63 - qp for qp in (51, 46, 41, 36, 31))
    assert set(codecs.SMALL_LADDERS["vvc"]) <= set(codecs.VVCCodec.qualities)


@posix_only
def test_vvc_records_the_encoder_command_it_runs(tmp_path, scene_odd, monkeypatch):
    enc = _fake_tool(tmp_path, "enc")
    codec = get_codec("vvc", encoder=enc, decoder=_fake_tool(tmp_path, "dec"), preset="fast")
    cmd = codec.encoder_command(12, scene_odd.size)
    assert cmd[0] == enc and cmd[cmd.index("-s") + 1] == "98x132"  # padded to even
    assert cmd[cmd.index("-q") + 1] == "51" and cmd[cmd.index("--preset") + 1] == "fast"
    assert cmd[cmd.index("--intraperiod") + 1] == "1"  # all-intra
    ran = []
    run = codec._run
    monkeypatch.setattr(codec, "_run", lambda args, *a: (ran.append(args), run(args, *a)))
    point = code_at_scale(codec, scene_odd, 12)
    args = ran[0]
    assert args[:args.index("-i") + 1] == cmd[:cmd.index("-i") + 1]
    assert args[args.index("-i") + 2:args.index("-o")] == cmd[cmd.index("-i") + 2:cmd.index("-o")]
    assert point.encoder_command == tuple(cmd)
    assert point.payload_bytes == point.file_bytes - 1  # the crop byte is not counted
    # the stand-in answers no --version: said so, not a crash
    assert codec.version.startswith("unknown (fake-enc --version exited with")


def test_vvc_version_names_the_encoder():
    codec = _codec("vvc")
    assert re.search(r"vvencapp version \d+\.\d+", codec.version), codec.version


# ------------------------------------------------------------------------------------------
# the registry: one registration per codec
# ------------------------------------------------------------------------------------------

def test_every_codec_is_registered_once_with_its_ladders():
    assert list(codecs.CODECS) == ALL
    assert list(codecs.DEFAULT_CODECS) == ALL  # vvc included: run wherever its apps are
    assert compare.DEFAULT_CODECS == codecs.DEFAULT_CODECS
    for name, entry in codecs.CODECS.items():
        small = codecs.SMALL_LADDERS[name]
        assert compare.SMALL_LADDERS[name] == small == entry.small_ladder
        assert list(small) == sorted(set(small)) and len(small) >= 4
        cls = codecs.VVCCodec if name == "vvc" else None
        codec = cls if cls is not None else _codec(name)
        lo, hi = codec.quality_range
        assert all(lo <= q <= hi for q in small), name
        assert small[0] == codec.qualities[0], name  # reaches the codec's lowest rate
    help_text = codecs.codecs_help()
    assert "default: jpeg,webp,avif,hevc,vvc where available" in help_text
    assert "ICM_VVENC" in help_text


def test_a_new_codec_is_one_registration(monkeypatch):
    monkeypatch.setattr(codecs, "CODECS", dict(codecs.CODECS))
    monkeypatch.setattr(codecs._payload, "_EXTRACTORS", dict(codecs._payload._EXTRACTORS))
    saved = dict(codecs._SMALL)
    try:
        codecs.register_codec("grey", lambda **o: codecs.get_codec("jpeg", **o),
                              small_ladder=(5, 50), default=False, summary="test",
                              payload=lambda data: data[2:])
        assert "grey" in codecs.available_codecs() and "grey" not in codecs.DEFAULT_CODECS
        assert compare.SMALL_LADDERS["grey"] == (5, 50)  # the live view
        assert "grey: test" in codecs.codecs_help()
        codec = codecs.get_codec("grey")
        point = code_at_scale(_Named(codec, "grey"), Image.new("RGB", (16, 16)), 50)
        assert point.payload_bytes == point.file_bytes - 2
        for bad in [dict(small_ladder=(50, 5)), dict(small_ladder=()),
                    dict(small_ladder=(1.5, 2))]:
            with pytest.raises(ConfigError, match="small_ladder"):
                codecs.register_codec("bad", get_codec, payload=bytes, **bad)
        with pytest.raises(ConfigError, match="no payload extractor"):
            codecs.register_codec("bad", get_codec, small_ladder=(1, 2))
        with pytest.raises(ConfigError, match="name"):
            codecs.register_codec("a b", get_codec, small_ladder=(1, 2), payload=bytes)
    finally:
        codecs._SMALL.clear()
        codecs._SMALL.update(saved)


class _Named:
    """A codec under another name, as a plug-in codec would be."""

    def __init__(self, codec, name):
        self.codec, self.name = codec, name

    def encode(self, image, quality):
        return self.codec.encode(image, quality)

    def decode(self, data):
        return self.codec.decode(data)


@posix_only
def test_vvc_is_in_the_default_set_when_its_apps_are_found(tmp_path, monkeypatch):
    monkeypatch.setenv("ICM_VVENC", _fake_tool(tmp_path, "enc"))
    monkeypatch.setenv("ICM_VVDEC", _fake_tool(tmp_path, "dec"))
    assert "vvc" in codecs.available_codecs()
    assert [c for c in codecs.DEFAULT_CODECS if c in codecs.available_codecs()][-1] == "vvc"


def test_cli_help_lists_the_registered_codecs(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default: jpeg,webp,avif,hevc,vvc where available" in text
    assert all(f"{name}:" in text for name in codecs.CODECS)
