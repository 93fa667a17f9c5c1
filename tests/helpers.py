"""Small configs shared by tests: a 4-block random EVA-02-tiny (asked for: the default is the
shipped synthetic-pretrained one) and tiny heads."""

from icm_core.config import load_config

TINY = ["backbone=tiny_random", "data.size=[64,64]", "data.workers=0", "model.decoder_dims=[32,16,16]",
        "model.latent_channels=16", "model.hyper_channels=16", "model.prelim_width=16"]


def tiny_config(*overrides):
    return load_config([*TINY, *overrides])


def trivial_scores(train_set, val_set, task, n_train=32):
    """Metric of the best constant predictor (majority class / mean value) on ``val_set``."""
    import torch

    from icm_core.tasks.metrics import make_metric
    from icm_core.tasks.registry import TASKS

    tr = torch.stack([train_set[i][task] for i in range(n_train)])
    val = [val_set[i][task] for i in range(len(val_set))]
    spec = TASKS[task]
    m = make_metric(task, dataset="synthetic")
    for t in val:
        if spec.kind == "classes":
            pred = torch.bincount(tr.flatten()).argmax().expand(1, *t.shape)
        else:
            mean = tr.float().mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
            pred = mean.expand(1, -1, *t.shape[-2:])
        m.update(pred, t.unsqueeze(0))
    return m.compute()
