"""Section 2.2: the frozen pre-trained vision backbone (EVA-02 via timm), shared by all tasks.

The encoder is a plain ViT at output stride ``patch_size`` (16 in the paper: the EVA-02
patch embedding is resampled from 14 to 16 pixels when weights are loaded). Features of 4
blocks are returned as NCHW maps (B, C, H/p, W/p). Attention projections are built unfused
(``qkv_fused=False``) so that adapters wrapped around ``q_proj``/``k_proj``/``v_proj`` are
really in the forward path: a fused ``qkv`` is read through ``F.linear(x, self.qkv.weight)``
and would bypass them.

What ``forward_intermediates`` never reads (the final and pooling norms, the classifier head,
blocks after the last feature block) is pruned at build time: parameters outside the forward
pass would stay trainable in ``full``/``scratch`` mode and break DistributedDataParallel,
which expects every trainable parameter to receive a gradient.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import timm
import torch
from huggingface_hub import hf_hub_download, try_to_load_from_cache
from safetensors.torch import load_file
from timm.models.eva import checkpoint_filter_fn
from torch import nn

from icm_core.config.schema import BackboneConfig
from icm_core.errors import ConfigError

log = logging.getLogger(__name__)

SYNTHETIC_WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "eva02_tiny_synthetic.safetensors"
SYNTHETIC_NOTICE = ("backbone {name!r}: weights pretrained on synthetic scenes ('icm pretrain'), not "
                    "ImageNet: check conclusions with real EVA-02 weights (backbone.weights=hub or a file)")
RANDOM_WEIGHTS_WARNING = (
    "backbone {name!r} has RANDOM weights ({why}): features are not pre-trained, results are "
    "not comparable with the paper. Give backbone.weights=PATH or run online with weights=hub."
)


def evenly_spaced_indices(depth: int, n: int = 4) -> list[int]:
    """``n`` block indices spread over ``depth`` blocks, the last one included (e.g. 24 -> 5,11,17,23)."""
    step = depth / n
    return sorted({max(0, round(step * (i + 1)) - 1) for i in range(n)})


def split_fused_qkv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert a fused-qkv EVA checkpoint (``attn.qkv.weight``, ``q_bias``, ``v_bias``) to the
    unfused layout (``attn.q_proj/k_proj/v_proj``). Unfused checkpoints pass unchanged."""
    out = {}
    for k, v in state.items():
        if k.endswith("attn.qkv.weight"):
            q, kk, vv = v.chunk(3, dim=0)
            base = k[: -len("qkv.weight")]
            out[base + "q_proj.weight"], out[base + "k_proj.weight"], out[base + "v_proj.weight"] = q, kk, vv
        elif k.endswith("attn.q_bias"):
            out[k[: -len("q_bias")] + "q_proj.bias"] = v
        elif k.endswith("attn.v_bias"):
            out[k[: -len("v_bias")] + "v_proj.bias"] = v
        elif k.endswith("attn.qkv.bias"):
            q, _, vv = v.chunk(3, dim=0)
            base = k[: -len("qkv.bias")]
            out[base + "q_proj.bias"], out[base + "v_proj.bias"] = q, vv
        else:
            out[k] = v
    return out


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConfigError(f"backbone.weights={str(path)!r}: no such file; give a .safetensors/.pth "
                          "checkpoint, 'hub' (online) or 'none'")
    if path.suffix == ".safetensors":

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)  # no arbitrary unpickling
    for key in ("model_ema", "model", "module", "state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return state


def _hub_file(name: str) -> Path:

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        raise ConfigError(f"backbone {name!r} has no hub weights in timm; give a local file")
    return Path(hf_hub_download(cfg.hf_hub_id, "model.safetensors"))


class Backbone(nn.Module):
    """A timm ViT returning 4 intermediate feature maps at stride ``patch_size``.

    Args:
        cfg: name, weights source, patch size, depth override, feature block indices.
        load_weights: False builds the architecture only (``weights_source`` stays ``random``,
            no warning).

    Attributes:
        weights_source: where the weights came from, in ``weights_source()``'s vocabulary:
            ``random``, ``synthetic``, ``hub`` or the checkpoint file's path.
        pretrained: ``weights_source != 'random'`` (say so in every report when False).
        out_indices: the blocks whose outputs are returned.
        embed_dim: channels of each feature map.
        stride: pixels per feature-map position (the patch size).
        pruned_params: parameters of the timm model that were removed as unused; counted in
            the backbone's size, which the paper gives for the whole network (304 M).
    """

    def __init__(self, cfg: BackboneConfig, load_weights: bool = True):
        super().__init__()
        self.cfg = cfg
        arch = cfg.name.split(".")[0]
        kwargs = dict(pretrained=False, num_classes=0, patch_size=cfg.patch_size,
                      img_size=cfg.img_size, dynamic_img_size=True)
        if arch.startswith("eva02"):
            kwargs["qkv_fused"] = False
        if cfg.depth is not None:
            kwargs["depth"] = cfg.depth
        try:
            self.model = timm.create_model(arch, **kwargs)
        except (RuntimeError, TypeError) as e:
            raise ConfigError(f"backbone.name={cfg.name!r} cannot be built by timm: {e}") from e
        if not hasattr(self.model, "forward_intermediates"):
            raise ConfigError(f"backbone.name={cfg.name!r} has no forward_intermediates; use a ViT")
        depth = len(self.model.blocks)
        if depth < 4:
            raise ConfigError(f"backbone.depth={depth}: the decoders read 4 different blocks; use >= 4")
        self.out_indices = list(cfg.out_indices or evenly_spaced_indices(depth))
        if len(set(self.out_indices)) != 4 or not all(0 <= i < depth for i in self.out_indices):
            raise ConfigError(f"backbone.out_indices={self.out_indices}: give 4 block indices in "
                              f"[0, {depth})")
        self.embed_dim = self.model.embed_dim
        self.stride = cfg.patch_size
        self.pruned_params, self._pruned_keys = self._prune()
        pc = self.model.pretrained_cfg
        self.register_buffer("mean", torch.tensor(pc.get("mean", (0.5,) * 3)).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(pc.get("std", (0.5,) * 3)).view(1, 3, 1, 1), False)
        self.weights_source = "random"
        if load_weights:
            self._load_weights(cfg)

    def _prune(self) -> tuple[int, frozenset[str]]:
        """Drop what ``forward_intermediates`` does not use; -> (parameters, state keys) removed."""
        if not hasattr(self.model, "prune_intermediate_layers"):
            raise ConfigError(f"backbone.name={self.cfg.name!r} cannot prune unused layers "
                              "(no prune_intermediate_layers in timm); use a ViT or EVA-02")
        before = sum(p.numel() for p in self.model.parameters())
        keys = set(self.model.state_dict())
        self.model.prune_intermediate_layers(self.out_indices, prune_norm=True, prune_head=True)
        after = sum(p.numel() for p in self.model.parameters())
        return before - after, frozenset(keys - set(self.model.state_dict()))

    def _load_weights(self, cfg: BackboneConfig) -> None:
        w = cfg.weights
        if w in ("none", "", None):
            log.warning(RANDOM_WEIGHTS_WARNING.format(name=cfg.name, why="backbone.weights=none"))
            return
        if w == "synthetic":
            if not SYNTHETIC_WEIGHTS.is_file():
                raise ConfigError(f"backbone.weights=synthetic: {SYNTHETIC_WEIGHTS} is missing; reinstall "
                                  "the package, or give the backbone.safetensors of 'icm pretrain'")
            self.load_checkpoint(SYNTHETIC_WEIGHTS, source="synthetic")
            log.warning(SYNTHETIC_NOTICE.format(name=cfg.name))
            return
        if w in ("hub", "auto"):
            try:
                path = _hub_file(cfg.name)
            except ConfigError:
                raise
            except Exception as e:  # offline, no cache, hub error
                if w == "hub":
                    raise ConfigError(f"backbone.weights=hub: could not fetch {cfg.name!r} ({e}); "
                                      "go online or give a local file") from e
                log.warning(RANDOM_WEIGHTS_WARNING.format(name=cfg.name, why=f"hub unavailable: {e}"))
                return
            self.load_checkpoint(path, source="hub")
            return
        self.load_checkpoint(Path(os.path.expanduser(w)))

    def load_checkpoint(self, path: Path, source: str | None = None) -> None:
        """Load a timm/EVA checkpoint (fused or unfused qkv, patch 14 or 16) strictly;
        ``weights_source`` becomes ``source`` (default: the file's path).

        Tensors of pruned modules (final norms, head, unused blocks) are skipped; any other
        key the checkpoint lacks or adds is an error.
        """

        state = split_fused_qkv(_read_state_dict(Path(path)))
        state = checkpoint_filter_fn(state, self.model)
        state = {k: v for k, v in state.items() if k not in self._pruned_keys
                 and not k.startswith(("head.", "fc_norm."))}
        try:
            missing, unexpected = self.model.load_state_dict(state, strict=False)
        except RuntimeError as e:  # the keys fit, the shapes do not: another architecture
            raise ConfigError(f"backbone.weights={str(path)!r} does not fit {self.cfg.name!r} "
                              f"(depth {self.cfg.depth}): {str(e).splitlines()[1].strip()}; give "
                              "weights of this architecture, or backbone.weights=none for random "
                              "ones") from e
        missing = [k for k in missing if "rope" not in k]
        if missing or unexpected:
            raise ConfigError(f"backbone.weights={str(path)!r} does not fit {self.cfg.name!r}: "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.weights_source = source or str(path)
        log.info("backbone %s: loaded %s", self.cfg.name, path)

    @property
    def pretrained(self) -> bool:
        """Whether the weights were loaded (``weights_source`` is not ``random``)."""
        return self.weights_source != "random"

    @property
    def vit(self) -> nn.Module:
        """The timm model (unwrapped from peft when adapters are attached)."""
        m = self.model
        return m.get_base_model() if hasattr(m, "get_base_model") else m

    @contextlib.contextmanager
    def capture_attention(self, block: int):
        """Record the softmax attention of timm block ``block`` during the forwards inside.

        Yields a list that receives one (B, heads, N, N) tensor per forward, detached; N counts
        the prefix (class) tokens first, then the patches row-major. The block computes its
        attention explicitly only while capturing (timm's fused kernel never forms the matrix);
        on exit the fused path and the hooks are restored.
        """
        blocks = self.vit.blocks
        if not 0 <= block < len(blocks):
            raise ConfigError(f"block {block}: this backbone has blocks 0..{len(blocks) - 1}")
        attn = blocks[block].attn
        if not hasattr(attn, "attn_drop") or not hasattr(attn, "fused_attn"):
            raise ConfigError(f"{type(attn).__name__} cannot report its attention weights")
        maps: list[torch.Tensor] = []
        fused = attn.fused_attn
        hook = attn.attn_drop.register_forward_hook(lambda m, i, o: maps.append(i[0].detach()))
        attn.fused_attn = False
        try:
            yield maps
        finally:
            attn.fused_attn = fused
            hook.remove()

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """image (B, 3, H, W) in [0, 1], H and W multiples of the stride p -> 4 x (B, C, H/p, W/p)."""
        x = (image - self.mean) / self.std
        return self.vit.forward_intermediates(x, indices=self.out_indices, intermediates_only=True,
                                              output_fmt="NCHW")


def weights_available(cfg: BackboneConfig) -> bool:
    """Would ``Backbone(cfg)`` load pre-trained weights here and now, without the network?"""
    w = cfg.weights
    if w in ("none", "", None):
        return False
    if w == "synthetic":
        return SYNTHETIC_WEIGHTS.is_file()
    if w in ("hub", "auto"):

        pc = timm.models.get_pretrained_cfg(cfg.name)
        if pc is None or not pc.hf_hub_id:
            return False
        return isinstance(try_to_load_from_cache(pc.hf_hub_id, "model.safetensors"), str)
    return Path(os.path.expanduser(w)).is_file()


def weights_source(cfg: BackboneConfig) -> str:
    """Where ``Backbone(cfg)`` would take its weights from, here and now: ``synthetic`` (the
    shipped file pretrained on synthetic scenes), ``hub`` (a cached hub download), the local
    checkpoint path, or ``random``."""
    if not weights_available(cfg):
        return "random"
    if cfg.weights in ("synthetic", "hub"):
        return cfg.weights
    return "hub" if cfg.weights == "auto" else str(Path(os.path.expanduser(cfg.weights)))


def weights_notice(cfg: BackboneConfig) -> str | None:
    """The one line every report shows about the backbone's weights: the loud warning for random
    weights, the notice for the synthetic-pretrained file, nothing for real checkpoints."""
    source = weights_source(cfg)
    if source == "random":
        return RANDOM_WEIGHTS_WARNING.format(name=cfg.name, why=f"backbone.weights={cfg.weights}")
    if source == "synthetic":
        return SYNTHETIC_NOTICE.format(name=cfg.name)
    return None
