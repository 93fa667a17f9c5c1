"""The accounting (icm_core.evaluation.accounting, icm bench) against hand-computed counts.

Nothing here times anything: measured fields are only checked to be present and positive.
"""

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save
from timm.layers import Attention
from torch import nn

from icm_core.cli.main import main
from icm_core.errors import ConfigError
from icm_core.evaluation import accounting as acc
from icm_core.models.icm import build_model
from icm_core.training import bench as tb

from .helpers import TINY, tiny_config

INTERFACE_KEYS = {"trainable_percent", "adapter_bytes", "storage_bytes_k_tasks", "k", "flops",
                  "decoder_flops_ratio_full_over_low", "train_step_seconds", "peak_memory_bytes",
                  "encode_seconds", "decode_seconds", "energy_joules", "energy_note", "device"}


class _Net(nn.Module):
    def __init__(self, d_in, d_out):
        super().__init__()
        self.lin = nn.Linear(d_in, d_out)

    def forward(self, x):
        return self.lin(x)


@pytest.mark.parametrize("dora", [False, True])
def test_low_rank_adapter_on_one_linear_is_r_times_din_plus_dout_plus_dout_for_dora(dora):
    d_in, d_out, r = 48, 80, 4
    net = get_peft_model(_Net(d_in, d_out), LoraConfig(r=r, target_modules=["lin"], use_dora=dora))
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert trainable == r * (d_in + d_out) + (d_out if dora else 0)  # 512 (+ 80)
    assert acc.low_rank_params(d_in, d_out, r, dora) == trainable


def test_the_tiny_backbone_trains_depth_x_qkv_dora_adapters():
    a = acc.account(tiny_config())  # 4 blocks of EVA-02-tiny (C = 192), DoRA r8 on q, k, v
    assert a.trainable_backbone_params == 4 * 3 * (8 * (192 + 192) + 192) == 39168
    assert a.trainable_percent == pytest.approx(100 * 39168 / a.backbone_params, abs=1e-4)
    assert a.trainable_params == 39168 + a.head_params


@pytest.mark.parametrize("state", [
    {"a": torch.zeros(2, 5), "b": torch.zeros(3, dtype=torch.float16), "c": torch.zeros(7, dtype=torch.int64)},
    {"only": torch.zeros(())},
    {f"blocks.{i}.w": torch.zeros(i + 1, 3) for i in range(12)},
])
def test_safetensors_bytes_is_the_file_size_without_writing_it(state):
    assert acc.safetensors_bytes(state) == len(save(state))
    meta = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in state.items()}
    assert acc.safetensors_bytes(meta) == len(save(state))
    assert acc.safetensors_bytes({}) == 0


def test_adapter_bytes_are_the_real_adapter_file():
    model = build_model(tiny_config(), "cpu")
    from icm_core.models.adapters import adapter_state_dict

    assert acc.account(tiny_config()).adapter_bytes == len(save(adapter_state_dict(model.backbone, "semseg")))


def test_storage_for_k_tasks_is_one_backbone_plus_k_task_files():
    counts = {"backbone_params": 1000, "head_params": 50}
    s = acc.storage_for_tasks(counts, adapter_bytes=120, mode="dora", k=3)
    assert s["storage_bytes"] == 4 * 1000 + 3 * (4 * 50 + 120)
    assert s["full_copies_bytes"] == 3 * 4 * (1000 + 50)
    full = acc.storage_for_tasks(counts, adapter_bytes=4000, mode="full", k=3)
    assert full["storage_bytes"] == full["full_copies_bytes"] == 3 * 4 * 1050
    assert acc.storage_for_tasks(counts, 0, "fixed", 2)["storage_bytes"] == 4 * 1000 + 2 * 4 * 50


def test_flops_of_a_linear_is_2_b_din_dout():
    lin = nn.Linear(48, 80, bias=False)
    flops, _ = acc.flops_of(lambda: lin(torch.zeros(5, 48)))
    assert flops == 2 * 5 * 48 * 80


def test_flops_of_an_attention_block_counts_projections_and_both_products():
    B, N, C = 2, 10, 64
    with torch.device("meta"):  # counted on meta: torch's fused CPU attention kernel is not counted
        attn = Attention(C, num_heads=4).eval()
        flops, _ = acc.flops_of(lambda: attn(torch.zeros(B, N, C)))
    qkv, out = 2 * B * N * C * 3 * C, 2 * B * N * C * C
    scores_and_values = 2 * (2 * B * N * N * C)  # QK^T and AV over all heads
    assert flops == qkv + scores_and_values + out


def test_component_flops_add_up_and_the_full_decoder_costs_more():
    a = acc.account(tiny_config(), size=(64, 64))
    assert set(a.flops) == {*acc.COMPONENTS, "total"}
    assert a.flops["total"] == sum(a.flops[c] for c in acc.COMPONENTS)
    assert all(a.flops[c] > 0 for c in acc.COMPONENTS)
    assert a.decoder_flops_ratio_full_over_low > 1
    full = acc.counterpart_decoder(tiny_config())
    assert full.model.decoder == "full" and len(full.model.decoder_dims) == 4
    assert acc.counterpart_decoder(full).model.decoder_dims == tiny_config().model.decoder_dims


def test_counted_optimizer_state_equals_adams_after_a_step():
    r = tb.measure_step([*TINY, "data.size=[32,32]", "train.batch_size=1"], "cpu", steps=1, warmup=0)
    counted = acc.account([*TINY, "data.size=[32,32]"]).optimizer_state_bytes
    assert r["optimizer_state_bytes"] == counted


def test_energy_is_null_with_a_note_on_this_machine():
    meter = acc.EnergyMeter("cpu")
    if meter.available:
        pytest.skip("this machine has a readable RAPL counter")
    meter.start()
    assert meter.stop() is None
    assert meter.note.startswith("not measurable here (")


def test_icm_bench_json_has_the_interface_keys(capsys):
    assert main(["bench", *TINY, "--json", "--measure", "none", "--k", "3"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    d = json.loads(out[0])
    assert INTERFACE_KEYS <= set(d)
    assert d["k"] == 3 and d["storage"]["k"] == 3
    assert d["energy_joules"] is None and d["energy_note"].startswith("not measurable here")
    assert d["train_step_seconds"] is None and "train_step_seconds" in d["not_measured"]


def test_bench_measures_step_inference_and_codec_in_children():
    a = tb.bench([*TINY, "train.batch_size=1"], size=(32, 32), steps=1, warmup=0, repeats=1)
    d = a.to_dict()
    for f in ("train_step_seconds", "images_per_second", "peak_memory_bytes",
              "peak_memory_inference_bytes", "encode_seconds", "decode_seconds", "stream_bytes"):
        assert d[f] is not None and d[f] > 0, f
    assert d["size"] == [32, 32] and not d["not_measured"]
    if d["energy_joules"] is None:
        assert d["energy_note"].startswith("not measurable here")


def test_paper_trainable_percent_rounds_to_041_without_weights():
    a = acc.account(["experiment=paper"])  # meta device: EVA-02-L's shapes, nothing downloaded
    assert a.trainable_backbone_params == 1_253_376  # 24 blocks x q,k,v x (8 (1024+1024) + 1024)
    assert round(a.trainable_percent, 2) == 0.41
    assert a.size == [448, 576]


def test_merged_adapters_compute_the_same_function():
    model = build_model(tiny_config(), "cpu").eval()
    tb.trained_like(model, std=0.5)
    merged = tb.merged_copy(model, "semseg")
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    fresh = build_model(tiny_config(), "cpu").eval()  # lora_B = 0: the adapter does nothing

    def y(m):
        with m.reading("semseg"):
            return m.analysis(x, "semseg")[1]
    a, b = y(model), y(merged)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    assert (a - y(fresh)).abs().max() > 1e-3  # the adapter acts ...
    assert torch.allclose(a, b, atol=1e-4)  # ... and merged it computes the same
    with tb.dora_cache(model):
        c = y(model)
    assert torch.allclose(a, c, atol=1e-5)


@pytest.mark.parametrize("text", ["448", "0x5", "axb"])
def test_bad_sizes_and_measurements_are_refused(text):
    with pytest.raises(ConfigError, match="--size"):
        tb.parse_size(text)
    with pytest.raises(ConfigError, match="--measure"):
        tb.parse_measure("steps")
    assert tb.parse_measure("memory") == tb.MEASUREMENTS
    assert tb.parse_measure("none") == ()
