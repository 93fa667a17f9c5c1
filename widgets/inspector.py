"""Inspector panel: look inside a trained model, one image and one task at a time.

Views: Predictions, Bits, Latents, Attention, DoRA. Thin: everything shown is computed by
``icm_core.inspection`` (cached per weights and image) and drawn by ``icm_core.viz.inspector``;
this file only wires controls to figures::

    panel = InspectorPanel()
    panel.open("runs/depth")          # a run folder, a ckpt-* folder or a live ICMModel
    panel                             # display it in a notebook
    panel.select_view("Bits")         # what clicking a view's tab does
    panel.rate.value = 0.3            # a variable-rate model: re-code the image at rate 0.3

The rate slider (Bits view) codes the image at any rate of a variable-rate model and every view
follows it; a fixed-rate model has one rate, so it is disabled there, and the lambda slider
moves along the run's lambda sweep instead (hidden for a variable-rate model: its rate slider
is that sweep).
"""

from __future__ import annotations

from pathlib import Path

import ipywidgets as W
import plotly.graph_objects as go

from icm_core.errors import ICMError
from icm_core.inspection import attention as att
from icm_core.inspection import dora
from icm_core.inspection import image as ins
from icm_core.inspection.error_maps import error_map, error_unit
from icm_core.models import rate as vr
from icm_core.models.adapters import get_adapter_kind
from icm_core.viz import inspector as figs
from widgets._figure import drawn, live_figure
from widgets._panel import Panel

VIEWS = ("Predictions", "Bits", "Latents", "Attention", "DoRA")
FIXED_RATE = ("rate: this model has one fixed rate (one model per lambda: the lambda slider moves "
              "along its sweep); a variable-rate run (experiment=quick_vr) codes at any rate")
PLANES = ["y_hat", "coded mean", "coded scale", "residual", "bits", "hyper mean", "hyper scale",
          "spatial mean", "spatial scale", "step 1"]


class InspectorPanel(Panel):
    """Args:
    workspace: the workbench's workspace (kept for the Runs panel; not needed to inspect).
    """

    def __init__(self, workspace=None):
        super().__init__()  # the message line: what is shown, or why it cannot be
        self.workspace = workspace
        self.model = None
        self.run_dir: Path | None = None
        self.sweep: list[tuple[float, Path]] = []
        self.insp: ins.Inspection | None = None
        self.query: att.QueryWeights | None = None
        self._source = 0
        self._say("open a run folder or a model")
        self.source = W.Text(value="0", description="image", continuous_update=False,
                             placeholder="a sample index of the run's dataset or a photo path",
                             tooltip="a validation sample of the run's dataset by its index (with "
                             "its labels), or the path of any photo (no labels: no error maps)")
        self.upload = W.FileUpload(accept="image/*", multiple=False, description="upload photo")
        self.task = W.Dropdown(description="task", options=[])
        self.source.observe(lambda _: self._on_source(), names="value")
        self.upload.observe(lambda _: self._on_upload(), names="value")
        self.task.observe(lambda _: self.refresh(), names="value")
        self._build_views()
        self.tabs = W.Tab(children=[self.pred_box, self.bits_box, self.lat_box, self.att_box,
                                    self.dora_box], titles=VIEWS)
        self._stale: set[str] = set()
        self.tabs.observe(lambda _: self._render(), names="selected_index")
        self.widget = W.VBox([W.HBox([self.source, self.upload, self.task]), self.message,
                              self.tabs])

    # -- controls ------------------------------------------------------------------------
    def _build_views(self) -> None:
        self.pred_box = W.VBox()
        self.opacity = W.FloatSlider(0.6, min=0, max=1, step=0.05, description="opacity")
        self.bits_which = W.ToggleButtons(options=[("all", "total"), ("step 1", "step1"),
                                                   ("step 2", "step2")], description="map")
        self.lmbda = W.SelectionSlider(options=[("-", -1)], description="lambda", disabled=True)
        self.rate = W.FloatSlider(1.0, min=0, max=1, step=0.05, description="rate",
                                  disabled=True, continuous_update=False, readout_format=".2f",
                                  tooltip="a variable-rate model codes at any rate: 0 its lowest "
                                  "trained rate, 1 its highest")
        self.rate_note = W.HTML()
        self.bits_text = W.HTML()
        self.rate.observe(lambda _: self._on_rate(), names="value")
        self.opacity.observe(lambda _: self._set_opacity(), names="value")
        self.bits_which.observe(lambda _: self._show_bits(self._bits_insp), names="value")
        self.lmbda.observe(lambda _: self._on_lambda(), names="value")
        self.bits_box = W.VBox()
        self.channel = W.Dropdown(description="channel")
        self.channel.observe(lambda _: self._show_channel(), names="value")
        self.lat_box = W.VBox()
        self.att_source = W.ToggleButtons(options=["decoder", "backbone"], description="attention")
        self.stage = W.Dropdown(description="stage")
        self.head = W.Dropdown(description="head")
        self.fused = W.ToggleButtons(options=[("after fusion", True), ("before fusion", False)])
        self.block = W.Dropdown(description="block")
        self.use_rollout = W.Checkbox(False, description="rollout")
        self.att_text = W.HTML()
        for w in (self.att_source, self.stage, self.head, self.fused, self.block, self.use_rollout):
            w.observe(lambda _: self._on_attention_control(), names="value")
        self.att_box = W.VBox()
        self.layer = W.Dropdown(description="layer")
        self.task_b = W.Dropdown(description="vs task")
        self.dora_text = W.HTML()
        self.layer.observe(lambda _: self._show_dora(), names="value")
        self.task_b.observe(lambda _: self._show_dora(), names="value")
        self.dora_box = W.VBox()
        self._bits_insp = None

    # -- opening -------------------------------------------------------------------------
    def open(self, run_or_model, image=None) -> InspectorPanel:
        """A run folder (its newest checkpoint), a ckpt-* folder or a live ``ICMModel``;
        ``image``: what to show first (as ``set_image``; None: the one shown now, at first
        validation sample 0 of the run's dataset)."""
        if isinstance(run_or_model, str | Path):
            self.run_dir = Path(run_or_model)
            self.model = ins.load_run(self.run_dir)
            self.sweep = ins.sweep_runs(self.run_dir)
        else:
            self.model, self.run_dir, self.sweep = run_or_model, None, []
        m = self.model
        self._refreshing = True
        if image is not None:
            if isinstance(image, int | str | Path):
                self.source.value = str(image)  # the box shows it (no refresh yet)
            self._source = image
        self.task.options = list(m.tasks)
        self.task.value = m.tasks[0]
        self.task_b.options = ["-", *m.tasks]
        self.task_b.value = "-"
        layers = dora.adapted_layers(m) if get_adapter_kind(m.cfg.adapter.mode).low_rank else []
        self.layer.options = layers
        self.layer.value = layers[0] if layers else None
        self.block.options = list(range(len(m.backbone.vit.blocks)))
        self.block.value = self.block.options[-1]
        lam = [(f"{lm:g}", i) for i, (lm, _) in enumerate(self.sweep)] or [("-", -1)]
        here = [i for i, (_, d) in enumerate(self.sweep)
                if self.run_dir is not None and d.resolve() == self.run_dir.resolve()]
        self.lmbda.options = lam
        self.lmbda.value = here[0] if here else lam[0][1]
        variable = bool(m.variable_rate)
        self.lmbda.disabled = variable or len(self.sweep) < 2
        self.lmbda.layout.display = "none" if variable else None
        self.rate.disabled = not variable
        self.rate.value = 1.0  # a newly opened model: its highest rate
        self._note_rate()
        self._refreshing = False
        self.refresh()
        return self

    def set_image(self, source) -> None:
        """A validation sample index of the run's dataset (``data.name``, with its labels), a
        photo's path or bytes, a PIL image or a tensor (as ``resolve_image``)."""
        self._source = source
        self.refresh()

    def _on_source(self) -> None:
        v = self.source.value.strip()
        self.set_image(int(v) if v.isdigit() else v)

    def _on_upload(self) -> None:
        if self.upload.value:
            self.set_image(bytes(self.upload.value[0]["content"]))

    # -- refresh -------------------------------------------------------------------------
    def refresh(self) -> None:
        if self.model is None or getattr(self, "_refreshing", False) or not self.task.value:
            return
        try:
            self.insp = ins.inspect_image(self.model, self._source, self.task.value,
                                          rate=self.rate_value)
        except ICMError as e:
            self._say(f"{type(e).__name__}: {e}", error=True)
            return
        i = self.insp
        what = str(self.run_dir) if self.run_dir else "live model"
        labels = "" if i.source.labelled else " · no labels: error maps skipped"
        at = "" if i.rate is None else f" at rate {i.rate:.3g}"
        self._say(f"{what} · {i.source.name} · {i.task} · {i.bits.total_bytes} bytes, "
                  f"{i.bits.bpp:.4f} bpp{at}{labels}")
        self._stale = set(VIEWS)
        self._render()

    def select_view(self, view: str) -> None:
        """Select a view's tab (it is drawn when first shown after a change)."""
        if view not in VIEWS:
            raise KeyError(f"no inspector view {view!r}; views are {list(VIEWS)}")
        self.tabs.selected_index = VIEWS.index(view)
        self._render()

    def show(self, view: str | None = None) -> None:
        """Display the panel (the Panel contract); ``show(view)`` selects a view instead, as
        ``select_view`` does (kept for notebooks 03 and 05)."""
        if view is None:
            super().show()
        else:
            self.select_view(view)

    def _render(self) -> None:
        view = VIEWS[self.tabs.selected_index or 0]
        if self.insp is None or view not in self._stale:
            return
        self._stale.discard(view)
        {"Predictions": self._show_predictions, "Bits": lambda: self._show_bits(self.insp),
         "Latents": self._show_latents, "Attention": self._setup_attention,
         "DoRA": self._show_dora}[view]()

    # -- views ---------------------------------------------------------------------------
    def _show_predictions(self) -> None:
        i = self.insp
        err = None if i.target is None else error_map(i.task, i.prediction, i.target)
        self.error = err
        name = f"error: {error_unit(i.task)}" if err is not None else "error (no label)"
        fig = figs.predictions_figure(i.task, i.image, i.target, i.preliminary, i.prediction, err,
                                      name)
        self.pred_fig = go.FigureWidget(fig)
        caption = (figs.error_caption(err, error_unit(i.task)) if err is not None else
                   f"<i>{ins.NO_LABELS}</i>" if not i.source.labelled else
                   f"<i>no {i.task} label for this image: no error map</i>")
        self.pred_box.children = [self.pred_fig, W.HTML(caption)]

    def _show_bits(self, i) -> None:
        if i is None:
            return
        self._bits_insp = i
        b = i.bits
        self.sections_fig = go.FigureWidget(figs.sections_figure(b.sections(), b.estimate_bytes()))
        self.bits_fig = go.FigureWidget(figs.bits_figure(i.image, b, self.bits_which.value,
                                                         self.opacity.value))
        self.channels_fig = go.FigureWidget(figs.channel_bars(b.bits_per_channel,
                                                              i.channel_order()))
        self.bits_text.value = figs.bits_caption(b)
        self.bits_box.children = [
            W.HBox([self.lmbda, self.rate, self.bits_which, self.opacity]), self.rate_note,
            self.bits_text,
            W.HBox([self.sections_fig, self.bits_fig]), self.channels_fig]

    def _set_opacity(self) -> None:
        if hasattr(self, "bits_fig"):
            self.bits_fig.data[1].opacity = self.opacity.value

    @property
    def rate_value(self) -> float | None:
        """The rate the panel codes at: the slider's for a variable-rate model, else None."""
        if self.model is None or not self.model.variable_rate:
            return None
        return self.rate.value

    def _note_rate(self) -> None:
        m = self.model
        if m is None or not m.variable_rate:
            self.rate_note.value = f"<small>{FIXED_RATE}</small>"
            return
        lams = m.rate_lambdas
        self.rate_note.value = (f"<small>rate {self.rate.value:.2f} stands for lambda "
                                f"{vr.lambda_at(self.rate.value, lams):.3g} (0: lambda "
                                f"{lams[0]:g}, 1: lambda {lams[-1]:g}); every view codes at "
                                "it</small>")

    def _on_rate(self) -> None:
        """Re-code the image at the slider's rate (every view follows; cached per rate)."""
        if getattr(self, "_refreshing", False) or self.model is None:
            return
        self._note_rate()
        self.refresh()

    def _on_lambda(self) -> None:
        """Show the allocation of the same image by the sweep's run at the chosen lambda."""
        if getattr(self, "_refreshing", False) or self.lmbda.value < 0 or self.insp is None:
            return
        _, run = self.sweep[self.lmbda.value]
        try:
            other = ins.inspect_image(ins.load_run(run), self.insp.source, self.insp.task)
        except ICMError as e:
            self._say(f"{type(e).__name__}: {e}", error=True)
            return
        self._show_bits(other)

    def _show_latents(self) -> None:
        i = self.insp
        order = i.channel_order()
        bpc = i.bits.bits_per_channel
        self.grid_fig = go.FigureWidget(figs.channels_figure(i.entropy.y_hat[0], order))
        gain = {"spatial prior saved (bits)": i.spatial_gain}
        self.gain_fig = go.FigureWidget(figs.planes_figure(gain, list(gain), cols=1))
        self.gain_fig.update_layout(width=300)
        self._refreshing = True
        self.channel.options = [(f"{c} ({float(bpc[c]):.1f} bits)", c) for c in order]
        self.channel.value = order[0]
        self._refreshing = False
        self._show_channel()

    def _show_channel(self) -> None:
        if self.insp is None or self.channel.value is None or getattr(self, "_refreshing", False):
            return
        planes = self.insp.latent_planes(self.channel.value)
        self.planes_fig = go.FigureWidget(figs.planes_figure(planes, PLANES))
        self.lat_box.children = [W.HTML("channels of y_hat, most bits first"), self.grid_fig,
                                 self.channel, self.planes_fig, self.gain_fig]

    # -- attention -----------------------------------------------------------------------
    def _setup_attention(self) -> None:
        i = self.insp
        self._refreshing = True
        stages = sorted({m.stage for m in i.attention})
        self.stage.options = stages
        self.stage.value = stages[-1]
        heads = i.attention[0].scores.shape[1]
        self.head.options = [("mean", -1), *[(str(h), h) for h in range(heads)]]
        self.head.value = -1
        self._refreshing = False
        H, W_ = i.image.shape[-2:]
        self.select_query(H / 2, W_ / 2)

    def _on_attention_control(self) -> None:
        if not getattr(self, "_refreshing", False) and self.insp is not None:
            y, x = self.query_yx
            self.select_query(y, x)

    def select_query(self, y: float, x: float) -> att.QueryWeights:
        """Show the weights of the query at image pixel (y, x) (what a click on the image does)."""
        i = self.insp
        self.query_yx = (y, x)
        head = None if self.head.value in (None, -1) else self.head.value
        if self.att_source.value == "decoder":
            q = att.decoder_query(i, self.stage.value, y, x, head, fused=self.fused.value)
            alphas = att.stage_alphas(i)
            text = (f"stage {self.stage.value}: keys every {q.key_spacing} px; alpha per stage "
                    + ", ".join(f"{s}: {a:.3f}" for s, a in alphas.items()))
        else:
            bb = att.backbone_attention(self.model, i)
            if head is not None and head >= bb.maps[0].shape[0]:
                head = None
            q = att.backbone_query(i, bb, y, x, block=self.block.value, head=head,
                                   use_rollout=self.use_rollout.value)
            text = (f"block {self.block.value}{' rollout' if self.use_rollout.value else ''}: "
                    f"patches of {q.key_spacing} px; weight on the class token "
                    f"{q.prefix_weight:.3f}")
        self.query = q
        self.att_text.value = (f"{text}; query at ({q.query_pixel[0]:.0f}, "
                               f"{q.query_pixel[1]:.0f}), weights sum {q.weights.sum():.4f}")
        self._draw_query(q)
        return q

    def _draw_query(self, q: att.QueryWeights) -> None:
        i = self.insp
        z = figs.downsample(q.over_image)
        zmax = float(z.max()) if z.size else None
        marker = ([q.query_pixel[1]], [q.query_pixel[0]])
        fig = getattr(self, "att_fig", None)
        if fig is None or not drawn(fig) or not figs.same_shape(fig.data[1].z, z) \
                or getattr(self, "_att_for", None) is not i:
            # a new figure with its final values: one changed before its view has drawn
            # would never report a click (widgets/_figure.py)
            fig = live_figure(figs.overlay_figure(i.image, z, figs.GRID, "attention weight", 0.6,
                                                  colorscale="Hot", zmax=zmax, marker=marker))
            fig.data[1].on_click(self._on_click)
            self.att_fig, self._att_for = fig, i
            controls = [W.HBox([self.att_source, self.fused]),
                        W.HBox([self.stage, self.head, self.block, self.use_rollout])]
            self.att_box.children = [*controls, self.att_text, fig]
            return
        with fig.batch_update():
            fig.data[1].z = z
            fig.data[1].zmax = zmax
            fig.data[2].x, fig.data[2].y = marker

    def _on_click(self, trace, points, selector) -> None:
        self.last_click = (list(points.ys), list(points.xs))
        if points.xs:
            self.select_query(float(points.ys[0]), float(points.xs[0]))

    # -- DoRA ----------------------------------------------------------------------------
    def _show_dora(self) -> None:
        if self.model is None or getattr(self, "_refreshing", False):
            return
        if not self.layer.value:
            self.dora_box.children = [W.HTML(f"adapter.mode={self.model.cfg.adapter.mode!r}: "
                                             "no low-rank adapters in this model")]
            return
        v = dora.dora_view(self.model, self.task.value, self.layer.value)
        self.dora = v
        self.dora_fig = go.FigureWidget(figs.dora_figure(v))
        text = figs.dora_caption(v)
        if self.task_b.value not in (None, "-", self.task.value):
            c = dora.compare_tasks(self.model, self.task.value, self.task_b.value, self.layer.value)
            text += (f"<br>vs {self.task_b.value}: cosine of the two updates "
                     f"{c.update_cosine:.3f}, correlation of magnitude changes "
                     f"{c.magnitude_correlation:.3f}")
            self.dora_b_fig = go.FigureWidget(figs.dora_figure(c.b))
            extra = [W.HTML(f"<b>{self.task_b.value}</b>"), self.dora_b_fig]
        else:
            extra = []
        self.dora_text.value = text
        self.dora_box.children = [W.HBox([self.layer, self.task_b]), self.dora_text,
                                  W.HTML(f"<b>{self.task.value}</b>"), self.dora_fig, *extra]


__all__ = ["InspectorPanel", "VIEWS"]
