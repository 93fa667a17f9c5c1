"""The core used live: explicit task routing, reading while training, stop/resume, events,
entropy and attention exposure, one encoder pass per evaluated image, RA curves of runs."""

import json
import logging
import threading
from itertools import islice

import pytest
import torch

from icm_core import ConfigError
from icm_core.codec import coder
from icm_core.evaluation.evaluate import evaluate
from icm_core.models.decoder import AttentionMaps
from icm_core.models.icm import build_model
from icm_core.studies.ra_curves import ra_curves
from icm_core.training.trainer import DoneEvent, StepEvent, Trainer, make_loader

from .helpers import tiny_config


def _flags(model):
    return {n: p.requires_grad for n, p in model.named_parameters()}, \
        {n: m.training for n, m in model.named_modules()}


def test_task_is_an_argument_and_reads_change_nothing():
    m = build_model(tiny_config("tasks=[semseg,depth]"))
    m.train()
    before = _flags(m)
    x = torch.rand(1, 3, 64, 64)
    with pytest.raises(ConfigError, match="say which one"):
        m(x)
    a = m.predict(x, task="semseg")
    b = m.predict(x, task="depth")
    assert a.prediction.shape[1] != b.prediction.shape[1]
    data = coder.encode(m, x, task="depth")
    assert coder.decode(m, data).task == "depth"
    assert _flags(m) == before  # trainability and train/eval mode as they were
    assert torch.equal(m.predict(x, task="semseg").prediction, a.prediction)  # eval: deterministic


def test_reading_in_one_thread_while_another_trains(tmp_path):
    trainer = Trainer(tiny_config("tasks=[semseg,depth]", "train.max_steps=12", "data.val_length=1",
                                  f"out_dir={tmp_path}"))
    model = trainer.model
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    errors, reads = [], []
    x = torch.rand(1, 3, 64, 64)

    def read():
        try:
            while not done.is_set():
                for task in ("semseg", "depth"):
                    out = model.predict(x, task=task)
                    reads.append(bool(torch.isfinite(out.prediction).all()))
                    with model.reading():  # one snapshot: the trainer waits for the block
                        assert coder.decode(model, coder.encode(model, x, task=task)).task == task
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    done = threading.Event()
    reader = threading.Thread(target=read)
    reader.start()
    try:
        trainer.fit(progress=False)
    finally:
        done.set()
        reader.join()
    assert not errors, errors
    assert reads and all(reads)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    assert model.training  # the trainer's mode, not the reader's
    assert trainer.global_step == 12


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_stop_then_resume_equals_an_uninterrupted_run(tmp_path):
    common = ("tasks=[semseg,depth]", "train.max_steps=6", "data.val_length=1", "data.workers=1")
    ref = Trainer(tiny_config(*common, f"out_dir={tmp_path / 'ref'}"))
    ref.fit(progress=False)

    cut = Trainer(tiny_config(*common, f"out_dir={tmp_path / 'cut'}"))
    cut.subscribe(lambda e: cut.stop() if e.kind == "step" and e.step == 3 else None)
    cut.fit(progress=False)
    assert cut.global_step == 3 and isinstance(cut.history[-1], DoneEvent)
    assert cut.history[-1].stopped and (tmp_path / "cut" / "ckpt-000003").is_dir()

    again = Trainer(tiny_config(*common, f"out_dir={tmp_path / 'cut'}", "resume=true"))
    again.fit(progress=False)
    a, b = _weights(ref.model), _weights(again.model)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]
    losses = [json.loads(ln) for ln in (tmp_path / "cut" / "history.jsonl").read_text().splitlines()]
    ref_losses = [json.loads(ln) for ln in (tmp_path / "ref" / "history.jsonl").read_text().splitlines()]
    steps = lambda h: [(d["step"], d["loss"]) for d in h if d["kind"] == "step"]  # noqa: E731
    assert steps(losses) == steps(ref_losses)


def test_a_raising_subscriber_is_dropped_and_the_run_goes_on(tmp_path, caplog):
    trainer = Trainer(tiny_config("train.max_steps=3", "data.val_length=1", f"out_dir={tmp_path}"))
    calls, seen = [], []

    def broken(event):
        calls.append(event.kind)
        raise RuntimeError("plot failed")

    trainer.subscribe(broken)
    trainer.subscribe(seen.append)
    with caplog.at_level(logging.ERROR):
        trainer.fit(progress=False)
    assert calls == ["step"]  # called once, then dropped
    assert [e.kind for e in seen][-1] == "done" and trainer.global_step == 3
    assert "plot failed" in caplog.text and "dropped" in caplog.text


def test_step_events_are_typed_and_plain(tmp_path):
    trainer = Trainer(tiny_config("train.max_steps=2", "data.val_length=1", f"out_dir={tmp_path}"))
    first = trainer.step()  # public: advances the count and emits, like fit
    assert isinstance(first, StepEvent) and first.step == 1 and trainer.global_step == 1
    assert first.bpp == pytest.approx(first.bpp_y + first.bpp_z, rel=1e-5)
    assert first.bpp_z > 0 and first.bpp_y > 0 and first.wall_time > 0
    assert len(first.alphas) == 2 and all(isinstance(a, float) for a in first.alphas)  # stages 2, 3
    trainer.fit(progress=False)
    done = trainer.history[-1]
    assert isinstance(done, DoneEvent) and not done.stopped
    json.dumps(done.as_dict())  # plain values only
    assert done.results[0]["task"] == "semseg" and done.results[0]["bpp"] > 0
    with pytest.raises(ConfigError, match="complete"):
        trainer.step()


def test_loader_workers_give_the_batches_of_the_step(tmp_path):
    cfg0 = tiny_config("data.workers=0", "train.batch_size=3")
    cfg2 = tiny_config("data.workers=2", "train.batch_size=3")
    trainer = Trainer(cfg0)
    # islice: the loaders run to max_steps; rendering every batch of them cost a minute
    a = list(islice(make_loader(trainer.train_set, cfg0, ["semseg"], start=5), 2))
    b = list(islice(make_loader(trainer.train_set, cfg2, ["semseg"], start=5), 2))
    c = list(islice(make_loader(trainer.train_set, cfg0, ["semseg"], start=6), 1))
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in ("image", "semseg"))
    assert torch.equal(a[1]["image"], c[0]["image"])  # step 6's batch, whichever start
    direct = trainer.batch_of(6)  # what train_step takes without a batch (and benchmarks time)
    assert direct.keys() == {"image", "semseg"}
    assert all(torch.equal(direct[k], a[1][k]) for k in ("image", "semseg"))


def test_evaluation_runs_the_backbone_once_per_image():
    m = build_model(tiny_config())
    from icm_core.data.synthetic import SyntheticScenes

    ds = SyntheticScenes("val", (64, 64), length=3)
    calls = []
    hook = m.backbone.register_forward_hook(lambda *a: calls.append(1))
    r = evaluate(m, ds, "semseg")
    hook.remove()
    assert len(calls) == 3 and r.images == 3 and len(r.records) == 3
    assert r.bpp == pytest.approx(sum(8 * rec.bytes for rec in r.records) / (3 * 64 * 64))
    assert all(rec.bits_estimated > 0 and 0 <= rec.metric <= 100 for rec in r.records)
    stop = threading.Event()
    seen = []

    def progress(done, total):
        seen.append((done, total))
        if done == 1:
            stop.set()

    part = evaluate(m, ds, "semseg", progress=progress, cancel=stop)
    assert part.cancelled and part.images == 1 and seen == [(1, 3)]


def test_entropy_output_exposes_priors_and_cropped_bits():
    m = build_model(tiny_config()).eval()
    with torch.no_grad():
        out = m(torch.rand(1, 3, 70, 100))  # latent 8x8 padded, 5x7 valid at stride 16
    e = out.entropy
    assert e.hyper_means.shape == e.spatial_scales.shape == out.y_hat.shape
    assert (e.hyper_scales >= 0.11).all() and e.step1_mask.dtype == torch.bool
    assert out.valid_latent_hw == (5, 7)
    bits = out.bits_map()
    assert bits.shape == (1, 5, 7)
    assert torch.allclose(bits.sum(), out.bits_per_channel().sum())
    assert torch.allclose(out.bits[..., :5, :7].sum(), bits.sum())
    assert out.z_bits_map().shape == (1, 2, 2)
    assert torch.allclose(out.bits_y + out.bits_z, out.total_bits)


def test_attention_of_every_block_maps_to_pixels():
    m = build_model(tiny_config("model.decoder_depths=[2,1,1]")).eval()
    with torch.no_grad():
        out = m(torch.rand(1, 3, 128, 192), return_attention=True)
    maps = out.attention
    assert [(a.stage, a.block) for a in maps] == [(1, 0), (1, 1), (2, 0), (3, 0)]
    assert maps[0].raw is None and maps[2].raw is not None  # stage 1 does not fuse
    assert not maps[2].scores.requires_grad
    for a in maps:
        # keys every 64 px in every stage, centred on their 64x64 cell (patch 16)
        assert a.feature_stride * a.kv_stride == 64
        keys = a.key_pixels()
        assert keys[0].tolist() == [31.5, 31.5] and keys[1].tolist() == [31.5, 95.5]
        q = a.query_pixels()
        assert len(q) == a.scores.shape[-2] and len(keys) == a.scores.shape[-1]
        qi = a.query_at(*q[5].tolist())
        assert qi == 5
        w = a.key_weights(qi, head=1)
        assert w.shape == a.key_hw and w.sum().item() == pytest.approx(1.0, abs=1e-5)
    # stage 1: features at stride 16, queries every 2 features: centres at 32 i + 7.5
    assert maps[0].query_pixels()[1].tolist() == [7.5, 39.5]
    fused = maps[2]
    assert not torch.equal(fused.key_weights(0), fused.key_weights(0, fused=False))


def test_decode_returns_attention_and_constructed_maps_map_pixels():
    m = build_model(tiny_config()).eval()
    x = torch.rand(1, 3, 64, 64)
    dec = coder.decode(m, coder.encode(m, x), return_attention=True)
    assert len(dec.attention) == 3 and dec.attention[0].stage == 1
    a = AttentionMaps(torch.zeros(1, 1, 4, 1), (2, 2), (1, 1), feature_stride=4, q_stride=2,
                      kv_stride=8)
    assert a.query_pixels().tolist() == [[1.5, 1.5], [1.5, 9.5], [9.5, 1.5], [9.5, 9.5]]
    assert a.key_pixels().tolist() == [[15.5, 15.5]]
    assert a.query_at(8, 2) == 2


def test_ra_curves_from_run_folders_are_cached(tmp_path):
    runs = []
    for lm in (0.1, 2.0):
        run = tmp_path / f"l{lm}"
        Trainer(tiny_config("train.max_steps=2", f"lmbda={lm}", "data.val_length=2",
                            f"out_dir={run}")).fit(progress=False)
        runs.append(run)
    (curve,) = ra_curves(runs)["semseg"]  # two runs that differ only in lambda: one curve
    assert sorted(curve.lmbdas) == [0.1, 2.0] and curve.runs and curve.name.startswith("dora")
    assert all(b > 0 for b in curve.bpp) and curve.bpp == sorted(curve.bpp)
    assert curve.images == 2 and curve.settings["adapter"] == "dora" and curve.kind == "learned"
    cache = json.loads((runs[0] / "ra-points.json").read_text())
    assert len(cache) == 1
    # cached: a second call gives the same points without evaluating
    (runs[0] / "ra-points.json").write_text(json.dumps(
        {k: {**v, "value": -1.0} for k, v in cache.items()}))
    (again,) = ra_curves(runs)["semseg"]
    assert dict(zip(again.lmbdas, again.values))[0.1] == -1.0
    with pytest.raises(ConfigError, match="not a run folder"):
        ra_curves([tmp_path / "missing"])


def test_backbone_attention_capture_on_request_only():
    m = build_model(tiny_config())
    x = torch.rand(1, 3, 64, 96)
    attn = m.backbone.vit.blocks[2].attn
    with m.reading("semseg"):
        ref = m.backbone(x)
        with m.backbone.capture_attention(2) as maps:
            out = m.backbone(x)
        after = m.backbone(x)
    assert len(maps) == 1 and maps[0].shape == (1, 3, 1 + 4 * 6, 1 + 4 * 6)  # cls + 4x6 patches
    assert torch.allclose(maps[0].sum(-1), torch.ones(1, 3, 25), atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ref, out))  # same features
    assert attn.fused_attn and len(maps) == 1 and all(torch.equal(a, b) for a, b in zip(ref, after))
    with pytest.raises(ConfigError, match="blocks 0..3"):
        with m.backbone.capture_attention(9):
            pass


def test_encoded_image_is_bytes_with_its_sections_and_pickles():
    import pickle

    m = build_model(tiny_config()).eval()
    data = coder.encode(m, torch.rand(3, 64, 80))
    assert isinstance(data, bytes) and data.task == "semseg" and (data.height, data.width) == (64, 80)
    assert data.sections.total == len(data) and data.bpp == pytest.approx(8 * len(data) / (64 * 80))
    assert data.bits_estimated == pytest.approx(data.bits_y + data.bits_z)
    back = pickle.loads(pickle.dumps(data))
    assert back == data and back.sections == data.sections and back.bits_y == data.bits_y
    assert torch.equal(coder.decode(m, back).prediction, coder.decode(m, bytes(data)).prediction)
