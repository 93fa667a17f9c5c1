"""Classical image codecs and a resolution ladder: the "Codec + Baseline" anchors.

Every codec is an object with ``name``, ``chroma``, ``qualities`` (its quality ladder, lowest
rate first), ``encode(PIL.Image, quality) -> bytes`` and ``decode(bytes) -> PIL.Image``. The
bytes are the real file, so ``bpp(data, image) = 8 * len(data) / (W * H)`` of the ORIGINAL
image counts every header. "quality" always increases with the number of bits.

================  ======================  =======  =========================================
name              library                 chroma   quality
================  ======================  =======  =========================================
``jpeg``          Pillow (libjpeg)        4:2:0    Pillow quality 1..95, Huffman optimized
``webp``          Pillow (libwebp)        4:2:0    Pillow quality 0..95, ``method=6``
``avif``          Pillow (libavif, AV1)   4:2:0    Pillow quality 0..90, ``speed=6``
``hevc``          pillow-heif (x265)      4:2:0    pillow-heif quality 0..70, HEIF file
``vvc``           VVenC / VVdeC apps      4:2:0    ``63 - QP``: QP 51..21 -> quality 12..42
================  ======================  =======  =========================================

Each codec is registered once with :func:`register_codec`: its factory, its small ladder
(``ladder="small"`` in ``icm compare``; the full ladder is the codec's ``qualities``), whether it
is in the default comparison set, and (if ``payload.py`` has none) its payload extractor.
:func:`get_codec`, :func:`available_codecs`, :data:`DEFAULT_CODECS`, :data:`SMALL_LADDERS` and
the CLI's help all read that registry; a new codec is one class plus one ``register_codec``.
Every codec object also says how it encodes (:meth:`Codec.encoder_command`, :attr:`Codec.version`)
so results can record it; for VVC that is the ``vvencapp`` argv as run.

All images are single intra pictures in 8-bit BT.601 full-range YCbCr (JFIF), the libraries'
default; ``jpeg``, ``avif`` and ``hevc`` also take ``chroma="4:4:4"``. Decoding treats its
input as untrusted: a stream a library rejects raises ``BitstreamError`` (never a library
traceback), and a picture over ``max_pixels`` is refused before its pixels are allocated
(VVC: before they are read back from the external decoder's output).

VVC runs VVenC's ``vvencapp`` in its all-intra configuration (``--intraperiod 1``, one frame,
constant QP with ``--qpa 0``, no HRD, ``--preset medium`` and one thread by default; it codes at
10 bits internally) and VVdeC's ``vvdecapp``. They are found on ``PATH`` or
through ``ICM_VVENC`` / ``ICM_VVDEC`` (paths to the executables) or ``get_codec("vvc",
encoder=..., decoder=...)``. The stored bytes are one crop byte (bit 1: drop the last column,
bit 0: drop the last row; VVC 4:2:0 needs even sizes, so odd ones are padded by repeating the
edge) followed by the raw ``.266`` stream; VVenC pads to its CU size itself and signals the
crop in the stream. The colour conversion (RGB <-> YCbCr 4:2:0: 2x2 box average down,
bilinear up, chroma sited at the centre of each 2x2 block) is :func:`rgb_to_yuv420` /
:func:`yuv420_to_rgb`; it is not signalled in the stream, only this module decodes it.

The resolution ladder (:func:`code_at_scale`) downscales with Pillow's LANCZOS, codes, decodes
and upscales back to the original size with BICUBIC; bits are still counted over the original
pixels, two ways (:data:`~icm_core.baselines.payload.RATES`): ``file`` (every stored byte) and
``payload`` (the coded bitstream without container or metadata, :mod:`.payload`).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import struct
import subprocess
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType

import numpy as np
import PIL
from PIL import Image, features

from icm_core.baselines import payload as _payload
from icm_core.errors import BitstreamError, ConfigError, ICMError

MAX_PIXELS = 8192 * 8192
"""Default largest picture (width * height) that ``decode`` accepts: a corrupt or hostile
header cannot make it allocate more."""

SCALES = (1.0, 0.5, 0.25)
"""Default resolution ladder: full, half and quarter size per side."""


class CodecUnavailableError(ICMError, RuntimeError):
    """The codec's library or executable is not installed here; the message says how to get it."""


class CodecError(ICMError, RuntimeError):
    """An encoder or decoder program failed on input that should have worked."""


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def bpp(data: bytes, image: Image.Image | tuple[int, int]) -> float:
    """Bits per pixel of ``data`` over the pixels of the ORIGINAL ``image`` (or its (W, H))."""
    w, h = image.size if isinstance(image, Image.Image) else image
    return 8.0 * len(data) / (int(w) * int(h))


def _as_rgb(image: Image.Image) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise ConfigError(f"image must be a PIL.Image.Image, got {type(image).__name__}; "
                          "convert arrays with PIL.Image.fromarray(uint8 HxWx3)")
    if image.width < 1 or image.height < 1:
        raise ConfigError(f"image size {image.size} is empty; give at least 1x1 pixels")
    return image if image.mode == "RGB" else image.convert("RGB")


def _check_pixels(size: tuple[int, int], max_pixels: int, what: str) -> None:
    w, h = size
    if w < 1 or h < 1 or w * h > max_pixels:
        raise BitstreamError(f"{what} declares a {w}x{h} picture; refusing sizes over "
                             f"max_pixels={max_pixels} (raise max_pixels if it is genuine)")


_CHROMA = {"4:2:0": "4:2:0", "420": "4:2:0", "4:4:4": "4:4:4", "444": "4:4:4"}


def _chroma(value: str, allowed: Sequence[str], codec: str) -> str:
    c = _CHROMA.get(str(value))
    if c not in allowed:
        raise ConfigError(f"chroma={value!r} is not supported by codec {codec!r}; "
                          f"use one of {list(allowed)}")
    return c


# --------------------------------------------------------------------------------------------
# the codec contract
# --------------------------------------------------------------------------------------------

class Codec(ABC):
    """One classical codec: a quality ladder, ``encode`` and ``decode`` of real files."""

    name: str
    chroma: str
    qualities: tuple[int, ...]
    quality_range: tuple[int, int]
    max_pixels: int

    def check_quality(self, quality: int) -> int:
        lo, hi = self.quality_range
        if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) \
                or not lo <= quality <= hi:
            raise ConfigError(f"quality={quality!r} is out of range for codec {self.name!r}; "
                              f"use an integer in [{lo}, {hi}] (ladder: {list(self.qualities)})")
        return int(quality)

    @abstractmethod
    def encode(self, image: Image.Image, quality: int) -> bytes:
        """Code ``image`` (converted to RGB) at ``quality``; return the file's bytes."""

    @abstractmethod
    def decode(self, data: bytes) -> Image.Image:
        """Decode bytes from ``encode`` to an RGB image; bad bytes raise ``BitstreamError``."""

    @property
    def version(self) -> str:
        """The encoder and its version, for results files (override it; this is a fallback)."""
        return f"{type(self).__name__} (version unknown)"

    def encoder_command(self, quality: int, size: tuple[int, int]) -> list[str]:
        """How ``encode`` codes a ``size`` = (W, H) image at ``quality``: an external tool's argv
        as run (with placeholder file names), or the library call and its options."""
        return [f"{type(self).__name__}.encode", f"quality={self.check_quality(quality)}",
                f"size={int(size[0])}x{int(size[1])}"]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, chroma={self.chroma!r})"


# Pillow raises these on streams it cannot parse (DecompressionBombError is a bare Exception).
_PIL_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error,
               Image.DecompressionBombError)


class PillowCodec(Codec):
    """JPEG, WebP or AVIF through Pillow's own plugins."""

    def __init__(self, name: str, fmt: str, qualities: Sequence[int], quality_range: tuple[int, int],
                 chroma: str, save_options: dict, max_pixels: int = MAX_PIXELS):
        self.name, self.format, self.chroma = name, fmt, chroma
        self.qualities, self.quality_range = tuple(qualities), quality_range
        self.save_options, self.max_pixels = dict(save_options), int(max_pixels)

    def encode(self, image: Image.Image, quality: int) -> bytes:
        buf = io.BytesIO()
        _as_rgb(image).save(buf, format=self.format, quality=self.check_quality(quality),
                            **self.save_options)
        return buf.getvalue()

    @property
    def version(self) -> str:
        lib = {"JPEG": "jpg", "WEBP": "webp", "AVIF": "avif"}.get(self.format)
        lib_version = features.version(lib) if lib else None
        return f"Pillow {PIL.__version__}" + (f", {lib} {lib_version}" if lib_version else "")

    def encoder_command(self, quality: int, size: tuple[int, int]) -> list[str]:
        return ["PIL.Image.Image.save", f"format={self.format}",
                f"quality={self.check_quality(quality)}",
                *(f"{k}={v}" for k, v in self.save_options.items())]

    def decode(self, data: bytes) -> Image.Image:
        what = f"{self.name} stream of {len(data)} bytes"
        try:
            with Image.open(io.BytesIO(bytes(data)), formats=[self.format]) as im:
                _check_pixels(im.size, self.max_pixels, what)  # header only: nothing decoded yet
                im.load()
                return im.convert("RGB")
        except BitstreamError:
            raise
        except _PIL_ERRORS as e:
            raise BitstreamError(f"{what} cannot be decoded as {self.format}: {e}") from e


class HEVCCodec(Codec):
    """HEVC intra (x265) in a HEIF file through pillow-heif; decoded by libde265."""

    name = "hevc"
    qualities = (0, 10, 20, 30, 40, 50, 60, 70)
    quality_range = (0, 100)

    def __init__(self, chroma: str = "4:2:0", max_pixels: int = MAX_PIXELS):
        try:
            import pillow_heif
        except ImportError as e:
            raise CodecUnavailableError(
                "codec 'hevc' needs pillow-heif (HEIF with the x265 encoder): "
                "pip install pillow-heif") from e
        if not pillow_heif.libheif_info().get("HEIF"):  # names the HEVC encoder, "" if none
            raise CodecUnavailableError(
                "codec 'hevc': this pillow-heif has no x265 encoder; install the PyPI wheel "
                "(pip install --force-reinstall pillow-heif), which bundles x265")
        self._heif = pillow_heif
        self.chroma = _chroma(chroma, ("4:2:0", "4:4:4"), self.name)
        self.max_pixels = int(max_pixels)

    def encode(self, image: Image.Image, quality: int) -> bytes:
        buf = io.BytesIO()
        self._heif.from_pillow(_as_rgb(image)).save(
            buf, format="HEIF", quality=self.check_quality(quality),
            chroma=self.chroma.replace(":", ""))
        return buf.getvalue()

    @property
    def version(self) -> str:
        info = self._heif.libheif_info()
        return (f"pillow-heif {self._heif.__version__}, libheif {info.get('libheif', '?')}, "
                f"{info.get('HEIF', '?')}")

    def encoder_command(self, quality: int, size: tuple[int, int]) -> list[str]:
        return ["pillow_heif.from_pillow(image).save", "format=HEIF",
                f"quality={self.check_quality(quality)}", f"chroma={self.chroma.replace(':', '')}"]

    def decode(self, data: bytes) -> Image.Image:
        what = f"hevc stream of {len(data)} bytes"
        try:
            heif = self._heif.open_heif(io.BytesIO(bytes(data)), convert_hdr_to_8bit=True)
            _check_pixels(heif.size, self.max_pixels, what)  # from the header, before decoding
            return heif.to_pillow().convert("RGB")
        except BitstreamError:
            raise
        except (*_PIL_ERRORS, RuntimeError) as e:
            raise BitstreamError(f"{what} cannot be decoded as HEIF/HEVC: {e}") from e


# --------------------------------------------------------------------------------------------
# VVC through the VVenC / VVdeC command-line tools
# --------------------------------------------------------------------------------------------

# BT.601 full range (JFIF): [Y, Cb, Cr] = M @ [R, G, B] + [0, 128, 128]
_RGB2YCC = np.array([[0.299, 0.587, 0.114],
                     [-0.168736, -0.331264, 0.5],
                     [0.5, -0.418688, -0.081312]])
_YCC2RGB = np.linalg.inv(_RGB2YCC)
_OFFSET = np.array([0.0, 128.0, 128.0])


def rgb_to_yuv420(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 (H, W, 3) RGB, H and W even -> uint8 planes Y (H, W), Cb and Cr (H/2, W/2).

    BT.601 full range; chroma is the mean of each 2x2 block (sited at the block's centre).
    """
    h, w, _ = rgb.shape
    if h % 2 or w % 2:
        raise ConfigError(f"4:2:0 needs an even size, got {w}x{h}; pad the image first")
    ycc = rgb.astype(np.float64) @ _RGB2YCC.T + _OFFSET
    sub = ycc[..., 1:].reshape(h // 2, 2, w // 2, 2, 2).mean(axis=(1, 3))

    def q(a: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return q(ycc[..., 0]), q(sub[..., 0]), q(sub[..., 1])


def yuv420_to_rgb(y: np.ndarray, cb: np.ndarray, cr: np.ndarray, bit_depth: int = 8) -> np.ndarray:
    """Planes of ``bit_depth`` bits (as :func:`rgb_to_yuv420` makes) -> uint8 (H, W, 3) RGB.

    Chroma is upsampled bilinearly with the same centre siting; 10-bit samples are divided by 4,
    the inverse of the codec's 8 -> 10 bit shift.
    """
    scale = 2.0 ** (bit_depth - 8)
    h, w = y.shape

    def up(c: np.ndarray) -> np.ndarray:
        plane = Image.fromarray(c.astype(np.float32) / np.float32(scale))  # mode "F"
        return np.asarray(plane.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float64)
    ycc = np.stack([y.astype(np.float64) / scale, up(cb), up(cr)], axis=-1) - _OFFSET
    return np.clip(np.rint(ycc @ _YCC2RGB.T), 0, 255).astype(np.uint8)


def _read_y4m(path: Path, max_pixels: int, what: str,
              crop: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, ...]:
    """First frame of a 4:2:0 Y4M file (8 bit, or 10 bit in 16-bit little-endian words).

    The size check applies to the picture after ``crop`` (columns, rows) is removed.
    """
    with open(path, "rb") as f:
        header = f.readline(256)
        if not header.startswith(b"YUV4MPEG2 ") or not header.endswith(b"\n"):
            raise BitstreamError(f"{what}: the VVC decoder produced no picture")
        tags = {t[:1]: t[1:] for t in header.split()[1:]}
        try:
            w, h = int(tags[b"W"]), int(tags[b"H"])
        except (KeyError, ValueError) as e:
            raise BitstreamError(f"{what}: decoder output has no size ({header!r})") from e
        if w <= crop[0] or h <= crop[1]:
            raise BitstreamError(f"{what}: crop {crop} removes the whole {w}x{h} picture")
        _check_pixels((w - crop[0], h - crop[1]), max_pixels, what)
        colour = tags.get(b"C", b"420jpeg")
        if colour in (b"420", b"420jpeg", b"420paldv", b"420mpeg2"):
            dtype, depth = np.dtype(np.uint8), 8
        elif colour == b"420p10":
            dtype, depth = np.dtype("<u2"), 10
        else:
            raise BitstreamError(f"{what}: decoded to C{colour.decode(errors='replace')}; "
                                 "only 4:2:0 at 8 or 10 bits is supported")
        if not f.readline(256).startswith(b"FRAME"):
            raise BitstreamError(f"{what}: decoder output has no frame")
        n = w * h + 2 * ((w + 1) // 2) * ((h + 1) // 2)
        buf = np.frombuffer(f.read(n * dtype.itemsize), dtype=dtype)
    if buf.size != n:
        raise BitstreamError(f"{what}: decoder output is truncated")
    cw, ch = (w + 1) // 2, (h + 1) // 2
    y = buf[: w * h].reshape(h, w)
    cb = buf[w * h: w * h + cw * ch].reshape(ch, cw)
    cr = buf[w * h + cw * ch:].reshape(ch, cw)
    return y, cb, cr, depth


_VVC_HELP = ("build VVenC and VVdeC from https://github.com/fraunhoferhhi/vvenc and "
             "https://github.com/fraunhoferhhi/vvdec (cmake -S . -B build "
             "-DCMAKE_BUILD_TYPE=Release && cmake --build build; the apps land in "
             "bin/release-static/) and put vvencapp/vvdecapp on PATH, or set ICM_VVENC and "
             "ICM_VVDEC to their paths")


def _find_tool(given: str | os.PathLike | None, env: str, default: str) -> str:
    """An explicit path, else $env, else ``default`` on PATH; CodecUnavailableError if none."""
    source, value = ("argument", given) if given else (f"${env}", os.environ.get(env))
    if value:
        found = shutil.which(str(value))
        if found is None:
            raise CodecUnavailableError(
                f"codec 'vvc': {source} points at {str(value)!r}, which is not an executable "
                f"file; {_VVC_HELP}")
        return found
    found = shutil.which(default)
    if found is None:
        raise CodecUnavailableError(f"codec 'vvc': {default} is not on PATH; {_VVC_HELP}")
    return found


def _tail(text: bytes | str, n: int = 600) -> str:
    s = text.decode(errors="replace") if isinstance(text, bytes) else text
    return s.strip()[-n:]


class VVCCodec(Codec):
    """VVC intra (H.266) with VVenC's ``vvencapp`` and VVdeC's ``vvdecapp``, YCbCr 4:2:0.

    ``quality = 63 - QP`` so that quality grows with bits (VVenC's QP range is 0..63); the
    ladder is QP 51, 46, 41, 36, 31, 26, 21 (its lowest five, QP 51..31, are the small ladder:
    they cover the learned codec's 0.01-0.1 bpp at every scale). ``preset`` is VVenC's speed
    preset ("faster" is ~10x quicker than "medium" for ~5-8 % more bytes at the same QP);
    ``threads=1`` keeps runs reproducible and polite on shared machines.

    :meth:`encoder_command` is the ``vvencapp`` argv as :meth:`encode` runs it (the tool's
    full path; ``in.yuv`` / ``out.266`` stand for the temporary files) and :attr:`version`
    what ``vvencapp --version`` prints, so that results can record both.
    """

    name = "vvc"
    chroma = "4:2:0"
    QPS = (51, 46, 41, 36, 31, 26, 21)
    qualities = tuple(63 - qp for qp in QPS)
    quality_range = (0, 63)
    PRESETS = ("faster", "fast", "medium", "slow", "slower")

    def __init__(self, encoder: str | os.PathLike | None = None,
                 decoder: str | os.PathLike | None = None, preset: str = "medium",
                 threads: int = 1, timeout: float = 600.0, max_pixels: int = MAX_PIXELS,
                 chroma: str = "4:2:0"):
        _chroma(chroma, ("4:2:0",), self.name)  # VVenC reads 4:2:0 (or grey) input only
        self.encoder = _find_tool(encoder, "ICM_VVENC", "vvencapp")
        self.decoder = _find_tool(decoder, "ICM_VVDEC", "vvdecapp")
        if preset not in self.PRESETS:
            raise ConfigError(f"preset={preset!r} is not a VVenC preset; use one of "
                              f"{list(self.PRESETS)}")
        if int(threads) < 1:
            raise ConfigError(f"threads={threads!r} must be at least 1")
        self.preset, self.threads, self.timeout = preset, int(threads), float(timeout)
        self.max_pixels = int(max_pixels)

    @staticmethod
    def qp(quality: int) -> int:
        """The VVC quantization parameter of a quality value."""
        return 63 - int(quality)

    def _run(self, args: list[str], error: type[ICMError], what: str) -> None:
        try:
            res = subprocess.run(args, capture_output=True, timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired as e:
            raise error(f"{what}: {Path(args[0]).name} ran over {self.timeout:.0f} s") from e
        except OSError as e:
            raise CodecUnavailableError(f"codec 'vvc': cannot run {args[0]}: {e}; "
                                        f"{_VVC_HELP}") from e
        if res.returncode != 0:
            raise error(f"{what}: {Path(args[0]).name} exited with {res.returncode}: "
                        f"{_tail(res.stderr + res.stdout)}")

    @cached_property
    def version(self) -> str:
        """``vvencapp --version``'s answer, e.g. "vvencapp version 1.13.1" (asked once), or
        "unknown (...)" with the reason when the tool gives none."""
        try:
            res = subprocess.run([self.encoder, "--version"], capture_output=True,
                                 timeout=min(self.timeout, 30.0), check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"unknown ({Path(self.encoder).name} --version: {e})"
        text = (res.stdout + res.stderr).decode(errors="replace")
        found = re.search(r"^.*version\s+\S+.*$", text, re.MULTILINE | re.IGNORECASE)
        if res.returncode != 0 or found is None:
            return (f"unknown ({Path(self.encoder).name} --version exited with "
                    f"{res.returncode}: {_tail(text, 120)!r})")
        return found.group(0).strip()

    def encoder_command(self, quality: int, size: tuple[int, int], src: str = "in.yuv",
                        out: str = "out.266") -> list[str]:
        """The ``vvencapp`` argv that codes a (W, H) image at ``quality`` (odd sizes are padded
        to even first, as :meth:`encode` does)."""
        qp = self.qp(self.check_quality(quality))
        w, h = int(size[0]) + int(size[0]) % 2, int(size[1]) + int(size[1]) % 2
        return [self.encoder, "-i", str(src), "-s", f"{w}x{h}", "-c", "yuv420", "-f", "1",
                "--preset", self.preset, "-q", str(qp), "--qpa", "0", "--intraperiod", "1",
                "--hrdparameterspresent", "0", "--threads", str(self.threads),
                "--verbosity", "1", "--stats", "0", "-o", str(out)]

    def encode(self, image: Image.Image, quality: int) -> bytes:
        qp = self.qp(self.check_quality(quality))
        rgb = np.asarray(_as_rgb(image))
        h, w = rgb.shape[:2]
        pw, ph = w % 2, h % 2
        rgb = np.pad(rgb, ((0, ph), (0, pw), (0, 0)), mode="edge")
        with tempfile.TemporaryDirectory(prefix="icm-vvc-") as tmp:
            src, out = Path(tmp) / "in.yuv", Path(tmp) / "out.266"
            with open(src, "wb") as f:
                for plane in rgb_to_yuv420(rgb):
                    f.write(plane.tobytes())
            self._run(self.encoder_command(quality, (w, h), str(src), str(out)),
                      CodecError, f"VVC encoding of a {w}x{h} image at QP {qp}")
            stream = out.read_bytes() if out.exists() else b""
        if not stream:
            raise CodecError(f"VVC encoding of a {w}x{h} image at QP {qp}: "
                             f"{self.encoder} wrote no bitstream")
        return bytes([(pw << 1) | ph]) + stream

    def decode(self, data: bytes) -> Image.Image:
        data = bytes(data)
        what = f"vvc stream of {len(data)} bytes"
        if len(data) < 2 or data[0] > 3:
            raise BitstreamError(f"{what} is not from VVCCodec.encode: it must start with a "
                                 "crop byte 0..3 followed by a .266 stream")
        crop_w, crop_h = data[0] >> 1, data[0] & 1
        with tempfile.TemporaryDirectory(prefix="icm-vvc-") as tmp:
            src, out = Path(tmp) / "in.266", Path(tmp) / "out.y4m"
            src.write_bytes(data[1:])
            self._run([self.decoder, "-b", str(src), "-o", str(out), "--threads",
                       str(self.threads), "--verbosity", "1"], BitstreamError, what)
            if not out.exists():
                raise BitstreamError(f"{what}: the VVC decoder produced no picture")
            y, cb, cr, depth = _read_y4m(out, self.max_pixels, what, (crop_w, crop_h))
        rgb = yuv420_to_rgb(y, cb, cr, depth)
        h, w = rgb.shape[:2]
        return Image.fromarray(np.ascontiguousarray(rgb[: h - crop_h, : w - crop_w]))


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------

def _jpeg(chroma: str = "4:2:0", max_pixels: int = MAX_PIXELS) -> Codec:
    c = _chroma(chroma, ("4:2:0", "4:4:4"), "jpeg")
    return PillowCodec("jpeg", "JPEG", (1, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95),
                       (0, 100), c, {"optimize": True, "subsampling": c}, max_pixels)


def _webp(chroma: str = "4:2:0", max_pixels: int = MAX_PIXELS) -> Codec:
    c = _chroma(chroma, ("4:2:0",), "webp")  # lossy WebP (VP8) is always 4:2:0
    return PillowCodec("webp", "WEBP", (0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95),
                       (0, 100), c, {"method": 6}, max_pixels)


def _avif(chroma: str = "4:2:0", speed: int = 6, max_pixels: int = MAX_PIXELS) -> Codec:
    if not features.check("avif"):
        raise CodecUnavailableError(
            "codec 'avif': this Pillow has no AVIF support (PIL.features.check('avif') is "
            "False); upgrade it from PyPI (pip install -U pillow), whose recent wheels bundle "
            "libavif")
    c = _chroma(chroma, ("4:2:0", "4:4:4"), "avif")
    return PillowCodec("avif", "AVIF", (0, 10, 20, 30, 40, 50, 60, 70, 80, 90), (0, 100), c,
                       {"subsampling": c, "speed": int(speed), "range": "full"}, max_pixels)


@dataclass(frozen=True)
class CodecEntry:
    """One registered codec: how to build it and which qualities a small comparison codes."""

    name: str
    factory: Callable[..., Codec] = field(repr=False)
    small_ladder: tuple[int, ...]
    default: bool = True
    summary: str = ""

    def __call__(self, **options) -> Codec:
        return self.factory(**options)


CODECS: dict[str, CodecEntry] = {}
"""The codec registry, name -> :class:`CodecEntry` (in registration order); fill it with
:func:`register_codec`."""

_SMALL: dict[str, tuple[int, ...]] = {}
SMALL_LADDERS = MappingProxyType(_SMALL)
"""Live read-only view, codec name -> its registered small ladder (lowest rate first)."""


class _DefaultCodecs(Sequence):
    """Live tuple-like view of the names registered with ``default=True``, in order."""

    def _names(self) -> tuple[str, ...]:
        return tuple(n for n, e in CODECS.items() if e.default)

    def __getitem__(self, i):
        return self._names()[i]

    def __len__(self) -> int:
        return len(self._names())

    def __eq__(self, other) -> bool:
        return tuple(self) == tuple(other) if isinstance(other, Sequence) else NotImplemented

    __hash__ = None

    def __repr__(self) -> str:
        return repr(self._names())


DEFAULT_CODECS: Sequence[str] = _DefaultCodecs()
"""The codecs ``icm compare`` uses when none are named (those available here are run, the
others are skipped and said so): every registered codec with ``default=True``."""


def register_codec(name: str, factory: Callable[..., Codec], *, small_ladder: Sequence[int],
                   default: bool = True, summary: str = "",
                   payload: Callable[[bytes], bytes] | None = None) -> CodecEntry:
    """Register a codec once: ``factory(**options) -> Codec`` (may raise
    ``CodecUnavailableError``), its small ladder (a few qualities, increasing, that cover the
    rates of interest at every scale; the full ladder is the codec's ``qualities``), whether
    ``icm compare`` uses it by default, a one-line summary, and ``payload(file bytes) ->
    bitstream bytes`` unless :mod:`icm_core.baselines.payload` already has one for ``name``.

    Registering a name again replaces its entry (keeping its place in the order).
    """
    key = str(name).strip().lower()
    if not key or not key.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"codec name {name!r} must be a non-empty word, e.g. 'jpegxl'")
    if not callable(factory):
        raise ConfigError(f"codec {key!r}: factory must be callable, got "
                          f"{type(factory).__name__}")
    ladder_ = tuple(small_ladder)
    if (not ladder_ or not all(isinstance(q, int) and not isinstance(q, bool) for q in ladder_)
            or list(ladder_) != sorted(set(ladder_))):
        raise ConfigError(f"codec {key!r}: small_ladder={small_ladder!r} must be distinct "
                          "integer qualities in increasing order (lowest rate first)")
    if payload is not None:
        _payload.register_payload(key, payload)
    elif not _payload.has_payload(key):
        raise ConfigError(f"codec {key!r} has no payload extractor; pass payload=fn "
                          "(file bytes -> coded bitstream bytes) to register_codec")
    entry = CodecEntry(key, factory, ladder_, bool(default), str(summary))
    CODECS[key] = entry
    _SMALL[key] = ladder_
    return entry


def get_codec(name: str, **options) -> Codec:
    """The codec called ``name`` (see :data:`CODECS`); ``options`` go to its constructor.

    Raises ``CodecUnavailableError`` (saying what to install) when its library or tools are
    missing, ``ConfigError`` for an unknown name or option.
    """
    key = str(name).lower()
    if key not in CODECS:
        raise ConfigError(f"codec={name!r} is unknown; use one of {sorted(CODECS)}")
    try:
        return CODECS[key](**options)
    except TypeError as e:
        raise ConfigError(f"codec {key!r} does not take options {sorted(options)}: {e}") from e


def available_codecs() -> list[str]:
    """Names of the registered codecs that can run on this machine, in registration order."""
    names = []
    for name in CODECS:
        try:
            get_codec(name)
        except CodecUnavailableError:
            continue
        names.append(name)
    return names


def codecs_help() -> str:
    """One line for the CLI: the default set, and what each registered codec is."""
    known = "; ".join(f"{n}: {e.summary}" if e.summary else n for n, e in CODECS.items())
    return (f"comma list (default: {','.join(DEFAULT_CODECS)} where available, the others "
            f"skipped and said so). Known: {known}")


register_codec("jpeg", _jpeg, small_ladder=(1, 10, 30, 70), summary="Pillow/libjpeg")
register_codec("webp", _webp, small_ladder=(0, 20, 50, 90), summary="Pillow/libwebp (VP8)")
register_codec("avif", _avif, small_ladder=(0, 30, 60, 90), summary="Pillow/libavif (AV1)")
register_codec("hevc", HEVCCodec, small_ladder=(0, 20, 40, 70),
               summary="pillow-heif/x265 (HEIF)")
register_codec("vvc", VVCCodec, small_ladder=tuple(63 - qp for qp in (51, 46, 41, 36, 31)),
               summary="VVenC/VVdeC all-intra, QP 51..31 (needs vvencapp/vvdecapp on PATH or "
               "ICM_VVENC/ICM_VVDEC)")


# --------------------------------------------------------------------------------------------
# resolution ladder
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CodedImage:
    """One coded point: the file, its rate over the original pixels (counted two ways), the
    reconstruction, and how it was encoded.

    ``bpp`` counts the whole file (rate ``file``); ``payload_bytes`` the coded bitstream only
    (rate ``payload``, :func:`icm_core.baselines.payload.payload_bytes`). ``encoder_command``
    and ``encoder_version`` come from the codec (empty for a codec-like object without them).
    """

    codec: str
    quality: int
    scale: float
    data: bytes = field(repr=False)
    bpp: float
    decoded: Image.Image = field(repr=False)  # RGB, the ORIGINAL size
    payload_bytes: int
    encoder_command: tuple[str, ...] = ()
    encoder_version: str = ""

    @property
    def file_bytes(self) -> int:
        """Every byte of the file (rate ``file``)."""
        return len(self.data)

    @property
    def payload_bpp(self) -> float:
        """``payload_bytes`` over the ORIGINAL image's pixels (rate ``payload``)."""
        return self.bpp * self.payload_bytes / len(self.data)

    def rate_bpp(self, rate: str) -> float:
        """Bits per original pixel counted as ``rate`` ("file" or "payload")."""
        if rate == "file":
            return self.bpp
        if rate == "payload":
            return self.payload_bpp
        raise ConfigError(f"rate={rate!r}; use one of {list(_payload.RATES)}")


def scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """(W, H) coded at ``scale``: rounded, at least 1 pixel per side."""
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not 0 < scale <= 1:
        raise ConfigError(f"scale={scale!r} must be a number in (0, 1], e.g. 1, 0.5, 0.25")
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def code_at_scale(codec: Codec, image: Image.Image, quality: int,
                  scale: float = 1.0) -> CodedImage:
    """Downscale (LANCZOS), code at ``quality``, decode, upscale back (BICUBIC).

    ``bpp`` is over the ORIGINAL image's pixels, and ``decoded`` has the original size. The
    payload is counted for ``codec.name``; the encoder command and version are recorded when the
    codec offers them (wrappers that only have ``name``/``encode``/``decode`` leave them empty).
    """
    image = _as_rgb(image)
    small_size = scaled_size(image.size, scale)
    small = image if small_size == image.size else image.resize(small_size, Image.Resampling.LANCZOS)
    data = codec.encode(small, quality)
    # between encode and decode: outside both of the times a caller may take around them
    payload_bytes = _payload.payload_size(codec.name, data)
    command = getattr(codec, "encoder_command", None)
    command = tuple(command(quality, small_size)) if command else ()
    version = str(getattr(codec, "version", ""))
    decoded = codec.decode(data)
    if decoded.size != small_size:
        raise CodecError(f"codec {codec.name!r} decoded {decoded.size} from a {small_size} image")
    if decoded.size != image.size:
        decoded = decoded.resize(image.size, Image.Resampling.BICUBIC)
    return CodedImage(codec.name, int(quality), float(scale), data, bpp(data, image), decoded,
                      payload_bytes=payload_bytes, encoder_command=command,
                      encoder_version=version)


def ladder(codec: Codec, scales: Sequence[float] = SCALES) -> Iterator[tuple[int, float]]:
    """(quality, scale) points: every quality of ``codec`` at every scale, scale by scale."""
    for s in scales:
        scaled_size((1, 1), s)  # validates
        for q in codec.qualities:
            yield q, float(s)
