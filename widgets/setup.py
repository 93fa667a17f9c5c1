"""Setup panel: an experiment's settings, generated from the config dataclasses, with a live
readout of what it costs (``icm_core.evaluation.cost.setup_readout``: the counts of
``icm_core.evaluation.accounting``, as ``icm info`` prints them) and its ``icm train`` line.

Every widget comes from a field of ``icm_core.config.schema`` (its ``help`` metadata is the tooltip,
``choices`` a dropdown or toggle buttons, bools checkboxes, numbers number boxes, anything
else a text box in Hydra syntax), so a new config field appears here without widget code.
Hydra groups (experiment, backbone, adapter, ...) are pickers over ``icm_core/conf/``.
The panel's state is a list of overrides, exactly what ``icm train`` takes: group picks, then
the fields the user set that differ from what the groups give.
"""

from __future__ import annotations

import dataclasses
import html
import shlex
import tempfile
import typing
from pathlib import Path
from typing import Any

import ipywidgets as W
from omegaconf import OmegaConf

import icm_core.conf
from icm_core.config import schema as C
from icm_core.config.overrides import (
    GROUPS,
    config_overrides,
    config_values,
    format_override,
    parse_overrides,
    split_command_line,
)
from icm_core.data.check import check_dataset
from icm_core.data.registry import dataset_names, get_dataset
from icm_core.errors import ConfigError, ICMError
from icm_core.evaluation.cost import compose as _compose
from icm_core.evaluation.cost import setup_readout
from icm_core.models.adapters import get_adapter_kind
from icm_core.tasks.registry import DATASET_TASKS, TASKS
from icm_core.training.checkpoint import load_config_file
from icm_core.workspace.queue import QUEUE_MANAGED, run_overrides
from widgets._panel import Panel

LABEL_W = "140px"  # description column: fits the longest field name (checkpoint_every)
FIELD_W = "310px"
BADGE_COLOURS = {"random": "#c62828", "synthetic": "#ef6c00"}  # hub or a file: REAL_COLOUR
REAL_COLOUR = "#2e7d32"
MAX_PROBLEMS = 3  # a dataset check's problems quoted in the message line (icm data check: all)


def group_options(group: str) -> list[str]:
    """The presets of a Hydra group: the YAML files in ``icm_core/conf/<group>/``."""
    folder = Path(icm_core.conf.__file__).parent / group
    return sorted(p.stem for p in folder.glob("*.yaml"))


# -- one widget per config field ------------------------------------------------------------
def _kind(tp, name: str, choices) -> str:
    """Which widget a field gets, from its type (and choices metadata)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        return "bool"
    if tp is int:
        return "int"
    if tp is float:
        return "float"
    if tp is str:
        return "choice" if choices else "text"
    if origin is list and args == (str,) and choices:
        return "toggles"
    if origin is list and args == (int,) and name == "size":
        return "size"
    return "value"  # Optional[...] and other lists: Hydra syntax in a text box (null, [a,b])


class FieldWidget:
    """The widget of one config field: ``value`` is the Python value (setting it as a user would
    triggers the panel); ``ConfigError`` when a text box does not parse."""

    def __init__(self, key: str, tp, help_text: str, choices):
        self.key, self.help = key, help_text
        name = key.rsplit(".", 1)[-1]
        self.kind = _kind(tp, name, choices)
        style = {"description_width": LABEL_W}
        lay = W.Layout(width=FIELD_W)
        common = {"description": name, "tooltip": help_text, "style": style, "layout": lay}
        self.parts: list[W.Widget]
        if self.kind == "bool":
            self.parts = [W.Checkbox(indent=True, **common)]
        elif self.kind == "int":
            self.parts = [W.IntText(**common)]
        elif self.kind == "float":
            self.parts = [W.FloatText(**common)]
        elif self.kind == "choice":
            self.parts = [W.Dropdown(options=list(choices), **common)]
        elif self.kind == "text":
            self.parts = [W.Text(continuous_update=False, **common)]
        elif self.kind == "value":
            self.parts = [W.Text(continuous_update=False, placeholder="null", **common)]
        elif self.kind == "toggles":
            self.buttons = {c: W.ToggleButton(description=c, tooltip=f"{key}: {c}",
                                              layout=W.Layout(width="auto", padding="0 9px",
                                                              flex="0 0 auto"))
                            for c in choices}
            self.parts = list(self.buttons.values())
        else:  # size: two number boxes
            self.parts = [W.IntText(description=name, tooltip=help_text + " (height)", style=style,
                                    layout=W.Layout(width="215px")),
                          W.IntText(tooltip=help_text + " (width)", layout=W.Layout(width="70px"))]
        if self.kind in ("toggles", "size"):
            label = [] if self.kind == "size" else [W.HTML(  # right-aligned like descriptions
                f"<div title='{html.escape(help_text)}' style='text-align:right;padding-right:8px'>"
                f"{name}</div>", layout=W.Layout(width=LABEL_W, flex="0 0 auto"))]
            width = "auto" if self.kind == "toggles" else FIELD_W  # six buttons: wider than a box
            self.widget = W.HBox([*label, *self.parts], layout=W.Layout(width=width))
        else:
            self.widget = self.parts[0]

    @property
    def value(self) -> Any:
        if self.kind == "toggles":
            return [c for c, b in self.buttons.items() if b.value]
        if self.kind == "size":
            return [self.parts[0].value, self.parts[1].value]
        if self.kind == "value":
            text = self.parts[0].value.strip() or "null"
            return parse_overrides([f"{self.key}={text}"])[0][1]
        return self.parts[0].value

    @value.setter
    def value(self, v: Any) -> None:
        if self.kind == "toggles":
            for c, b in self.buttons.items():
                b.value = c in v
        elif self.kind == "size":
            self.parts[0].value, self.parts[1].value = v
        elif self.kind == "value":
            self.parts[0].value = "" if v is None else format_override("k", v)[2:]
        elif self.kind == "text":
            self.parts[0].value = str(v)
        else:
            self.parts[0].value = v

    def observe(self, fn) -> None:
        for p in self.parts:
            p.observe(lambda _change: fn(self.key), names="value")


def _choices(key: str, choices):
    """A field's choices; the dataset and task pickers offer what the registries hold now (a
    dataset or task registered by your own code included), not the schema's built-in list."""
    if key == "data.name":
        return tuple(dataset_names())
    if key == "tasks":
        return tuple(TASKS)
    return choices


def config_fields() -> list[tuple[str, list[tuple[str, Any, str, Any]]]]:
    """(section, [(key, type, help, choices)]) for every config field the panel edits."""
    sections: dict[str, list] = {"experiment": []}

    def walk(cls, prefix: str, section: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                sections.setdefault(f.name, [])
                walk(tp, f"{prefix}{f.name}.", f.name)
            elif f"{prefix}{f.name}" not in QUEUE_MANAGED:
                key = f"{prefix}{f.name}"
                sections[section].append((key, tp, f.metadata.get("help", ""),
                                          _choices(key, f.metadata.get("choices"))))

    walk(C.ExperimentConfig, "", "experiment")
    return list(sections.items())


# -- the panel ------------------------------------------------------------------------------
class SetupPanel(Panel):
    """Args:
    overrides: initial ``icm train`` overrides (default: the packaged defaults).
    live_readout: recompute the readout on every change (~1 s of CPU per new setting on a
        loaded 2-core machine, cached); False shows it only when ``readout()`` is called.
    """

    def __init__(self, overrides=(), live_readout: bool = True):
        super().__init__()  # the message line: what is wrong with the settings
        self.live_readout = live_readout
        self._explicit: dict[str, Any] = {}  # fields the user set, by key
        self.data_report = None  # icm_core.data.check's report of data.root (None: not checked)
        self._data_key: tuple | None = None  # what data_report (or _data_error) was made for
        self._data_error: ICMError | None = None
        self._syncing = False
        self.groups = {g: W.Dropdown(options=[("(default)", "")] + [(o, o) for o in group_options(g)],
                                     description=g, tooltip=f"Hydra preset group {g}= "
                                     f"(icm_core/conf/{g}/); fields set below override it",
                                     style={"description_width": LABEL_W},
                                     layout=W.Layout(width=FIELD_W)) for g in GROUPS}
        for dd in self.groups.values():
            dd.observe(lambda _c: self._refresh() if not self._syncing else None, names="value")
        self.fields: dict[str, FieldWidget] = {}
        boxes = [self._section("presets", [dd for dd in self.groups.values()])]
        for section, specs in config_fields():
            items = []
            for key, tp, help_text, choices in specs:
                fw = FieldWidget(key, tp, help_text, choices)
                fw.observe(self._on_field)
                self.fields[key] = fw
                items.append(fw.widget)
            boxes.append(self._section(section, items))
        self.readout_html = W.HTML(layout=W.Layout(width="100%"))
        self.command = W.Textarea(rows=4, tooltip="the equivalent command line; paste a command "
                                  "line, a config.yaml's text or a run folder here and press Load",
                                  layout=W.Layout(width="100%"))
        self.load_button = W.Button(description="Load", icon="upload", tooltip="read the box above "
                                    "into the panel: icm train ..., YAML text, or a run folder / "
                                    "config.yaml path", layout=W.Layout(width="90px"))
        self.load_button.on_click(lambda _b: self._on_load())
        self.yaml_text = W.Textarea(rows=14, layout=W.Layout(width="100%"))
        yaml_box = W.Accordion([self.yaml_text], titles=("resolved config (YAML)",))
        grid = W.GridBox(boxes, layout=W.Layout(
            grid_template_columns="repeat(auto-fill, minmax(430px, 1fr))", grid_gap="8px",
            width="100%"))
        costs = W.VBox([W.HTML("<b>What it costs</b> (no training: a meta-device build)"),
                        self.message, self.readout_html],
                       layout=W.Layout(flex="1 1 420px", min_width="360px", margin="0 12px 0 0"))
        command = W.VBox([W.HTML("<b>Command line</b>"), self.command, self.load_button, yaml_box],
                         layout=W.Layout(flex="1 1 420px", min_width="360px"))
        top = W.HBox([costs, command], layout=W.Layout(flex_flow="row wrap", width="100%",
                                                      align_items="flex-start"))
        self.widget = W.VBox([top, grid], layout=W.Layout(width="100%"))
        self.set_overrides(list(overrides))

    @staticmethod
    def _section(title: str, items) -> W.VBox:
        return W.VBox([W.HTML(f"<b>{html.escape(title)}</b>"), *items],
                      layout=W.Layout(border="1px solid #ddd", padding="4px"))

    # -- constructors and loading -----------------------------------------------------------
    @classmethod
    def from_overrides(cls, overrides, **kwargs) -> SetupPanel:
        return cls(overrides, **kwargs)

    @classmethod
    def from_command_line(cls, text: str, **kwargs) -> SetupPanel:
        return cls(split_command_line(text), **kwargs)

    def set_overrides(self, overrides) -> None:
        """Replace the panel's state by ``overrides`` (``ConfigError`` for unknown keys or bad
        syntax; an invalid combination of valid keys shows its error in the panel)."""
        groups, fields = {}, {}
        for key, value in parse_overrides(overrides):
            if key in self.groups:
                groups[key] = str(value)
            elif key in self.fields:
                fields[key] = value
            elif key not in QUEUE_MANAGED:  # out_dir/resume: the run queue decides them
                raise ConfigError(f"override {key!r}: not a config field or group here; groups are "
                                  f"{list(self.groups)}, fields e.g. adapter.rank, lmbda")
        for g, value in groups.items():
            if value not in group_options(g):
                raise ConfigError(f"{g}={value}: no such preset; choose one of {group_options(g)}")
        self._syncing = True
        try:
            for g, dd in self.groups.items():
                dd.value = groups.get(g, "")
        finally:
            self._syncing = False
        self._explicit = fields
        self._refresh()

    def load(self, source: str | Path) -> None:
        """Load a command line (``icm train ...`` or bare overrides), YAML text, a config.yaml
        path or a run folder (its queue record, else its newest checkpoint's config)."""
        text = str(source).strip()
        path = Path(text).expanduser() if "\n" not in text and text else None
        try:
            kind = "dir" if path is not None and path.is_dir() else \
                "file" if path is not None and path.is_file() else None
        except OSError:  # e.g. a command line longer than a file name may be
            kind = None
        if kind == "dir":
            self.set_overrides(run_overrides(path))
        elif kind == "file":
            self._load_yaml(path.read_text(errors="replace"), str(path))
        elif "\n" in text or (":" in text.split("=", 1)[0] and "=" not in text.split(":", 1)[0]):
            self._load_yaml(text, "the YAML text")
        else:
            self.set_overrides(split_command_line(text))

    def _load_yaml(self, text: str, where: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:  # the checkpoint reader's checks, unchanged
            (Path(tmp) / "config.yaml").write_text(text)
            try:
                cfg = load_config_file(Path(tmp))
            except ConfigError as e:
                raise ConfigError(str(e).replace(repr(str(Path(tmp) / "config.yaml")), where)) from e
        self.set_overrides(config_overrides(cfg))

    def _on_load(self) -> None:
        try:
            self.load(self.command.value)
        except ICMError as e:
            self._show_error(e)

    # -- state ------------------------------------------------------------------------------
    def _group_overrides(self) -> list[str]:
        return [f"{g}={dd.value}" for g, dd in self.groups.items() if dd.value]

    def _base_values(self) -> dict[str, Any] | None:
        """Field values the group picks alone give (None when they are not a valid config)."""
        try:
            return config_values(_compose(tuple(self._group_overrides())))
        except ICMError:
            return None

    def overrides(self) -> list[str]:
        """The ``icm train`` overrides of the panel: group picks, then the fields set by hand
        that differ from what the groups give."""
        base = self._base_values()
        fields = [format_override(k, self._explicit[k]) for k in self.fields
                  if k in self._explicit and (base is None or base[k] != self._explicit[k])]
        return self._group_overrides() + fields

    def command_line(self) -> str:
        return "icm train " + " ".join(shlex.quote(o) for o in self.overrides())

    def config(self) -> C.ExperimentConfig:
        """The resolved config (``ConfigError`` when the panel's combination is invalid)."""
        return _compose(tuple(self.overrides()))

    def yaml(self) -> str:
        return OmegaConf.to_yaml(OmegaConf.structured(self.config()))

    def readout(self) -> dict:
        """``setup_readout(self.overrides())``: what the panel shows (``ConfigError`` if invalid)."""
        return setup_readout(self.overrides())

    # -- callbacks ----------------------------------------------------------------------------
    def _on_field(self, key: str) -> None:
        if self._syncing:
            return
        try:
            self._explicit[key] = self.fields[key].value
        except ICMError as e:
            self._show_error(e)
            return
        self._refresh()

    def _show_error(self, e: BaseException) -> None:
        self._say(f"{type(e).__name__}: {e}", error=True)

    def _refresh(self) -> None:
        """Recompose, show the resolved values, the command line, the YAML and the readout."""
        base = self._base_values()
        if base is not None:  # a field set back to what the presets give is no override
            self._explicit = {k: v for k, v in self._explicit.items() if base[k] != v}
        self.command.value = self.command_line()
        try:
            cfg = self.config()
            values = config_values(cfg)
            self._syncing = True
            try:
                for key, fw in self.fields.items():
                    fw.value = values[key]
            finally:
                self._syncing = False
            self._explicit = {k: values[k] for k in self._explicit}  # as the config types them
            self.yaml_text.value = self.yaml()
            self.readout_html.value = readout_html(self.readout()) if self.live_readout else ""
            self._say(*self._data_status(cfg))
        except ICMError as e:
            self.readout_html.value = "<i style='color:#777'>no readout: the settings are invalid</i>"
            self._show_error(e)


    # -- the dataset --------------------------------------------------------------------------
    def check_data(self) -> None:
        """Check ``data.root`` again (after files were added or fixed) and show the result."""
        self._data_key = None
        self._refresh()

    def dataset_tasks(self, cfg: C.ExperimentConfig | None = None) -> tuple[str, ...]:
        """The tasks the configured dataset has: its label space's, and of a checked folder
        those with label files in the train split."""
        cfg = cfg or self.config()
        tasks = DATASET_TASKS.get(cfg.data.label_space, tuple(TASKS))
        counts = (self.data_report.counts.get("train") if self.data_report is not None and
                  self._data_key == self._data_check_key(cfg) else None)
        if counts:
            tasks = tuple(t for t in tasks if counts.get(t, 0) > 0)
        return tasks

    @staticmethod
    def _data_check_key(cfg) -> tuple:
        d = cfg.data
        return (d.name, d.root, d.layout, repr(d.columns), d.labels)

    def _data_status(self, cfg) -> tuple[str, bool]:
        """Validate ``data.root`` through ``icm_core.data.check`` (once per dataset, root and
        layout), offer the dataset's tasks, and return the message line (text, error)."""
        entry = get_dataset(cfg.data.name)
        root = cfg.data.root
        text, error = "", False
        if entry.cls is not None and entry.name != "synthetic" and not root:
            text, error = (f"data={entry.name} needs data.root: the dataset folder "
                           f"({entry.help})"), True
        elif root and entry.cls is not None and entry.name != "synthetic":
            key = self._data_check_key(cfg)
            if key != self._data_key:
                self._data_key, self.data_report, self._data_error = key, None, None
                try:
                    if entry.name == "hf" and not Path(root).expanduser().exists():
                        raise _NotChecked(f"data.root={root!r} is no local path: a hub id is "
                                          "checked when it is loaded")
                    self.data_report = check_dataset(
                        root, entry.name, layout=cfg.data.layout, labels=cfg.data.labels,
                        columns=dict(cfg.data.columns or {}))
                except ICMError as e:
                    self._data_error = e
            text, error = self._report_text(root)
        self._offer_tasks(cfg)
        return text, error

    def _report_text(self, root: str) -> tuple[str, bool]:
        e, r = self._data_error, self.data_report
        if isinstance(e, _NotChecked):
            return str(e), False
        if e is not None:
            return f"data.root: {type(e).__name__}: {e}", True
        if r is None:
            return "", False
        counts = "; ".join(f"{split} {c.get('images', c.get('rows', 0))} images"
                           for split, c in r.counts.items())
        head = f"{r.dataset} at {root} ({r.layout} layout): {counts}"
        if r.ok:
            return head + "; no missing or malformed files", False
        lines = [f"[{split}] {p}" for split, p in r.problems[:MAX_PROBLEMS]]
        more = (f"\n  ... {len(r.problems) - MAX_PROBLEMS} more" if len(r.problems) > MAX_PROBLEMS
                else "")
        return (f"{head}\n{len(r.problems)} problem(s):\n  " + "\n  ".join(lines) + more +
                f"\n(icm data check {root} --dataset {r.dataset} lists them all)"), True

    def _offer_tasks(self, cfg) -> None:
        """Show the task buttons of the dataset's tasks (and any task selected now)."""
        fw = self.fields.get("tasks")
        if fw is None or fw.kind != "toggles":
            return
        offered = self.dataset_tasks(cfg)
        for t, b in fw.buttons.items():
            b.layout.display = "" if t in offered or b.value else "none"
            b.tooltip = (f"tasks: {t}" if t in offered else
                         f"tasks: {t} (data={cfg.data.name} has no {t} labels here)")


class _NotChecked(ICMError):
    """A data.root the panel does not check (a hub id: it would download)."""


# -- the readout as HTML ----------------------------------------------------------------------
def _bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


def _adapter_text(a: dict) -> str:
    """'dora, rank 8, q,k,v'; a kind without rank and targets shows what it trains instead."""
    kind = get_adapter_kind(a["mode"])
    if kind.low_rank:
        return f"{kind.name}, rank {a['rank']}, {','.join(a['targets'])}"
    return f"{kind.name}: {html.escape(kind.description)}"


def readout_html(r: dict) -> str:
    badge = r["weights_badge"]
    colour = BADGE_COLOURS.get(badge, REAL_COLOUR)
    notice = (f"<div style='font-size:90%;color:{colour}'>{html.escape(r['weights_notice'])}</div>"
              if r.get("weights_notice") else "")
    h, w = r["image_size"]
    s = r["storage"]
    k = s["k"]
    rows = [
        ("backbone", f"{html.escape(r['backbone'])} <span style='background:{colour};color:white;"
                     f"padding:0 6px;border-radius:8px'>{badge}</span>{notice}"),
        ("adapter", _adapter_text(r["adapter"])),
        ("trainable backbone", f"{r['trainable_backbone_params']:,} of {r['backbone_params']:,} "
                               f"({r['trainable_percent']:.4g} %)"),
        ("adapter file", f"{_bytes(r['adapter_bytes'])} (safetensors, {r['adapter_bytes']:,} B)"),
        ("task head", f"{r['head_params']:,} parameters"),
        (f"storage, {k} tasks", f"{_bytes(s['storage_bytes'])} vs {_bytes(s['full_copies_bytes'])}"
                                f" for {k} full copies ({s['ratio']:.2f}x)"),
        ("decoder", f"{r['decoder_gflops']:.4g} GFLOPs per {h}x{w} image ({r['decoder']})"),
        ("tasks", f"{', '.join(r['tasks'])} on {r['dataset']}"
                  f"{'' if r['compression'] else ' (no compression)'}"),
    ]
    body = "".join(f"<tr><td style='color:#555;padding-right:8px;vertical-align:top'>{a}</td>"
                   f"<td>{b}</td></tr>" for a, b in rows)
    return f"<table style='font-size:13px;line-height:1.35'>{body}</table>"


__all__ = ["SetupPanel", "FieldWidget", "config_fields", "group_options", "readout_html"]
