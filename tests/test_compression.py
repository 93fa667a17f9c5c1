import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from icm_core import ICMError
from icm_core.cli.main import main
from icm_core.codec import coder
from icm_core.codec.container import MAGIC, BitstreamError, Packet, pack, unpack
from icm_core.models.entropy import DualSpatialEntropyModel, bits_of, checkerboard_masks
from icm_core.models.icm import build_model
from icm_core.training.trainer import Trainer

from .helpers import tiny_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(tiny_config("tasks=[semseg,depth,normals]"))
    return m.eval()


@pytest.fixture(scope="module")
def stream(model):
    return coder.encode(model, torch.rand(1, 3, 64, 80), task="semseg")


@pytest.mark.parametrize("task,size", [("semseg", (64, 64)), ("depth", (97, 130)), ("normals", (128, 72))])
def test_decode_of_encode_equals_the_quantized_forward(model, task, size):
    x = torch.rand(1, 3, *size)
    data = coder.encode(model, x, task=task)
    out = coder.decode(model, data)  # the stream names its task
    with torch.no_grad():
        ref = model(x, task=task)
    assert out.task == task
    s = data.sections  # the container's parts add up to the stream
    assert s.header + s.z + s.step1 + s.step2 == s.total == len(data) == len(bytes(data))
    assert s.header <= 32 and min(s.z, s.step1, s.step2) > 0
    assert torch.equal(out.y_hat, ref.y_hat)
    assert torch.equal(out.prediction, ref.prediction)
    assert out.prediction.shape[-2:] == size


def test_checkerboard_steps_cover_every_element_once():
    m = checkerboard_masks(6, 4, 6)
    assert m.shape == (6, 4, 6)
    assert m.sum() == m.numel() // 2
    # each position: one channel half in step 1, the other in step 2
    assert torch.equal(m[:3].float().mean(0) + m[3:].float().mean(0), torch.ones(4, 6))


def _fitted_entropy_model(M=64, h=28, w=36, steps=150):
    torch.manual_seed(0)
    em = DualSpatialEntropyModel(M, 64)
    g = torch.Generator().manual_seed(1)

    def sample():  # smooth structure + detail: a latent an encoder could produce
        base = torch.randn(1, M, h // 4, w // 4, generator=g) * 6
        return torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear") + torch.randn(
            1, M, h, w, generator=g)

    opt = torch.optim.Adam(em.parameters(), lr=3e-3)
    for _ in range(steps):
        out = em(sample())
        loss = sum(bits_of(v).sum() for v in out.likelihoods.values()) / (M * h * w)
        loss = loss + em.entropy_bottleneck.loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return em.eval(), sample


def test_real_stream_matches_estimated_bits_within_one_percent():
    em, sample = _fitted_entropy_model()  # 28x36 latent: a 448x576 NYUD image at stride 16
    for _ in range(3):
        y = sample()
        with torch.no_grad():
            est = sum(float(bits_of(v).sum()) for v in em(y).likelihoods.values())
        coded = em.compress(y)
        payload = 8 * sum(len(s) for s in coded["strings"])
        assert abs(payload - est) <= 0.01 * est, (payload, est)
        header = Packet("semseg", b"\0" * 8, 448, 576, tuple(coded["strings"])).header_bytes
        assert header <= 32
        assert torch.equal(em.decompress(coded["strings"], coded["z_shape"], (28, 36)), em(y).y_hat)


def test_bit_map_sums_to_the_estimate(model):
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64), task="semseg")
    z_bits = bits_of(out.likelihoods["z"]).flatten(1).sum(1)
    assert torch.allclose(out.bit_map.flatten(1).sum(1) + z_bits, out.total_bits)
    assert torch.allclose(out.bpp, out.total_bits / (64 * 64))


def test_tables_follow_the_weights_after_training(tmp_path):
    trainer = Trainer(tiny_config("train.max_steps=3", "data.val_length=1", f"out_dir={tmp_path}"))
    m = trainer.model
    m.eval()
    x = torch.rand(1, 3, 64, 64)
    first = coder.encode(m, x)
    m.train()
    trainer.train_step(0)  # weights change: tables must be rebuilt, not reused
    m.eval()
    data = coder.encode(m, x)
    with torch.no_grad():
        assert torch.equal(coder.decode(m, data).prediction, m(x).prediction)
    with pytest.raises(BitstreamError, match="other weights"):
        coder.decode(m, first)


def test_errors_for_foreign_and_malformed_streams(model, stream):
    torch.manual_seed(5)
    other = build_model(tiny_config("tasks=[semseg,depth,normals]", "train.seed=5")).eval()
    with pytest.raises(BitstreamError, match="other weights"):
        coder.decode(other, stream)
    depth_only = build_model(tiny_config("task=depth")).eval()
    with pytest.raises(BitstreamError, match="task 'semseg'"):
        coder.decode(depth_only, stream)
    with pytest.raises(BitstreamError, match="not an ICM stream"):
        coder.decode(model, b"\x89PNG" + stream[4:])
    assert issubclass(BitstreamError, ICMError)


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize("height,width", [(0, 64), (64, 0), (20000, 64)])
def test_absurd_header_values_are_refused_before_decoding(height, width):
    body = struct.pack("<3sBB8sHH", MAGIC, 1, 1, b"\0" * 8, height, width) + bytes([1, 1, 1, 0, 0, 0])
    with pytest.raises(BitstreamError, match="outside"):
        unpack(_with_crc(body))


def test_bad_lengths_and_codes_are_refused():
    body = struct.pack("<3sBB8sHH", MAGIC, 1, 1, b"\0" * 8, 64, 64)
    with pytest.raises(BitstreamError, match="do not add up"):
        unpack(_with_crc(body + bytes([100, 1, 1, 0, 0, 0])))
    with pytest.raises(BitstreamError, match="longer than 5 bytes"):
        unpack(_with_crc(body + b"\xff" * 6))
    bad_task = struct.pack("<3sBB8sHH", MAGIC, 1, 99, b"\0" * 8, 64, 64) + bytes([0, 0, 0])
    with pytest.raises(BitstreamError, match="unknown task code 99"):
        unpack(_with_crc(bad_task))
    with pytest.raises(BitstreamError, match="version 7"):
        unpack(MAGIC + bytes([7]) + b"\0" * 40)
    assert unpack(pack(Packet("depth", b"12345678", 5, 7, (b"a", b"", b"bc")))).sections == (b"a", b"", b"bc")


@settings(max_examples=150, deadline=2000, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_streams_raise_bitstream_error(model, stream, data):
    kind = data.draw(st.sampled_from(["truncate", "flip", "splice"]))
    s = bytearray(stream)
    if kind == "truncate":
        s = s[: data.draw(st.integers(0, len(s) - 1))]
    elif kind == "flip":  # half the time in the payload, CRC recomputed: anyone can do that
        resealed = data.draw(st.booleans())
        first = len(s) - 4 - sum(map(len, unpack(stream).sections)) if resealed else 0
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(first, len(s) - (5 if resealed else 1)))
            s[i] ^= 1 << data.draw(st.integers(0, 7))
        if resealed:
            s[-4:] = struct.pack("<I", zlib.crc32(bytes(s[:-4])))
    else:
        a = data.draw(st.integers(0, len(s)))
        junk = data.draw(st.binary(min_size=1, max_size=64))
        s = s[:a] + junk + s[a:]
    if bytes(s) == stream:
        return
    with pytest.raises(BitstreamError):
        coder.decode(model, bytes(s))


def test_encode_decode_cli(tmp_path, capsys):
    Trainer(tiny_config("train.max_steps=1", "data.val_length=1", f"out_dir={tmp_path / 'run'}")).fit(
        progress=False)
    img = (np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "in.png")
    cli = [sys.executable, "-m", "icm_core.cli"]
    r = subprocess.run([*cli, "encode", str(tmp_path / "in.png"), "--checkpoint", str(tmp_path / "run"),
                        "-o", str(tmp_path / "x.icm")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    # the rest in process (each interpreter start costs seconds): main() is what the script runs
    assert main(["decode", str(tmp_path / "x.icm"), "--checkpoint", str(tmp_path / "run"),
                 "-o", str(tmp_path / "pred")]) == 0
    labels = np.asarray(Image.open(tmp_path / "pred" / "x.semseg.png"))
    assert labels.shape == (50, 70) and labels.max() < 6
    assert Image.open(tmp_path / "pred" / "x.semseg.preview.png").size == (70, 50)
    (tmp_path / "bad.icm").write_bytes((tmp_path / "x.icm").read_bytes()[:-3])
    capsys.readouterr()
    assert main(["decode", str(tmp_path / "bad.icm"), "--checkpoint", str(tmp_path / "run"),
                 "-o", str(tmp_path / "pred2")]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("BitstreamError: ") and "Traceback" not in err
    assert main(["decode", str(tmp_path / "missing.icm"), "--checkpoint", str(tmp_path / "run"),
                 "-o", str(tmp_path / "pred3")]) == 2
    err = capsys.readouterr().err
    assert "missing.icm: cannot read the stream" in err and "Traceback" not in err


def test_fingerprint_follows_every_in_place_change(model):
    before = {t: coder.fingerprint(model, t) for t in model.tasks}
    assert coder.fingerprint(model, "depth") == before["depth"]
    p = model.heads["depth"].decoder.out_proj.bias
    saved = p.detach().clone()
    with torch.no_grad():
        p.add_(1.0)
        assert coder.fingerprint(model, "depth") != before["depth"]
        assert coder.fingerprint(model, "semseg") == before["semseg"]
        p.copy_(saved)  # same values again: same fingerprint
    assert coder.fingerprint(model, "depth") == before["depth"]


def test_container_layout_is_stable():
    """The byte layout is a format: changing it needs a new FORMAT_VERSION (and this golden)."""
    data = pack(Packet("normals", bytes(range(8)), 480, 640, (b"zz", b"\x01" * 130, b"")))
    golden = (b"ICM\x01\x03" + bytes(range(8)) + (480).to_bytes(2, "little") + (640).to_bytes(2, "little")
              + b"\x02\x82\x01\x00" + b"zz" + b"\x01" * 130)
    assert data[:-4] == golden
    assert data[-4:] == zlib.crc32(golden).to_bytes(4, "little")
    assert Packet("normals", bytes(8), 480, 640, (b"", b"", b"")).header_bytes == 24  # 17 + 3 + CRC
