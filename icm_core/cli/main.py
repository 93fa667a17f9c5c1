"""The ``icm`` command. Bad input ends with a one-line ``ErrorName: message``, no traceback."""

from __future__ import annotations

import argparse
import sys

from icm_core.baselines.classical import codecs_help
from icm_core.codec import coder
from icm_core.config.schema import DataConfig
from icm_core.data.check import check_dataset
from icm_core.data.registry import dataset_names, get_dataset, make_dataset
from icm_core.errors import ConfigError, ICMError
from icm_core.evaluation.cost import model_info


def _cmd_data_preview(args) -> int:
    from icm_core.files import atomic_path
    from icm_core.viz.images import sample_grid

    entry = get_dataset(args.dataset)
    cfg = DataConfig(name=entry.name, size=[args.height, args.width], seed=args.seed,
                     train_length=args.n, val_length=args.n, root=args.root or "", augment=False,
                     strict=False, workers=0)
    ds = make_dataset(cfg, "val" if not entry.labelled else args.split, None)
    n = min(args.n, len(ds))
    tasks = list(getattr(ds, "tasks_available", ds.tasks))
    grid = sample_grid([ds[i] for i in range(n)], tasks)
    with atomic_path(args.out) as tmp:
        grid.save(tmp, format="PNG")
    print(f"wrote {args.out} ({n} {entry.name} samples x {len(tasks)} tasks)")
    return 0


def _cmd_data_check(args) -> int:
    pairs = [kv.split("=", 1) for kv in (args.columns or "").split(",") if kv.strip()]
    if any(len(p) != 2 or not all(x.strip() for x in p) for p in pairs):
        raise ConfigError(f"--columns {args.columns!r}: give KEY=COLUMN pairs, e.g. "
                          "image=img,semseg=label")
    report = check_dataset(args.root, args.dataset, layout=args.layout, labels=args.labels,
                           columns={k.strip(): v.strip() for k, v in pairs})
    print(report.format())
    return 0 if report.ok else 1


def _cmd_info(args) -> int:
    import json

    print(json.dumps(model_info(args.overrides), indent=2))
    return 0


def _cmd_bench(args) -> int:
    import json

    from icm_core.training.bench import bench, compare, parse_measure, parse_size

    size = parse_size(args.size) if args.size else None
    if args.compare:
        result = compare(args.overrides, device=args.device, size=size,
                         variants=tuple(v.strip() for v in args.compare.split(",") if v.strip()))
    else:
        result = bench(args.overrides, device=args.device, size=size, k=args.k,
                       measure=parse_measure(args.measure)).to_dict()
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    return 0


def _run_hydra(app, prog: str, overrides) -> int:
    """Run a Hydra app as if ``prog overrides...`` had been typed (Hydra reads sys.argv)."""
    saved = sys.argv
    sys.argv = [prog, *overrides]
    try:
        app()
    finally:
        sys.argv = saved
    return 0


def _cmd_train(args) -> int:
    from icm_core.cli.hydra_app import train_app

    return _run_hydra(train_app, "icm train", args.overrides)


def _cmd_pretrain(args) -> int:
    from icm_core.training.pretrain import pretrain_app

    return _run_hydra(pretrain_app, "icm pretrain", args.overrides)


def _cmd_eval(args) -> int:
    from pathlib import Path

    from icm_core.evaluation.evaluate import EvalResult
    from icm_core.evaluation.results import write_results
    from icm_core.models.backbone import weights_available
    from icm_core.studies.ra_curves import run_points
    from icm_core.training.checkpoint import load_config_file, resolve_checkpoint_dir
    from icm_core.training.trainer import default_device

    ckpt = resolve_checkpoint_dir(args.checkpoint)
    cfg = load_config_file(ckpt)
    out = Path(args.out or ckpt.parent)
    # the same cached points the workbench's rate-accuracy panel reads
    for p in run_points(args.checkpoint, max_images=args.max_images, device=default_device()):
        r = EvalResult(p.task, p.metric, p.value, p.bpp, p.bpp_estimated, p.images,
                       p.higher_is_better)
        weights = ("synthetic-pretrained" if cfg.backbone.weights == "synthetic" else
                   "pretrained" if weights_available(cfg.backbone) else "RANDOM")
        name = f"{cfg.name}-{p.task}-lmbda{cfg.lmbda:g}"
        desc = (f"{cfg.name}: {cfg.backbone.name} ({weights} weights), adapter {cfg.adapter.mode} "
                f"r{cfg.adapter.rank}, lambda {cfg.lmbda:g}, {p.images} {cfg.data.name} val images, "
                "real bitstreams")
        write_results(out / f"results-{p.task}.json", out / f"results-{p.task}.csv", name, desc, [r])
        bpp = "n/a (no compression)" if p.bpp is None else f"{p.bpp:.4f}"
        print(f"{p.task}: {p.metric}={p.value:.3f} bpp={bpp} -> {out / f'results-{p.task}.json'}")
    return 0


def _writable_path(path, kind: str):
    """``path`` as a Path, refused up front when an existing entry is of the wrong kind."""
    from pathlib import Path

    from icm_core.errors import ConfigError

    path = Path(path)
    if kind == "file" and path.is_dir():
        raise ConfigError(f"-o {path}: is a folder; give the name of the .icm file to write")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise ConfigError(f"-o {path}: is a file; give a folder for the decoded predictions")
    return path


def _cannot_write(path, e: OSError):
    from icm_core.errors import ConfigError

    return ConfigError(f"-o {path}: cannot write there ({e.strerror or e}); give another path")


def _cmd_encode(args) -> int:
    from icm_core.data.images import load_image
    from icm_core.files import write_bytes
    from icm_core.training.checkpoint import load_checkpoint

    out = _writable_path(args.output, "file")
    image = load_image(args.image)  # before the checkpoint: a bad image fails at once
    model, _ = load_checkpoint(args.checkpoint)
    data = coder.encode(model, image, task=args.task or model.tasks[0])
    try:
        write_bytes(out, data)
    except OSError as e:
        raise _cannot_write(out, e) from e
    s = data.sections
    print(f"{out}: {len(data)} bytes, {data.bpp:.4f} bpp, task {data.task} (header {s.header}, "
          f"z {s.z}, step 1 {s.step1}, step 2 {s.step2} bytes)")
    return 0


def _cmd_decode(args) -> int:
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from icm_core.errors import BitstreamError
    from icm_core.files import atomic_path
    from icm_core.tasks.registry import get_task
    from icm_core.training.checkpoint import load_checkpoint
    from icm_core.viz.images import colorize

    outdir = _writable_path(args.output, "folder")
    try:
        data = Path(args.file).read_bytes()
    except OSError as e:
        raise BitstreamError(f"{args.file}: cannot read the stream ({e.strerror})") from e
    model, _ = load_checkpoint(args.checkpoint)
    out = coder.decode(model, data)
    spec = get_task(out.task)
    pred = spec.activate(out.prediction)[0].cpu()
    stem = Path(args.file).stem
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        if spec.kind == "classes":
            arr = pred.argmax(0).numpy().astype(np.uint8)
            with atomic_path(outdir / f"{stem}.{out.task}.png") as tmp:
                Image.fromarray(arr).save(tmp, format="PNG")
        else:
            with atomic_path(outdir / f"{stem}.{out.task}.npy") as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, pred.numpy().astype(np.float32))
        with atomic_path(outdir / f"{stem}.{out.task}.preview.png") as tmp:
            Image.fromarray(colorize(out.task, pred)).save(tmp, format="PNG")
    except OSError as e:
        raise _cannot_write(outdir, e) from e
    print(f"decoded {out.task} {tuple(pred.shape)} -> {outdir}")
    return 0


def _cmd_demo(args) -> int:
    from icm_core.studies.demo import run_demo

    report = run_demo(args.out, steps=args.steps, lambdas=args.lambdas, task=args.task,
                      extra_overrides=args.overrides)
    print(f"report: {report}")
    return 0


def _cmd_compare(args) -> int:
    from icm_core.errors import ConfigError
    from icm_core.studies.compare import compare

    try:
        scales = [float(s) for s in args.scales.split(",") if s.strip()]
    except ValueError as e:
        raise ConfigError(f"--scales {args.scales!r}: give numbers in (0, 1], e.g. 1,0.5,0.25") from e
    codecs = None if args.codecs is None else args.codecs.split(",")
    result = compare(args.runs, args.baseline or (), codecs=codecs, scales=scales,
                     ladder=args.ladder, preprocessor=args.preprocessor, images=args.images,
                     size=args.size, out=args.out,
                     metric_options=({"boundary": {"n_thresholds": args.boundary_thresholds}}
                                     if args.boundary_thresholds else None))
    print(f"wrote {result.out}: <method>-<task>.json, bd_rate.csv, ra-<task>.html, complexity.csv")
    return 0


DEMO_STEPS = 200  # = icm_core.studies.demo.DEFAULT_STEPS (light import)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="icm",
        description="Image coding for machines with low-rank adapted pre-trained backbones.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    tr = sub.add_parser("train", help="train with Hydra overrides (-m for sweeps)", add_help=False)
    tr.add_argument("overrides", nargs=argparse.REMAINDER,
                    help="e.g. experiment=quick task=depth lmbda=2 train.max_steps=300 out_dir=runs/a")
    tr.set_defaults(func=_cmd_train)

    pre = sub.add_parser("pretrain", help="self-supervised MIM pretraining of the offline backbone "
                         "(e.g. pretrain=quick steps=20 out_dir=runs/p resume=true)", add_help=False)
    pre.add_argument("overrides", nargs=argparse.REMAINDER)
    pre.set_defaults(func=_cmd_pretrain)

    ev = sub.add_parser("eval", help="evaluate a checkpoint at real bitstream rates")
    ev.add_argument("checkpoint", help="run folder written by 'icm train' (or one of its ckpt-*)")
    ev.add_argument("--max-images", type=int, default=None, help="evaluate on the first N val images")
    ev.add_argument("--out", default=None, help="folder for results-<task>.json/.csv (default: the run)")
    ev.set_defaults(func=_cmd_eval)

    enc = sub.add_parser("encode", help="compress an image into an .icm stream")
    enc.add_argument("image")
    enc.add_argument("--checkpoint", required=True)
    enc.add_argument("-o", "--output", required=True)
    enc.add_argument("--task", default=None, help="task to code for (default: the first)")
    enc.set_defaults(func=_cmd_encode)

    dec = sub.add_parser("decode", help="decode an .icm stream into predictions (PNG/NPY + preview)")
    dec.add_argument("file")
    dec.add_argument("--checkpoint", required=True)
    dec.add_argument("-o", "--output", required=True, help="output folder")
    dec.set_defaults(func=_cmd_decode)

    demo = sub.add_parser("demo", help="train a 3-lambda quick model on synthetic scenes, write a report")
    demo.add_argument("--out", default="demo_out")
    demo.add_argument("--steps", type=int, default=DEMO_STEPS, help="training steps per lambda")
    demo.add_argument("--task", default="semseg", help="semseg, depth, normals, boundary, "
                      "human_parts or saliency (default: semseg)")
    demo.add_argument("--lambdas", type=float, nargs="+", default=None,
                      help="default: the task's ladder (icm_core.studies.demo.TASK_LAMBDAS; semseg "
                      "0.25 1 4, depth 0.03 0.1 0.25)")
    demo.add_argument("overrides", nargs="*",
                      help="config overrides on top of the quick preset, e.g. backbone=tiny_random")
    demo.set_defaults(func=_cmd_demo)

    cmp = sub.add_parser("compare", help="the learned codec against classical codecs (+ baseline, "
                         "+ pre-processor) on the same held-out scenes: JSON, BD-rates, plots")
    cmp.add_argument("runs", nargs="+", help="learned-codec run folders (one per lambda), or "
                     "folders of them (e.g. icm demo's output)")
    cmp.add_argument("--baseline", nargs="+", default=None, help="uncompressed run folders "
                     "(model.compression=false), one per task: decoded images are fed to them")
    cmp.add_argument("--codecs", default=None, help=codecs_help())
    cmp.add_argument("--scales", default="1,0.5,0.25", help="resolution ladder (comma list)")
    cmp.add_argument("--ladder", choices=("small", "full"), default="small",
                     help="small: each codec's registered small ladder (4-5 qualities); full: "
                     "every quality of its ladder")
    cmp.add_argument("--preprocessor", default="none", help="none, train (one per task against "
                     "its frozen baseline, saved in --out) or a saved pre-processor file/folder")
    cmp.add_argument("--images", type=int, default=16, help="held-out synthetic test scenes")
    cmp.add_argument("--size", type=int, default=256, help="side of the square test scenes (px)")
    cmp.add_argument("--out", default="compare_out", help="output folder")
    cmp.add_argument("--boundary-thresholds", type=int, default=None,
                     help="odsF thresholds for boundary, the same for every method (default: "
                     "the metric's 99; 19 is about 5x faster, a subset of the 99)")
    cmp.set_defaults(func=_cmd_compare)

    info = sub.add_parser("info", help="describe the resolved model as JSON (no weights, no network)")
    info.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=paper adapter.rank=16")
    info.set_defaults(func=_cmd_info)

    bn = sub.add_parser("bench", help="what a setting costs: parameters, adapter bytes, storage for "
                        "K tasks, FLOPs per component, step time, peak memory, encode/decode time, "
                        "energy (JSON)")
    bn.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=paper")
    bn.add_argument("--json", action="store_true", help="one JSON object on one line")
    bn.add_argument("--device", default="cpu", help="cpu or cuda")
    bn.add_argument("--size", default=None, help="image HxW, e.g. 448x576 (default: data.size)")
    bn.add_argument("--k", type=int, default=None, help="tasks for the storage count (default: "
                    "the dataset's tasks)")
    bn.add_argument("--measure", default=None, help="step,inference,codec (comma list), all or "
                    "none; default all, none for a backbone over 100 M parameters on the CPU")
    bn.add_argument("--compare", default=None, help="adapter kinds side by side in one process, "
                    "e.g. dora,lora,full,fixed (+ decoders, merged, DoRA cache, precision)")
    bn.set_defaults(func=_cmd_bench)

    data = sub.add_parser("data", help="inspect datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    prev = data_sub.add_parser("preview", help="write a PNG grid of images and every label")
    prev.add_argument("dataset", choices=dataset_names(aliases=True), help="which dataset")
    prev.add_argument("--root", default=None, help="the dataset folder (real datasets)")
    prev.add_argument("--out", default="preview.png", help="PNG file to write")
    prev.add_argument("-n", type=int, default=4, help="number of samples (rows)")
    prev.add_argument("--height", type=int, default=128)
    prev.add_argument("--width", type=int, default=160)
    prev.add_argument("--split", default="train", choices=["train", "val"])
    prev.add_argument("--seed", type=int, default=0)
    prev.set_defaults(func=_cmd_data_preview)
    chk = data_sub.add_parser("check", help="count a dataset folder's images and labels per split "
                              "and task; name every missing or malformed file (exit 1 if any)")
    chk.add_argument("root", help="the dataset folder (hf: a saved dataset, parquet or hub id)")
    chk.add_argument("--dataset", required=True, choices=dataset_names(aliases=True))
    chk.add_argument("--layout", default="auto", help="nyud: auto, NYUD_MT or NYUDv2")
    chk.add_argument("--columns", default=None, help="hf: sample key=column pairs, e.g. "
                     "image=img,semseg=label (default: columns named like the keys)")
    chk.add_argument("--labels", default="nyud", choices=["nyud", "pascal", "synthetic"],
                     help="hf: whose label conventions the columns follow")
    chk.set_defaults(func=_cmd_data_check)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["train"], ["pretrain"]) and not {"-h", "--help"} & set(argv[1:2]):
        # everything after 'train'/'pretrain' belongs to Hydra, flags like -m/--multirun included
        args = argparse.Namespace(func=_cmd_train if argv[0] == "train" else _cmd_pretrain,
                                  overrides=argv[1:])
    else:
        args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ICMError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
