"""Small configs shared by tests: a 4-block random EVA-02-tiny and tiny heads."""

from icm_core.config import load_config

TINY = ["data.size=[64,64]", "model.decoder_dims=[32,16,16]", "model.latent_channels=16",
        "model.hyper_channels=16", "model.prelim_width=16"]


def tiny_config(*overrides):
    return load_config([*TINY, *overrides])
