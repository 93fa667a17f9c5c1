"""Structured configs: one dataclass per concern, shared by Hydra, the CLI and the widgets.

Each field's ``metadata["help"]`` is its tooltip and ``metadata["choices"]`` (where present) the
options of a dropdown. Choices live in metadata rather than in ``Literal`` annotations because
OmegaConf 2.3 refuses ``Literal`` in structured configs ("Unexpected type annotation"); the
``ChoiceFields`` below are the single source of those options.
Validation lives in ``__post_init__`` so a bad value fails where it is set, with a
``ConfigError`` naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from icm_core.errors import ConfigError

# adapter.mode values: the names of icm_core.models.adapters.ADAPTER_KINDS, whose objects hold
# what each mode is and does. The config layer may not import models, so validation reads the
# two facts it needs from these tuples; tests/test_adapter_kinds.py keeps them equal to the
# kinds' low_rank and owns_backbone flags.
ADAPTER_MODES = ("dora", "lora", "full", "fixed", "scratch")
LOW_RANK_MODES = ("dora", "lora")  # rank, alpha and targets mean something
BACKBONE_OWNING_MODES = ("full", "scratch")  # one backbone copy per task: one task per run
TARGET_NAMES = ("q", "k", "v", "o", "up", "down")
DECODER_KINDS = ("low", "full")
# = icm_core.models.rate.MAX_ANCHORS (config may not import models; test_variable_rate checks)
MAX_RATE_ANCHORS = 13


def _at_least(name: str, value, low, hint: str = "") -> None:
    """Refuse ``value < low`` (and NaN) with a ConfigError naming the field."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= low:
        raise ConfigError(f"{name}={value!r} must be >= {low}{hint}")


def _positive(name: str, value, hint: str = "") -> None:
    """Refuse ``value <= 0`` (and NaN) with a ConfigError naming the field."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{name}={value!r} must be > 0{hint}")


# the built-in datasets; icm_core.data.registry registers a loader for each (a test checks they
# agree) and ``allow_dataset`` admits the names a plug-in registers
DATASETS = ("synthetic", "nyud", "pascal", "hf", "folder")
_DATASET_NAMES = list(DATASETS)
LABEL_SPACES = ("synthetic", "nyud", "pascal")  # the label conventions tasks/registry knows
NYUD_LAYOUTS = ("auto", "NYUD_MT", "NYUDv2")


def allow_dataset(name: str) -> None:
    """Let ``data.name`` take ``name`` (called by ``icm_core.data.registry.register_dataset``)."""
    if name not in _DATASET_NAMES:
        _DATASET_NAMES.append(name)


def _help(text: str, default: Any = None, factory=None, choices: tuple | None = None):
    meta = {"help": text} if choices is None else {"help": text, "choices": tuple(choices)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def choices_of(cls, name: str) -> tuple | None:
    """The allowed values of field ``name`` of config dataclass ``cls`` (None: free value)."""

    return next((f.metadata.get("choices") for f in fields(cls) if f.name == name), None)


@dataclass
class BackboneConfig:
    name: str = _help("timm model name (any ViT with forward_intermediates)", "eva02_tiny_patch14_224")
    weights: str = _help("'synthetic' (the shipped backbone pretrained on synthetic scenes), 'auto' "
                         "(hub when online, else random), 'hub', 'none' (random) or a local checkpoint "
                         "path", "none")
    patch_size: int = _help("patch size; 16 gives the paper's output stride 16", 16)
    depth: int | None = _help("number of blocks (None: the variant's own; small values for tests)",
                              None)
    out_indices: list[int] | None = _help("blocks whose outputs feed the decoders (None: 4 evenly "
                                          "spaced, ending at the last)", None)
    img_size: int = _help("nominal input size used to build position embeddings", 224)

    def __post_init__(self):
        _at_least("backbone.patch_size", self.patch_size, 1, " (16 in the paper)")
        _at_least("backbone.img_size", self.img_size, 1)
        if self.patch_size > self.img_size:
            raise ConfigError(f"backbone.patch_size={self.patch_size} is larger than backbone.img_size="
                              f"{self.img_size}: the position grid would be empty; use a smaller "
                              "patch (16 in the paper)")
        if self.depth is not None:
            _at_least("backbone.depth", self.depth, 4, " (the decoders read 4 blocks) or null")
        if self.out_indices is not None and (
                len(set(self.out_indices)) != 4 or min(self.out_indices) < 0):
            raise ConfigError(f"backbone.out_indices={list(self.out_indices)}: give 4 different "
                              "block indices >= 0, or null")


@dataclass
class AdapterConfig:
    mode: str = _help("dora, lora: a low-rank adapter per task; full: every backbone weight trains; "
                      "fixed: none does; scratch: random init, everything trains", "dora",
                      choices=ADAPTER_MODES)
    rank: int = _help("rank r of the low-rank update BA", 8)
    alpha: float | None = _help("LoRA scaling numerator (scale = alpha / rank); None: alpha = rank",
                                None)
    targets: list[str] = _help("adapted projections, from q, k, v, o, up, down", choices=TARGET_NAMES,
                               factory=lambda: ["q", "k", "v"])

    def __post_init__(self):
        if self.mode not in ADAPTER_MODES:
            raise ConfigError(f"adapter.mode={self.mode!r}; choose one of {list(ADAPTER_MODES)}")
        if self.mode in LOW_RANK_MODES:
            _at_least("adapter.rank", self.rank, 1)
            if self.alpha is not None:
                _positive("adapter.alpha", self.alpha, " or null (alpha = rank)")
            bad = [t for t in self.targets if t not in TARGET_NAMES]
            if bad or not self.targets:
                raise ConfigError(f"adapter.targets={list(self.targets)}: choose a non-empty subset "
                                  f"of {list(TARGET_NAMES)}")


@dataclass
class ModelConfig:
    prelim_width: int = _help("channels of the preliminary decoders' task features", 64)
    latent_channels: int = _help("channels M of the compressed latent y", 64)
    hyper_channels: int = _help("channels of the hyperprior z", 64)
    decoder: str = _help("low: the paper's low-complexity decoder; full: the Full Dec ablation",
                         "low", choices=DECODER_KINDS)
    decoder_dims: list[int] = _help("channels of the decoder stages", factory=lambda: [64, 32, 16])
    decoder_depths: list[int] = _help("blocks per decoder stage", factory=lambda: [1, 1, 1])
    decoder_heads: int = _help("attention heads in every decoder stage", 2)
    inter_sup: bool = _help("supervise the preliminary predictions (False: 'No InterSup')", True)
    compression: bool = _help("compress the latent (False: the uncompressed 'Baseline')", True)
    variable_rate: bool = _help("one task file for every rate: learned per-channel quantization "
                                "steps at the anchors of model.rate_lambdas, interpolated between "
                                "them (EVC/DCVC q_scale); code with rate r in [0, 1]. False: one "
                                "model per lambda (the paper's protocol, lmbda)", False)
    rate_lambdas: list[float] = _help("variable rate: the anchors' lambdas, ascending, 2 to "
                                      f"{MAX_RATE_ANCHORS}; each step trains one, drawn at random; "
                                      "rate 0 codes at the first, rate 1 at the last",
                                      factory=list)

    def __post_init__(self):
        _at_least("model.prelim_width", self.prelim_width, 1)
        _at_least("model.latent_channels", self.latent_channels, 2)
        if self.latent_channels % 2:
            raise ConfigError(f"model.latent_channels={self.latent_channels} must be even: the "
                              "entropy model codes two channel halves in turn")
        _at_least("model.hyper_channels", self.hyper_channels, 1)
        _at_least("model.decoder_heads", self.decoder_heads, 1)
        if self.decoder not in DECODER_KINDS:
            raise ConfigError(f"model.decoder={self.decoder!r}; choose one of {list(DECODER_KINDS)}")
        for name in ("decoder_dims", "decoder_depths"):
            if not all(isinstance(v, int) and v >= 1 for v in getattr(self, name)):
                raise ConfigError(f"model.{name}={list(getattr(self, name))}: every entry must be "
                                  "an integer >= 1")
        stages = 3 if self.decoder == "low" else 4
        for name in ("decoder_dims", "decoder_depths"):
            if len(getattr(self, name)) != stages:
                raise ConfigError(f"model.{name}={list(getattr(self, name))} needs {stages} entries "
                                  f"for the {self.decoder!r} decoder")
        self._check_rates()
        if any(d % self.decoder_heads for d in self.decoder_dims):
            raise ConfigError(f"model.decoder_dims={list(self.decoder_dims)} must all be divisible by "
                              f"model.decoder_heads={self.decoder_heads}")

    def _check_rates(self) -> None:
        lams = list(self.rate_lambdas)
        if self.variable_rate and not self.compression:
            raise ConfigError("model.variable_rate=true needs model.compression=true: without "
                              "compression there is no rate to vary")
        if self.variable_rate and len(lams) < 2:
            raise ConfigError(f"model.rate_lambdas={lams}: variable rate needs at least 2 anchor "
                              "lambdas, ascending, e.g. [0.0625, 0.25, 1, 4]")
        if not lams:
            return
        if len(lams) > MAX_RATE_ANCHORS:
            raise ConfigError(f"model.rate_lambdas has {len(lams)} anchors; at most "
                              f"{MAX_RATE_ANCHORS} (the stream's rate grid hits each exactly)")
        for v in lams:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf"):
                raise ConfigError(f"model.rate_lambdas={lams}: every lambda must be a number > 0")
        if any(b <= a for a, b in zip(lams, lams[1:])):
            raise ConfigError(f"model.rate_lambdas={lams} must be strictly ascending (anchor 0 is "
                              "the lowest rate)")


@dataclass
class DataConfig:
    name: str = _help("dataset: synthetic scenes (offline), nyud or pascal (the literature's "
                      "layouts), hf (a Hugging Face dataset) or folder (your photos, no labels)",
                      "synthetic", choices=DATASETS)
    size: list[int] = _help("training crop (H, W); real datasets also evaluate at this size "
                            "(padded with ignore values)", factory=lambda: [64, 64])
    train_length: int = _help("synthetic: scenes in the training split", 512)
    val_length: int = _help("synthetic: scenes in the validation split", 32)
    cache_scenes: bool = _help("synthetic: keep rendered training scenes in memory, so later "
                               "epochs skip rendering (same samples; ~0.25 MB a scene at 128 px)",
                               True)
    seed: int = _help("synthetic: dataset seed; real data: the augmentation seed", 0)
    workers: int = _help("DataLoader worker processes rendering/loading batches (0: in the "
                         "training process)", 1)
    root: str = _help("nyud, pascal, folder: the dataset folder; hf: a saved dataset folder, a "
                      "parquet file or folder, an image folder, or a hub id", "")
    layout: str = _help("nyud: NYUD_MT (MTL-PyTorch/ATRC: jpg images, npy labels) or NYUDv2 "
                        "(InvPT: png images, png normals and edges); auto detects it",
                        "auto", choices=NYUD_LAYOUTS)
    strict: bool = _help("refuse a dataset with missing label files (false: missing labels are "
                         "ignored pixels and tasks without any file are dropped, with a report)",
                         True)
    augment: bool = _help("real data: InvPT's training augmentation (random scale 0.5-2, crop, "
                          "flip, photometric jitter)", True)
    # typed Any: OmegaConf refuses new keys in a typed dict under Hydra's struct flag, and
    # merging into an Optional typed dict that is None fails; an Any None takes the override
    columns: Any = _help("hf: sample key -> column, e.g. {image: img, semseg: label} (null: "
                         "columns named like the keys)", None)
    labels: str = _help("hf, folder: whose label conventions (class counts) the tasks follow",
                        "nyud", choices=LABEL_SPACES)

    def __post_init__(self):
        if self.name not in _DATASET_NAMES:
            raise ConfigError(f"data.name={self.name!r}; choose one of {list(_DATASET_NAMES)}")
        _at_least("data.workers", self.workers, 0, " (0: load in the training process)")
        if len(self.size) != 2 or not all(isinstance(v, int) and v >= 1 for v in self.size):
            raise ConfigError(f"data.size={list(self.size)}: give two positive integers [H, W]")
        _at_least("data.train_length", self.train_length, 1)
        _at_least("data.val_length", self.val_length, 1)
        _at_least("data.seed", self.seed, 0)
        if self.layout not in NYUD_LAYOUTS:
            raise ConfigError(f"data.layout={self.layout!r}; choose one of {list(NYUD_LAYOUTS)}")
        if self.labels not in LABEL_SPACES:
            raise ConfigError(f"data.labels={self.labels!r}; choose one of {list(LABEL_SPACES)}")
        if not isinstance(self.root, str):
            raise ConfigError(f"data.root={self.root!r}: give a folder path as text")
        if self.columns is not None and not hasattr(self.columns, "items"):
            raise ConfigError(f"data.columns={self.columns!r}: give sample key -> column pairs, "
                              "e.g. {image: img, semseg: label}, or null")
        bad = [k for k, v in dict(self.columns or {}).items()
               if not (isinstance(k, str) and k and isinstance(v, str) and v)]
        if bad:
            raise ConfigError(f"data.columns={dict(self.columns)!r}: give sample key -> column "
                              "name pairs of text, e.g. {image: img, semseg: label}")

    @property
    def label_space(self) -> str:
        """The dataset whose label conventions the tasks follow (hf, folder: ``labels``)."""
        return self.name if self.name in LABEL_SPACES else self.labels


@dataclass
class TrainConfig:
    max_steps: int = _help("optimizer steps", 300)
    batch_size: int = _help("images per step (global, over all processes)", 2)
    lr: float = _help("Adam learning rate of the adapters (or the backbone in full/scratch)", 2e-5)
    head_lr: float | None = _help("learning rate of the task heads (preliminary decoder, entropy "
                                  "model, decoder), trained from scratch; null: train.lr", None)
    backbone_lr: float | None = _help("learning rate of the pretrained backbone weights under full "
                                      "fine-tuning (adapter=full); null: train.lr. Adapters and "
                                      "scratch training use train.lr", None)
    weight_decay: float = _help("Adam weight decay", 1e-6)
    poly_power: float = _help("polynomial LR decay power", 0.9)
    warmup_steps: int = _help("steps of linear learning-rate warm-up before the decay (0: none)", 0)
    ema_decay: float = _help("decay of an exponential moving average of the trained weights, "
                             "which evaluation and checkpoints use (0: off; e.g. 0.99)", 0.0)
    codec_init: str = _help("a pretrained codec (icm_core.training.codec_init.save_codec): every "
                            "task head starts from its weights where names and shapes match "
                            "(entropy model, decoder blocks) and is fine-tuned; '' : from "
                            "scratch", "")
    eval_every: int = _help("steps between evaluations at real bitstream rates (0: never)", 0)
    checkpoint_every: int = _help("steps between checkpoints (0: only at the end)", 0)
    seed: int = _help("random seed", 0)
    amp: bool = _help("bf16 autocast on CUDA", True)

    def __post_init__(self):
        _at_least("train.max_steps", self.max_steps, 1)
        _at_least("train.batch_size", self.batch_size, 1)
        _positive("train.lr", self.lr)
        if self.head_lr is not None:
            _positive("train.head_lr", self.head_lr, " (or null: the same as train.lr)")
        if self.backbone_lr is not None:
            _positive("train.backbone_lr", self.backbone_lr, " (or null: the same as train.lr)")
        _at_least("train.weight_decay", self.weight_decay, 0)
        _at_least("train.poly_power", self.poly_power, 0, " (0: constant learning rate)")
        _at_least("train.warmup_steps", self.warmup_steps, 0, " (0: no warm-up)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay={self.ema_decay}: give a decay in [0, 1), e.g. "
                              "0.99 (0: no moving average)")
        if not isinstance(self.codec_init, str):
            raise ConfigError(f"train.codec_init={self.codec_init!r}: give a file path, or '' "
                              "(heads from scratch)")
        _at_least("train.eval_every", self.eval_every, 0, " (0: never)")
        _at_least("train.checkpoint_every", self.checkpoint_every, 0, " (0: only at the end)")
        _at_least("train.seed", self.seed, 0)


@dataclass
class ExperimentConfig:
    name: str = _help("experiment name, used in result files", "quick")
    tasks: list[str] = _help("tasks, each with its own adapter, heads, entropy model and decoder",
                             factory=lambda: ["semseg"])
    lmbda: float = _help("rate-accuracy trade-off: L = R + lambda * L_task", 1.0)
    out_dir: str = _help("where checkpoints and results go", "outputs")
    resume: bool = _help("continue from the checkpoint in out_dir", False)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        if self.adapter.mode in BACKBONE_OWNING_MODES and len(self.tasks) > 1:
            raise ConfigError(
                f"adapter.mode={self.adapter.mode!r} trains the whole backbone, one copy per task; "
                f"tasks={list(self.tasks)} would share it. Train one task per run, or use dora/lora")
        _positive("lmbda", self.lmbda)


