"""Decoding streams from strangers: fuzzing with valid CRCs (issue 8).

Streams of a tiny compressing model (two tasks, three image sizes) are damaged in 15 ways,
their CRC32 recomputed (anyone can), and each is decoded twice in a child process with
OMP_NUM_THREADS=1. A crash kills only its child: it is counted, and a new child goes on
after the stream that caused it. A sample is decoded again in another process.

Counts: accepted, split into: the original prediction or its crop; the intact payload
under another size claim with as many latent elements (a valid stream of another shape);
a changed payload that is still exactly what compressai's encoder writes for the latent it
decodes to (bypass-coded values are stored as raw nibbles: changing one can give another
valid latent); not canonical (must be 0). Then refused with BitstreamError, other
exceptions, crashes, hangs, and nondeterministic (two decodes of the same bytes differ, in
one process or across two).

Also times entropy decoding at a 448x576 image's latent (28x36, M=64): the checked reader
(``rans_decode``) against compressai's unchecked C++ decoder, on the same valid stream.

    python benchmarks/bench_fuzz.py [--streams 10000] [--seed 0] [--unchecked]

``--unchecked`` fuzzes compressai's C++ decoder (the decoder before issue 8) the same way.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from compressai.ans import RansEncoder

from icm_core.codec import coder
from icm_core.codec.container import BitstreamError, Packet, pack, unpack
from icm_core.config import load_config
from icm_core.data.images import MAX_SIDE
from icm_core.models import entropy
from icm_core.models.icm import build_model

TINY = ["data.size=[64,64]", "model.decoder_dims=[32,16,16]", "model.latent_channels=16",
        "model.hyper_channels=16", "model.prelim_width=16", "tasks=[semseg,depth]"]
SIZES = ((64, 64), (96, 128), (130, 70))
KINDS = ("flip_any", "flip_payload", "bytes_payload", "word_section", "state_section",
         "cut_section", "zeros_section", "random_tail", "random_section", "empty_section",
         "all_empty", "swap_sections", "splice_section", "any_size", "same_elements")
CHUNK = 400  # streams per child process


def reseal(stream: bytes) -> bytes:
    return stream[:-4] + struct.pack("<I", zlib.crc32(stream[:-4]))


def _model():
    """The tiny model, its projection scaled up: y then takes ~1 KB per step (escapes too),
    where an untrained model's y fits in the 8-byte flush of the rANS coder."""
    torch.set_num_threads(1)
    model = build_model(load_config(TINY)).eval()
    with torch.no_grad():
        for head in model.heads.values():
            head.proj.weight.mul_(30)
    return model


def _originals(model) -> list[bytes]:
    out = []
    for task in model.tasks:
        for i, size in enumerate(SIZES):
            g = torch.Generator().manual_seed(i)
            out.append(bytes(coder.encode(model, torch.rand(1, 3, *size, generator=g), task=task)))
    return out


def mutate(stream: bytes, kind: str, rng: np.random.Generator, model) -> bytes:
    """A damaged copy of ``stream`` with a valid CRC (and, for most kinds, a valid container)."""
    p = unpack(stream)
    secs = list(p.sections)
    k = int(rng.integers(3))
    payload = len(stream) - 4 - sum(map(len, secs))
    s = bytearray(stream)
    if kind in ("flip_any", "flip_payload"):
        lo = 0 if kind == "flip_any" else payload
        for i in rng.integers(lo, len(s) - 4, rng.integers(1, 5)):
            s[i] ^= 1 << int(rng.integers(8))
        return reseal(bytes(s))
    if kind == "bytes_payload":
        for i in rng.integers(payload, len(s) - 4, rng.integers(1, 9)):
            s[i] = int(rng.integers(256))
        return reseal(bytes(s))
    if kind in ("word_section", "state_section") and len(secs[k]) >= 8:
        b = bytearray(secs[k])
        i = 4 * int(rng.integers(len(b) // 4)) if kind == "word_section" else 0
        n = 4 if kind == "word_section" else 8
        b[i:i + n] = rng.bytes(n)
        secs[k] = bytes(b)
    elif kind == "cut_section":
        secs[k] = secs[k][: int(rng.integers(0, len(secs[k]) + 1))]
    elif kind == "zeros_section":  # what an overrun into zero padding would read
        secs[k] += bytes(int(rng.integers(1, 65)))
    elif kind == "random_tail":
        secs[k] += rng.bytes(int(rng.integers(1, 65)))
    elif kind == "random_section":
        secs[k] = rng.bytes(int(rng.integers(0, 2 * len(secs[k]) + 65)))
    elif kind == "empty_section":
        secs[k] = b""
    elif kind == "all_empty":  # the 24-byte stream: real fingerprint, no payload
        secs = [b"", b"", b""]
    elif kind == "swap_sections":
        j = (k + 1 + int(rng.integers(2))) % 3
        secs[k], secs[j] = secs[j], secs[k]
    elif kind == "splice_section":
        i = int(rng.integers(len(secs[k]) + 1))
        secs[k] = secs[k][:i] + rng.bytes(int(rng.integers(1, 33))) + secs[k][i:]
    elif kind == "any_size":  # log-uniform up to the format's limit, past the pixel budget
        h, w = (int(np.exp(rng.uniform(0, np.log(MAX_SIDE)))) for _ in range(2))
        return pack(Packet(p.task, p.fingerprint, h, w, p.sections))
    elif kind == "same_elements":  # another shape with as many latent elements, or the same
        hp, wp = model.padded_size(p.height, p.width)
        st = model.stride
        cells = (hp // st) * (wp // st)
        a = int(rng.choice([d for d in range(1, cells + 1) if cells % d == 0]))
        h = int(rng.integers((a - 1) * st + 1, a * st + 1))
        w = int(rng.integers((cells // a - 1) * st + 1, cells // a * st + 1))
        return pack(Packet(p.task, p.fingerprint, h, w, p.sections))
    return pack(Packet(p.task, p.fingerprint, p.height, p.width, tuple(secs)))


# -- the child: decodes a range of streams ---------------------------------------------------
def _read_streams(path: Path) -> list[bytes]:
    data, out, pos = path.read_bytes(), [], 0
    while pos < len(data):
        (n,) = struct.unpack_from("<I", data, pos)
        out.append(data[pos + 4:pos + 4 + n])
        pos += 4 + n
    return out


def _outcome(model, stream: bytes, origin: bytes, full: dict, log: list) -> list:
    log.clear()
    try:
        out = coder.decode(model, stream)
    except BitstreamError as e:
        return ["refused", str(e)]
    except Exception as e:  # noqa: BLE001 - counted
        return ["other", f"{type(e).__name__}: {e}"[:300]]
    pred = out.prediction
    h, w = pred.shape[-2:]
    ref = full.get((out.task, model.padded_size(h, w)))
    crop = None if ref is None else torch.equal(pred, ref[..., :h, :w])
    digest = hashlib.sha256(pred.numpy().tobytes() + out.y_hat.numpy().tobytes()).hexdigest()
    reencodes = len(log) == 3 and all(  # compressai's encoder writes exactly these sections
        RansEncoder().encode_with_indexes(sym, idx, t.cdfs, [len(c) for c in t.cdfs], t.offsets)
        == data for data, idx, t, sym in log)
    return ["accepted", crop, digest, unpack(stream).sections == unpack(origin).sections,
            reencodes]


def worker(streams_file: str, meta_file: str, start: int, stop: int, unchecked: bool) -> None:
    if unchecked:  # the decoder before issue 8, for comparison
        entropy.DualSpatialEntropyModel.decompress = _unchecked_decompress
    model = _model()
    log = []  # (section, indexes, table, symbols) of each section rans_decode accepts
    real = entropy.rans_decode

    def recording(data, indexes, table, what):
        symbols = real(data, indexes, table, what)
        log.append((data, indexes, table, symbols))
        return symbols

    entropy.rans_decode = recording
    originals = _originals(model)
    full = {}  # (task, padded size) -> the whole padded prediction of that original
    for data in originals:
        p = unpack(data)
        padded = model.padded_size(p.height, p.width)
        whole = pack(Packet(p.task, p.fingerprint, *padded, p.sections))
        full[(p.task, padded)] = coder.decode(model, whole).prediction
    streams = _read_streams(Path(streams_file))
    meta = json.loads(Path(meta_file).read_text())
    for i in range(start, stop):
        print(json.dumps({"start": i}), flush=True)
        origin = originals[meta[i]["origin"]]
        r = [_outcome(model, streams[i], origin, full, log) for _ in range(2)]
        print(json.dumps({"done": i, "r": r}), flush=True)


# -- the parent ------------------------------------------------------------------------------
def _text(b) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def _run_children(streams_file, meta_file, indices: range, unchecked: bool,
                  timeout_per_stream=30.0) -> dict:
    """Outcomes by stream; a stream that killed or hung its child maps to ["crash"/"hang", ..]."""
    results, i = {}, indices.start
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    while i < indices.stop:
        stop = min(i + CHUNK, indices.stop)
        cmd = [sys.executable, __file__, "--worker", str(streams_file), str(meta_file), str(i),
               str(stop), "unchecked" if unchecked else "checked"]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, env=env,
                               timeout=60 + timeout_per_stream * (stop - i))
            out, err, code = r.stdout, r.stderr, r.returncode
        except subprocess.TimeoutExpired as e:
            out, err, code = _text(e.stdout), _text(e.stderr), "hang"
        started = None
        for line in out.splitlines():
            if line.startswith("{"):
                d = json.loads(line)
                if "start" in d:
                    started = d["start"]
                else:
                    results[d["done"]] = d["r"]
        if code == 0:
            i = stop
            continue
        if started is None or started in results:  # died before its first stream
            raise RuntimeError(f"child failed before its first stream ({code}):\n{err[-2000:]}")
        results[started] = ["hang" if code == "hang" else "crash", code]
        i = started + 1
    return results


LABELS = ("accepted_original_or_crop", "accepted_other_shape", "accepted_other_latent",
          "accepted_not_canonical", "refused", "other", "crash", "hang", "nondeterministic")


def fuzz(n: int, seed: int, cross_fraction: float = 0.1, unchecked: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    model = _model()
    originals = _originals(model)
    streams, meta = [], []
    for i in range(n):
        o, kind = int(rng.integers(len(originals))), KINDS[i % len(KINDS)]
        for _ in range(100):  # every stream differs from its original
            s = mutate(originals[o], kind, rng, model)
            if s != originals[o]:
                break
        streams.append(s)
        meta.append({"origin": o, "kind": kind})
    with tempfile.TemporaryDirectory() as tmp:
        sf, mf = Path(tmp) / "streams.bin", Path(tmp) / "meta.json"
        sf.write_bytes(b"".join(struct.pack("<I", len(s)) + s for s in streams))
        mf.write_text(json.dumps(meta))
        t = time.perf_counter()
        results = _run_children(sf, mf, range(n), unchecked)
        seconds = time.perf_counter() - t
        # a sample again, in fresh processes: the same bytes must give the same outcome
        sample = range(0, max(1, int(n * cross_fraction)))
        again = _run_children(sf, mf, sample, unchecked)
    counts = collections.Counter(dict.fromkeys(LABELS, 0))
    by_kind = collections.defaultdict(collections.Counter)
    reasons = collections.Counter()
    for i in range(n):
        r = results[i]
        if r[0] in ("crash", "hang"):
            label = r[0]
        else:
            first, second = r
            if first != second or (i in again and again[i][0] != first):
                counts["nondeterministic"] += 1
            if first[0] == "accepted":
                _, crop, _, intact, reencodes = first
                label = ("accepted_not_canonical" if not reencodes or (intact and crop is False)
                         else "accepted_other_latent" if not intact
                         else "accepted_original_or_crop" if crop else "accepted_other_shape")
            else:
                label = first[0]
                if label == "refused":
                    reasons[first[1].split(":")[0].split(" (")[0][:70]] += 1
        counts[label] += 1
        by_kind[meta[i]["kind"]][label] += 1
    distinct = len(set(streams))
    return {"streams": n, "distinct_streams": distinct, "cross_process_sample": len(sample),
            "seconds": round(seconds, 1), "counts": dict(counts),
            "by_kind": {k: dict(v) for k, v in by_kind.items()},
            "top_refusals": reasons.most_common(12)}


def _fitted_entropy_model(M=64, h=28, w=36, steps=150):
    """A dual spatial entropy model briefly fitted to smooth + detailed latents."""
    from icm_core.models.entropy import DualSpatialEntropyModel, bits_of

    torch.manual_seed(0)
    em = DualSpatialEntropyModel(M, 64)
    g = torch.Generator().manual_seed(1)

    def sample():
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


def _unchecked_decompress(em, strings, z_shape, y_shape):
    """The decoder before issue 8: compressai's C++ rANS decoder, no bounds."""
    from icm_core.models.entropy import checkerboard_masks

    em.update_tables()
    gc, (h, w) = em.gaussian_conditional, y_shape
    z_hat = em.entropy_bottleneck.decompress([strings[0]], tuple(z_shape))
    mu0, s0 = em._hyper(z_hat)
    mask = checkerboard_masks(em.M, h, w).unsqueeze(0)
    y_hat = torch.zeros(1, em.M, h, w)

    def step(string, m, mu, s):
        idx = gc.build_indexes(s[m]).unsqueeze(0)
        return gc.decompress([string], idx, means=mu[m].unsqueeze(0))[0]

    y_hat[mask] = step(strings[1], mask, mu0, s0)
    mu1, s1 = em._step2_params(y_hat, mask, mu0, s0)
    y_hat[~mask] = step(strings[2], ~mask, mu1, s1)
    return y_hat


def timing(repeats: int = 7) -> dict:
    torch.set_num_threads(1)
    em, sample = _fitted_entropy_model()
    y = sample()
    coded = em.compress(y)
    args = (coded["strings"], coded["z_shape"], (28, 36))
    checked, unchecked = em.decompress(*args), _unchecked_decompress(em, *args)
    assert torch.equal(checked, unchecked)

    def median_ms(fn):
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn(*args)
            times.append(time.perf_counter() - t)
        return round(1e3 * statistics.median(times), 1)

    return {"latent": "28x36 (448x576 image), M=64, N=64, 1 thread",
            "stream_bytes": [len(s) for s in coded["strings"]],
            "checked_ms": median_ms(em.decompress),
            "unchecked_compressai_ms": median_ms(lambda *a: _unchecked_decompress(em, *a))}


def main(n: int = 10_000, seed: int = 0, unchecked: bool = False) -> dict:
    if unchecked:
        result = {"fuzz_unchecked_decoder": fuzz(n, seed, unchecked=True)}
    else:
        result = {"fuzz": fuzz(n, seed), "entropy_decode_time": timing()}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]),
               sys.argv[6] == "unchecked")
        sys.exit(0)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--unchecked", action="store_true",
                    help="fuzz compressai's unchecked decoder instead (the code before issue 8)")
    a = ap.parse_args()
    main(a.streams, a.seed, a.unchecked)
