"""The backbone shipped in the package (pretrained by ``icm pretrain`` on synthetic scenes)."""

import hashlib
import json

import pytest
import torch

from icm_core.codec import coder
from icm_core.config import load_config
from icm_core.errors import ConfigError
from icm_core.evaluation.cost import model_info
from icm_core.models.backbone import SYNTHETIC_WEIGHTS, Backbone, weights_source
from icm_core.models.icm import build_model

from .helpers import TINY

pytestmark = pytest.mark.skipif(not SYNTHETIC_WEIGHTS.is_file(),
                                reason=f"{SYNTHETIC_WEIGHTS.name} is not in this checkout")


def _card():
    return json.loads(SYNTHETIC_WEIGHTS.with_name(SYNTHETIC_WEIGHTS.stem + ".card.json").read_text())


def test_shipped_file_matches_its_card():
    card = _card()
    data = SYNTHETIC_WEIGHTS.read_bytes()
    assert hashlib.sha256(data).hexdigest() == card["sha256"]
    assert len(data) == card["bytes"] <= 12 * 2**20
    assert card["file"] == SYNTHETIC_WEIGHTS.name
    text = json.dumps(card).lower()
    assert "pretrain" in text and "sha256" in text  # data split and objective are stated


def test_loads_offline_into_the_right_architecture():
    cfg = load_config(["backbone=tiny_synthetic"]).backbone
    bb = Backbone(cfg)
    assert bb.pretrained and bb.weights_source == "synthetic" and weights_source(cfg) == "synthetic"
    random = Backbone(load_config(["backbone=tiny_synthetic", "backbone.weights=none"]).backbone)
    assert not random.pretrained
    w = dict(bb.vit.named_parameters())
    assert any(not torch.equal(p, w[n]) for n, p in random.vit.named_parameters())
    info = model_info(["backbone=tiny_synthetic"])
    assert info["weights_source"] == "synthetic" and "pretrained" not in info
    assert "synthetic scenes" in info["weights_notice"] and "not ImageNet" in info["weights_notice"]
    info = model_info(["backbone=tiny_synthetic", "backbone.weights=none"])
    assert info["weights_source"] == "random" and "RANDOM" in info["weights_notice"]


def test_the_shipped_weights_on_another_architecture_are_a_config_error():
    """The default backbone carries weights=synthetic: naming another ViT without
    backbone.weights is refused in one line, not a state-dict traceback."""
    cfg = load_config(["backbone.name=vit_tiny_patch16_224", "backbone.depth=4"]).backbone
    with pytest.raises(ConfigError, match=r"does not fit 'vit_tiny_patch16_224'.*backbone\.weights=none"):
        Backbone(cfg)


def test_downstream_paths_are_the_same_with_synthetic_weights():
    m = build_model(load_config([*TINY, "backbone=tiny_synthetic"])).eval()
    x = torch.rand(1, 3, 64, 64)
    data = coder.encode(m, x)
    with torch.no_grad():
        assert torch.equal(coder.decode(m, data).prediction, m(x).prediction)
