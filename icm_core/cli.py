"""The ``icm`` command. Bad input ends with a one-line ``ErrorName: message``, no traceback."""

from __future__ import annotations

import argparse
import sys

from icm_core.errors import ICMError


def _cmd_data_preview(args) -> int:
    from icm_core.data.synthetic import SyntheticScenes
    from icm_core.io import atomic_path
    from icm_core.viz import sample_grid

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


def model_info(overrides) -> dict:
    """The resolved model described without building it in memory (meta device, no weights)."""
    from icm_core.config import load_config
    from icm_core.models.adapters import adapter_state_dict
    from icm_core.models.backbone import weights_available
    from icm_core.models.icm import build_model, serialized_size

    cfg = load_config(overrides)
    model = build_model(cfg, "meta")
    report = model.trainable_parameters(model.tasks[0])
    return {
        "experiment": cfg.name,
        "backbone": cfg.backbone.name,
        "pretrained": weights_available(cfg.backbone),
        "adapter": {"mode": cfg.adapter.mode, "rank": cfg.adapter.rank, "targets": list(cfg.adapter.targets)},
        "backbone_params": report.backbone_params,
        "trainable_backbone_params": report.trainable_backbone_params,
        "trainable_percent": round(report.trainable_percent, 4),
        "adapter_bytes": serialized_size(adapter_state_dict(model.backbone, model.tasks[0])),
        "head_params": sum(p.numel() for p in model.heads[model.tasks[0]].parameters()),
        "tasks": list(model.tasks),
        "dataset": cfg.data.name,
        "compression": cfg.model.compression,
        "decoder": cfg.model.decoder,
    }


def _cmd_info(args) -> int:
    import json

    print(json.dumps(model_info(args.overrides), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="icm",
        description="Image coding for machines with low-rank adapted pre-trained backbones.",
    )
    sub = p.add_subparsers(dest="command", required=True)

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
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ICMError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
