"""Self-supervised pretraining of the offline backbone (``icm pretrain``).

A randomly initialized EVA-02 learns features from synthetic scenes by masked image modeling
(MIM), in the spirit of EVA-02 / SimMIM / MAE: 40-75 % of the patches are hidden, and a light
decoder predicts the hidden patches' pixels from what the encoder makes of the visible ones.

    image (B,3,H,W) -> hide masked patches (pixels -> 0, their tokens -> a learned mask token)
      -> Backbone (the downstream encoder itself) -> last block (B,C,H/p,W/p)
      -> decoder (LayerNorm + linear, or a 2-layer MLP) -> (B,H/p,W/p,p*p*3)
      -> L2 (or L1) against per-patch normalized pixels (MAE's norm_pix_loss), masked patches only

Masked pixels never reach the encoder: they are zeroed before the patch embedding and their
tokens replaced by the mask token after it (``torch.where``, so not even a NaN leaks). No
downstream label enters the objective.

The scenes come from the synthetic ``pretrain`` split, whose scene seeds are disjoint by
construction from ``train``/``val``/``test`` (see ``synthetic.scene_seed``); ``check_disjoint``
refuses any other dataset. A pool of ``data.length`` scenes is rendered once (in parallel,
cached in the run folder) and every step draws a random resized crop + flip of its scenes.

A run folder looks like ``icm train``'s: ``history.jsonl`` (one line per step), ``LATEST`` and
``ckpt-NNNNNN/`` folders (config.yaml, model.safetensors, trainer.pt) written atomically, and
at the end ``backbone.safetensors`` + ``backbone.card.json`` (``export_backbone``). Every
batch and mask is a function of (seed, step) only, so ``resume=true`` continues exactly.

One module a concern, in the order they import each other:

    config     PretrainConfig, its Hydra store, loading (through icm_core.config.compose)
    data       the scene pool of the disjoint 'pretrain' split (check_disjoint, render_pool)
    masking    crops, flips and masks: the batch of a step
    objective  MIMModel (the Backbone + mask token + pixel decoder) and its loss
    export     export_backbone: the encoder as one safetensors file + its model card
    trainer    Pretrainer: the loop, checkpoints, resume, export at the end

The ``icm pretrain`` Hydra application is ``icm_core.cli.hydra_app.pretrain_app``.
"""

from icm_core.training.pretrain.config import (
    PRETRAIN_STORE,
    PretrainConfig,
    PretrainDataConfig,
    load_pretrain_config,
    read_run_config,
    to_pretrain,
)
from icm_core.training.pretrain.data import check_disjoint, render_pool
from icm_core.training.pretrain.export import FORMAT, card_path, export_backbone, portable_paths
from icm_core.training.pretrain.masking import block_mask, crop_box, make_batch, random_mask
from icm_core.training.pretrain.objective import (
    MIMModel,
    MIMOutput,
    encoder_state_dict,
    patch_targets,
    patchify,
)
from icm_core.training.pretrain.trainer import Pretrainer, lr_factor

__all__ = ["portable_paths", "FORMAT", "PRETRAIN_STORE", "MIMModel", "MIMOutput", "PretrainConfig",
           "PretrainDataConfig", "Pretrainer", "block_mask", "card_path", "check_disjoint",
           "crop_box", "encoder_state_dict", "export_backbone", "load_pretrain_config",
           "lr_factor", "make_batch", "patch_targets", "patchify", "random_mask",
           "read_run_config", "render_pool", "to_pretrain"]
