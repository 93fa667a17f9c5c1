"""Files a person opens to look at what the codec and the data produce: an image coded into an
``.icm`` stream, a stream decoded into its task's prediction (a PNG of class indices or an NPY
of values, plus a coloured preview), and a grid of dataset samples with every label.

``icm encode``, ``icm decode`` and ``icm data preview`` are these functions behind arguments.
Every file is written atomically; a folder that cannot be written is a ``ConfigError`` that
names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from icm_core.codec import coder
from icm_core.codec.coder import EncodedImage
from icm_core.config.schema import DataConfig
from icm_core.data.images import load_image
from icm_core.data.registry import get_dataset, make_dataset
from icm_core.errors import BitstreamError, ConfigError
from icm_core.files import atomic_path, write_bytes
from icm_core.tasks.registry import get_task
from icm_core.training.checkpoint import load_checkpoint
from icm_core.viz.images import colorize, sample_grid


def _cannot_write(path: Path, e: OSError) -> ConfigError:
    return ConfigError(f"{path}: cannot write there ({e.strerror or e}); give another path")


def encode_file(image: str | Path, checkpoint: str | Path, out: str | Path,
                task: str | None = None, rate: float | None = None) -> EncodedImage:
    """Code the image file ``image`` for ``task`` (default: the checkpoint's first) with the
    model of ``checkpoint`` into the stream file ``out``; -> the stream. ``rate`` in [0, 1]:
    a variable-rate model's rate (default 1, its highest); refused for a fixed-rate model."""
    out = Path(out)
    img = load_image(image)  # before the checkpoint: a bad image fails at once
    model, _ = load_checkpoint(checkpoint)
    data = coder.encode(model, img, task=task or model.tasks[0], rate=rate)
    try:
        write_bytes(out, data)
    except OSError as e:
        raise _cannot_write(out, e) from e
    return data


def write_prediction(outdir: str | Path, stem: str, task: str, prediction: torch.Tensor) -> list[Path]:
    """A decoded (activated) prediction (C, H, W) -> files in ``outdir``; -> their paths.

    Class tasks: ``<stem>.<task>.png`` (uint8 class indices, H x W); value tasks:
    ``<stem>.<task>.npy`` (float32, C x H x W). Both: ``<stem>.<task>.preview.png``, coloured
    as the workbench shows the task.
    """
    outdir = Path(outdir)
    pred = prediction.detach().cpu()
    if get_task(task).kind == "classes":
        main = outdir / f"{stem}.{task}.png"
        arr = pred.argmax(0).numpy().astype(np.uint8)
    else:
        main = outdir / f"{stem}.{task}.npy"
        arr = pred.numpy().astype(np.float32)
    preview = outdir / f"{stem}.{task}.preview.png"
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        with atomic_path(main) as tmp:
            if main.suffix == ".png":
                Image.fromarray(arr).save(tmp, format="PNG")
            else:
                with open(tmp, "wb") as f:
                    np.save(f, arr, allow_pickle=False)
        with atomic_path(preview) as tmp:
            Image.fromarray(colorize(task, pred)).save(tmp, format="PNG")
    except OSError as e:
        raise _cannot_write(outdir, e) from e
    return [main, preview]


@dataclass(frozen=True)
class DecodedFiles:
    task: str
    shape: tuple[int, ...]  # of the prediction (C, H, W)
    files: list[Path]
    rate: float | None = None  # the rate the stream records (variable-rate models)


def decode_file(stream: str | Path, checkpoint: str | Path, outdir: str | Path) -> DecodedFiles:
    """Decode the ``.icm`` file ``stream`` with the model of ``checkpoint`` and write its
    prediction into ``outdir`` (``write_prediction``, named after the stream's file)."""
    stream = Path(stream)
    try:
        data = stream.read_bytes()
    except OSError as e:
        raise BitstreamError(f"{stream}: cannot read the stream ({e.strerror})") from e
    model, _ = load_checkpoint(checkpoint)
    out = coder.decode(model, data)
    pred = get_task(out.task).activate(out.prediction)[0].cpu()
    return DecodedFiles(out.task, tuple(pred.shape),
                        write_prediction(outdir, stream.stem, out.task, pred), out.rate)


def write_data_preview(out: str | Path, data: DataConfig, *, split: str = "train",
                       n: int = 4) -> tuple[int, list[str]]:
    """A PNG grid of ``n`` samples of the dataset ``data`` describes (rows) with the image and
    every label it has (columns) -> ``out``; -> (samples shown, tasks shown). Unlabelled
    datasets (a folder of photos) show their validation images."""
    entry = get_dataset(data.name)
    ds = make_dataset(data, split if entry.labelled else "val", None)
    n = min(n, len(ds))
    tasks = list(getattr(ds, "tasks_available", ds.tasks))
    grid = sample_grid([ds[i] for i in range(n)], tasks)
    out = Path(out)
    try:
        with atomic_path(out) as tmp:
            grid.save(tmp, format="PNG")
    except OSError as e:
        raise _cannot_write(out, e) from e
    return n, tasks


__all__ = ["DecodedFiles", "decode_file", "encode_file", "write_data_preview",
           "write_prediction"]
