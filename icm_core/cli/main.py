"""The ``icm`` command: argument parsing, then one library call a command. Bad input ends with
a one-line ``ErrorName: message``, no traceback."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from icm_core.baselines.classical import codecs_help
from icm_core.cli.hydra_app import pretrain_app, train_app
from icm_core.config import load_config
from icm_core.config.overrides import format_override, parse_overrides
from icm_core.config.schema import DataConfig
from icm_core.data.check import check_dataset
from icm_core.data.registry import dataset_names, get_dataset
from icm_core.errors import ConfigError, ICMError
from icm_core.evaluation.cost import model_info
from icm_core.inspection.outputs import (
    decode_file,
    encode_file,
    write_data_preview,
)
from icm_core.studies.compare import compare
from icm_core.studies.demo import DEFAULT_STEPS, DEFAULT_VR_STEPS, run_demo
from icm_core.studies.evaluate_run import evaluate_run
from icm_core.training.bench import bench, parse_measure, parse_size
from icm_core.training.bench import compare as compare_side_by_side
from icm_core.training.checkpoint import load_config_file, resolve_checkpoint_dir


def data_config(overrides, base: DataConfig | None = None, command: str = "icm") -> DataConfig:
    """The ``DataConfig`` of ``data=NAME`` and ``data.KEY=VALUE`` overrides (as ``icm train``
    reads them), on top of ``base`` (a run's data config) unless ``data=NAME`` picks another
    dataset; any other key is refused."""
    pairs = parse_overrides(overrides)
    bad = [k for k, _ in pairs if k != "data" and not k.startswith("data.")]
    if bad:
        raise ConfigError(f"{command} takes data=NAME and data.KEY=VALUE overrides, not {bad}; "
                          "e.g. data=nyud data.root=/data/NYUD_MT")
    keep = [] if base is None or any(k == "data" for k, _ in pairs) else [
        format_override(f"data.{f.name}", getattr(base, f.name))
        for f in dataclasses.fields(DataConfig)]
    return load_config([*keep, *overrides]).data


def _cmd_data_preview(args) -> int:
    name = [x for x in args.spec if "=" not in x]
    overrides = [x for x in args.spec if "=" in x]
    if len(name) > 1:
        raise ConfigError(f"icm data preview {' '.join(args.spec)}: name one dataset (or give "
                          f"data=NAME); datasets are {dataset_names()}")
    given = {k for k, _ in parse_overrides(overrides)}
    defaults = {"data.size": [args.height or 128, args.width or 160], "data.augment": False,
                "data.strict": False, "data.workers": 0, "data.seed": args.seed,
                "data.train_length": args.n, "data.val_length": args.n}
    if args.height or args.width:
        given.discard("data.size")
    extra = [format_override(k, v) for k, v in defaults.items() if k not in given]
    head = [f"data.name={get_dataset(name[0]).name}"] if name else []
    root = [format_override("data.root", args.root)] if args.root else []
    cfg = data_config([*head, *overrides, *extra, *root], command="icm data preview")
    n, tasks = write_data_preview(args.out, cfg, split=args.split, n=args.n)
    print(f"wrote {args.out} ({n} {cfg.name} samples x {len(tasks)} tasks)")
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
    print(json.dumps(model_info(args.overrides), indent=2))
    return 0


def _cmd_bench(args) -> int:


    size = parse_size(args.size) if args.size else None
    if args.compare:
        result = compare_side_by_side(args.overrides, device=args.device, size=size,
                                      variants=tuple(v.strip() for v in args.compare.split(",")
                                                     if v.strip()))
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
    return _run_hydra(train_app, "icm train", args.overrides)


def _cmd_pretrain(args) -> int:
    return _run_hydra(pretrain_app, "icm pretrain", args.overrides)


def _cmd_pretrain_codec(args) -> int:
    from tqdm.auto import tqdm

    from icm_core.training.codec_init import pretrain_codec, save_codec

    cfg = load_config(["experiment=quick", *args.overrides])
    with tqdm(total=args.steps, desc="codec", dynamic_ncols=True) as bar:
        def progress(v: dict) -> None:
            bar.set_postfix(bpp=f"{v['bpp']:.3f}", psnr=f"{v['psnr']:.1f}")
            bar.update(1)

        head, history = pretrain_codec(cfg, args.steps, args.lmbda, progress=progress)
    out = save_codec(head, cfg, args.out, history)
    last = history[-1]
    print(f"wrote {out}: {last['bpp']:.4f} bpp, PSNR {last['psnr']:.2f} dB at step "
          f"{last['step']}; train with train.codec_init={out}")
    return 0


def _cmd_eval(args) -> int:
    run_data = load_config_file(resolve_checkpoint_dir(args.checkpoint)).data
    data = data_config(args.overrides, run_data, "icm eval") if args.overrides else None
    for w in evaluate_run(args.checkpoint, args.out, max_images=args.max_images, data=data,
                          rates=args.rates):
        c = w.curve
        for b, v, pt in zip(c.bpp, c.values, c.points or [{}] * len(c.bpp)):
            bpp = "n/a (no compression)" if b is None else f"{b:.4f}"
            at = "" if pt.get("rate") is None else f" rate={pt['rate']:.3f}"
            print(f"{c.task}:{at} {c.metric}={v:.3f} bpp={bpp} -> {w.json_path}")
    return 0


def _writable_path(path, kind: str) -> Path:
    """``-o path`` as a Path, refused up front when an existing entry is of the wrong kind."""
    path = Path(path)
    if kind == "file" and path.is_dir():
        raise ConfigError(f"-o {path}: is a folder; give the name of the .icm file to write")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise ConfigError(f"-o {path}: is a file; give a folder for the decoded predictions")
    return path


def _cmd_encode(args) -> int:
    out = _writable_path(args.output, "file")
    data = encode_file(args.image, args.checkpoint, out, task=args.task, rate=args.rate)
    s = data.sections
    at = "" if data.rate is None else f", rate {data.rate:.4g}"
    print(f"{out}: {len(data)} bytes, {data.bpp:.4f} bpp, task {data.task}{at} (header "
          f"{s.header}, z {s.z}, step 1 {s.step1}, step 2 {s.step2} bytes)")
    return 0


def _cmd_decode(args) -> int:
    outdir = _writable_path(args.output, "folder")
    decoded = decode_file(args.file, args.checkpoint, outdir)
    at = "" if decoded.rate is None else f" at rate {decoded.rate:.4g}"
    print(f"decoded {decoded.task} {decoded.shape}{at} -> {outdir}")
    return 0


def _cmd_demo(args) -> int:
    report = run_demo(args.out, steps=args.steps, lambdas=args.lambdas, task=args.task,
                      extra_overrides=args.overrides, variable_rate=not args.per_lambda,
                      rate_points=args.rate_points)
    print(f"report: {report}")
    return 0


def split_overrides(words) -> tuple[list[str], list[str]]:
    """Command-line words -> (paths, ``key=value`` overrides); an existing path with '=' in its
    name stays a path."""
    paths, overrides = [], []
    for w in words:
        (overrides if "=" in w and not Path(w).exists() else paths).append(w)
    return paths, overrides


def _cmd_compare(args) -> int:
    try:
        scales = [float(s) for s in args.scales.split(",") if s.strip()]
    except ValueError as e:
        raise ConfigError(f"--scales {args.scales!r}: give numbers in (0, 1], e.g. 1,0.5,0.25") from e
    codecs = None if args.codecs is None else args.codecs.split(",")
    runs, overrides = split_overrides([*args.runs, *(args.baseline or ())])
    bad = [o for o in overrides if not o.startswith("data")]
    if bad:
        raise ConfigError(f"icm compare takes data=... overrides only (the held-out images); "
                          f"got {bad}")
    baseline = [r for r in runs if r in (args.baseline or ())]
    data = load_config(overrides).data if overrides else None
    result = compare([r for r in runs if r not in baseline], baseline, codecs=codecs,
                     scales=scales, ladder=args.ladder, preprocessor=args.preprocessor,
                     images=args.images, size=args.size, out=args.out, split=args.split,
                     seed=args.seed, data=data,
                     metric_options=({"boundary": {"n_thresholds": args.boundary_thresholds}}
                                     if args.boundary_thresholds else None))
    print(f"wrote {result.out}: <method>-<task>.json, bd_rate.csv, ra-<task>.html, complexity.csv")
    return 0


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

    pc = sub.add_parser("pretrain-codec", help="pretrain a task-agnostic codec head (it "
                        "reconstructs the image) on the scenes' pretrain split; runs start from "
                        "it with train.codec_init=FILE")
    pc.add_argument("overrides", nargs="*", help="Hydra overrides on experiment=quick: the "
                    "backbone and head sizes, data.size, train.head_lr, train.batch_size")
    pc.add_argument("--steps", type=int, default=2000)
    pc.add_argument("--lmbda", type=float, default=0.0035,
                    help="R + lmbda * 255^2 * MSE (CompressAI's scale)")
    pc.add_argument("--out", default="codec.safetensors", help="the file to write")
    pc.set_defaults(func=_cmd_pretrain_codec)

    ev = sub.add_parser("eval", help="evaluate a checkpoint at real bitstream rates")
    ev.add_argument("checkpoint", help="run folder written by 'icm train' (or one of its ckpt-*)")
    ev.add_argument("--max-images", type=int, default=None, help="evaluate on the first N val images")
    ev.add_argument("--out", default=None, help="folder for results-<task>.json/.csv (default: the run)")
    ev.add_argument("--rates", type=_rates_arg, default=None,
                    help="variable-rate runs: N evenly spaced rates in [0, 1], or a comma list "
                    "of rates (default: 7 evenly spaced)")
    ev.add_argument("overrides", nargs="*", help="the data to evaluate on (default: the run's): "
                    "data=NAME and data.KEY=VALUE, e.g. data.root=/data/NYUD_MT")
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

    demo = sub.add_parser("demo", help="train one variable-rate quick model (synthetic scenes, "
                          "or data=NAME data.root=DIR), draw its curve, write a report")
    demo.add_argument("--out", default="demo_out")
    demo.add_argument("--steps", type=int, default=None,
                      help=f"training steps (default: {DEFAULT_VR_STEPS} for the variable-rate "
                      f"model; {DEFAULT_STEPS} per model with --per-lambda)")
    demo.add_argument("--task", default="semseg", help="semseg, depth, normals, boundary, "
                      "human_parts or saliency (default: semseg)")
    demo.add_argument("--lambdas", type=float, nargs="+", default=None,
                      help="the variable-rate model's anchors (default: the task's "
                      "icm_core.studies.demo.TASK_RATE_LAMBDAS; semseg 0.0312 0.125 0.5 2), or with "
                      "--per-lambda the ladder (TASK_LAMBDAS; semseg 0.25 1 4)")
    demo.add_argument("--rate-points", type=int, default=7,
                      help="evenly spaced rates in [0, 1] the curve is drawn at (default 7)")
    demo.add_argument("--per-lambda", action="store_true",
                      help="the paper's protocol: one model per lambda of the task's ladder "
                      "instead of one variable-rate model")
    demo.add_argument("overrides", nargs="*",
                      help="config overrides on top of the quick preset, e.g. backbone=tiny_random "
                      "or data=nyud data.root=/data/NYUD_MT")
    demo.set_defaults(func=_cmd_demo)

    cmp = sub.add_parser("compare", help="the learned codec against classical codecs (+ baseline, "
                         "+ pre-processor) on the same held-out scenes: JSON, BD-rates, plots")
    cmp.add_argument("runs", nargs="+", help="learned-codec run folders (one per lambda), or "
                     "folders of them (e.g. icm demo's output); data=... overrides pick real "
                     "held-out images (data=nyud data.root=DIR, data=folder data.root=PHOTOS)")
    cmp.add_argument("--baseline", nargs="+", default=None, help="uncompressed run folders "
                     "(model.compression=false), one per task: decoded images are fed to them")
    cmp.add_argument("--codecs", default=None, help=codecs_help())
    cmp.add_argument("--scales", default="1,0.5,0.25", help="resolution ladder (comma list)")
    cmp.add_argument("--ladder", choices=("small", "full"), default="small",
                     help="small: each codec's registered small ladder (4-5 qualities); full: "
                     "every quality of its ladder")
    cmp.add_argument("--preprocessor", default="none", help="none, train (per task, against its "
                     "frozen baseline, one per codec with a differentiable proxy, the JPEG one "
                     "for the others; saved in --out) or a saved pre-processor file/folder")
    cmp.add_argument("--images", type=int, default=16, help="how many held-out images")
    cmp.add_argument("--split", choices=("test", "val"), default="test", help="test: report on "
                     "scenes nothing chose anything on; val: make choices (lambdas, thresholds)")
    cmp.add_argument("--seed", type=int, default=0, help="seed of the held-out synthetic scenes "
                     "(another seed, other scenes; the same for every method)")
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
    prev.add_argument("spec", nargs="+", metavar="DATASET|data=NAME data.KEY=VALUE",
                      help=f"which dataset ({', '.join(dataset_names(aliases=True))}), by name or "
                      "as icm train takes it: data=nyud data.root=/data/NYUD_MT")
    prev.add_argument("--root", default=None, help="the dataset folder (real datasets; = data.root)")
    prev.add_argument("--out", default="preview.png", help="PNG file to write")
    prev.add_argument("-n", type=int, default=4, help="number of samples (rows)")
    prev.add_argument("--height", type=int, default=None, help="default 128 (or data.size)")
    prev.add_argument("--width", type=int, default=None, help="default 160 (or data.size)")
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
