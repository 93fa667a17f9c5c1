"""The ``icm`` command. Bad input ends with a one-line ``ErrorName: message``, no traceback."""

from __future__ import annotations

import argparse
import sys

from icm_core.baselines.classical import codecs_help
from icm_core.codec import coder
from icm_core.errors import ICMError
from icm_core.evaluation.cost import model_info


def _cmd_data_preview(args) -> int:
    from icm_core.data.synthetic import SyntheticScenes
    from icm_core.files import atomic_path
    from icm_core.viz.images import sample_grid

    if args.dataset != "synthetic":
        from icm_core.errors import DatasetError

        raise DatasetError(f"preview of {args.dataset!r} is not available yet; use 'synthetic'")
    ds = SyntheticScenes(split=args.split, size=(args.height, args.width), seed=args.seed,
                         length=args.n)
    grid = sample_grid([ds[i] for i in range(args.n)], ds.tasks)
    with atomic_path(args.out) as tmp:
        grid.save(tmp, format="PNG")
    print(f"wrote {args.out} ({args.n} scenes x {len(ds.tasks)} tasks)")
    return 0


def _cmd_info(args) -> int:
    import json

    print(json.dumps(model_info(args.overrides), indent=2))
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

    from icm_core.errors import ConfigError
    from icm_core.evaluation.evaluate import EvalResult
    from icm_core.evaluation.results import write_results
    from icm_core.models.backbone import weights_available
    from icm_core.studies.ra_curves import run_points
    from icm_core.training.checkpoint import load_config_file, resolve_checkpoint_dir
    from icm_core.training.trainer import default_device

    ckpt = resolve_checkpoint_dir(args.checkpoint)
    cfg = load_config_file(ckpt)
    out = Path(args.out or ckpt.parent)
    variable = cfg.model.variable_rate
    if args.rates is not None and not variable:
        raise ConfigError(f"--rates {args.rates}: run {str(args.checkpoint)!r} has one fixed rate "
                          "(model.variable_rate=false), it is one point; drop --rates")
    # the same cached points the workbench's rate-accuracy panel reads
    points = run_points(args.checkpoint, max_images=args.max_images, device=default_device(),
                        rates=args.rates)
    weights = ("synthetic-pretrained" if cfg.backbone.weights == "synthetic" else
               "pretrained" if weights_available(cfg.backbone) else "RANDOM")
    for task in dict.fromkeys(p.task for p in points):
        mine = [p for p in points if p.task == task]  # a variable-rate run: one per rate
        results = [EvalResult(p.task, p.metric, p.value, p.bpp, p.bpp_estimated, p.images,
                              p.higher_is_better, rate=p.rate) for p in mine]
        if variable:
            lams = cfg.model.rate_lambdas
            name = f"{cfg.name}-{task}-vr{lams[0]:g}-{lams[-1]:g}"
            what = (f"variable rate (anchors' lambdas {', '.join(f'{v:g}' for v in lams)}), "
                    f"{len(mine)} rates")
        else:
            name, what = f"{cfg.name}-{task}-lmbda{cfg.lmbda:g}", f"lambda {cfg.lmbda:g}"
        desc = (f"{cfg.name}: {cfg.backbone.name} ({weights} weights), adapter {cfg.adapter.mode} "
                f"r{cfg.adapter.rank}, {what}, {mine[0].images} {cfg.data.name} val images, "
                "real bitstreams")
        write_results(out / f"results-{task}.json", out / f"results-{task}.csv", name, desc,
                      results)
        for p in mine:
            bpp = "n/a (no compression)" if p.bpp is None else f"{p.bpp:.4f}"
            at = "" if p.rate is None else f" rate={p.rate:.3f}"
            print(f"{p.task}:{at} {p.metric}={p.value:.3f} bpp={bpp} -> "
                  f"{out / f'results-{task}.json'}")
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
    data = coder.encode(model, image, task=args.task or model.tasks[0], rate=args.rate)
    try:
        write_bytes(out, data)
    except OSError as e:
        raise _cannot_write(out, e) from e
    s = data.sections
    at = "" if data.rate is None else f", rate {data.rate:.4g}"
    print(f"{out}: {len(data)} bytes, {data.bpp:.4f} bpp, task {data.task}{at} (header "
          f"{s.header}, z {s.z}, step 1 {s.step1}, step 2 {s.step2} bytes)")
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
    at = "" if out.rate is None else f" at rate {out.rate:.4g}"
    print(f"decoded {out.task} {tuple(pred.shape)}{at} -> {outdir}")
    return 0


def _cmd_demo(args) -> int:
    from icm_core.studies.demo import run_demo

    report = run_demo(args.out, steps=args.steps, lambdas=args.lambdas, task=args.task,
                      extra_overrides=args.overrides, variable_rate=args.variable_rate,
                      rate_points=args.rate_points)
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


def _rates_arg(text: str):
    """``--rates``: ``7`` (that many evenly spaced) or ``0,0.5,1`` (those rates)."""
    try:
        return int(text) if "," not in text and "." not in text else [
            float(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: give a count (e.g. 7) or rates in [0, 1] "
                                         "(e.g. 0,0.5,1)") from e


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
    ev.add_argument("--rates", type=_rates_arg, default=None,
                    help="variable-rate runs: N evenly spaced rates in [0, 1], or a comma list "
                    "of rates (default: 7 evenly spaced)")
    ev.set_defaults(func=_cmd_eval)

    enc = sub.add_parser("encode", help="compress an image into an .icm stream")
    enc.add_argument("image")
    enc.add_argument("--checkpoint", required=True)
    enc.add_argument("-o", "--output", required=True)
    enc.add_argument("--task", default=None, help="task to code for (default: the first)")
    enc.add_argument("--rate", type=float, default=None,
                     help="variable-rate runs: the rate in [0, 1], 0 the lowest trained, 1 the "
                     "highest (default 1); the stream records it")
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
    demo.add_argument("--variable-rate", action="store_true",
                      help="train ONE variable-rate model (experiment=quick_vr) and draw its curve "
                      "at --rate-points rates; --lambdas are then its anchors (default: the "
                      "task's icm_core.studies.demo.TASK_RATE_LAMBDAS) and --steps its steps")
    demo.add_argument("--rate-points", type=int, default=7,
                      help="with --variable-rate: evenly spaced rates in [0, 1] (default 7)")
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

    data = sub.add_parser("data", help="inspect datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    prev = data_sub.add_parser("preview", help="write a PNG grid of images and every label")
    prev.add_argument("dataset", choices=["synthetic"], help="which dataset")
    prev.add_argument("--out", default="preview.png", help="PNG file to write")
    prev.add_argument("-n", type=int, default=4, help="number of scenes (rows)")
    prev.add_argument("--height", type=int, default=128)
    prev.add_argument("--width", type=int, default=160)
    prev.add_argument("--split", default="train", choices=["train", "val"])
    prev.add_argument("--seed", type=int, default=0)
    prev.set_defaults(func=_cmd_data_preview)
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
