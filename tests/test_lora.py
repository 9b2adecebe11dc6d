"""LoRA through peft: targets by name, frozen base, peft layout round trip, int8 base, memory."""

from __future__ import annotations

import json

import pytest
import torch

import vlsdk
from vlsdk.models.experts import ExpertMLP
from vlsdk.quant import Int4Linear, Int8Linear
from vlsdk.testing import segmentation_loss, square_lesions
from vlsdk.train import TrainConfig, Trainer
from vlsdk.train.lora import (
    LoraQuantizedLinear,
    attach_lora,
    load_adapter,
    lora_targets,
    save_adapter,
    set_adapter,
    trainable_state_bytes,
)

LESION = r".*experts\.medical\.lesion\.fc[12]"
EXPERTS = r".*experts\.(generic\.\d|medical\.lesion)\.fc[12]"
HEAD_CONVS = [r"heads\.seg\.decoder\.stem\.0", "classifier"]


def make_model(seed=0, head=True):
    torch.manual_seed(seed)
    model = vlsdk.VLModel("tiny", in_chans=1)
    model.add_expert("medical.lesion", ExpertMLP(64, 32), init_bias=0.0)  # a domain expert that gets tokens
    if head:
        model.add_head("seg", task="segmentation", num_classes=2)
    return model


make_data = square_lesions
seg_loss = segmentation_loss("seg")


def logits(model, images):
    model.eval()
    with torch.no_grad():
        return model(images, heads=["seg"])["seg"].logits


def train_steps(model, data, steps=4, lr=1e-2):
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    images, masks = data.tensors
    for i in range(steps):
        batch = (images[4 * i:4 * i + 4], masks[4 * i:4 * i + 4])
        opt.zero_grad()
        seg_loss(model, batch)["loss"].backward()
        opt.step()
    return opt


def test_lora_goes_to_the_named_modules_only():
    model = make_model()
    attach_lora(model, "seg", [LESION, *HEAD_CONVS])
    expected = {f"encoder.stages.{i}.blocks.0.ffn.experts.medical.lesion.fc{j}" for i in (0, 1) for j in (1, 2)}
    expected |= {"heads.seg.decoder.stem.0", "heads.seg.classifier"}
    assert set(lora_targets(model, "seg")) == expected
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A.seg." in n or ".lora_B.seg." in n for n in trainable)
    assert len(trainable) == 2 * len(expected)
    assert model.peft_config["seg"].r == 8

    # the named head in full instead of LoRA in it
    model = make_model()
    attach_lora(model, "seg", LESION, r=4, train_head=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    head = {f"heads.seg.{n}" for n, _ in model.heads["seg"].named_parameters()}
    assert head <= trainable and all("lora_" in n for n in trainable - head)
    with pytest.raises(ValueError, match="cannot also carry LoRA"):
        attach_lora(make_model(), "seg", [LESION, "classifier"], train_head=True)


def test_bad_targets_and_arguments_raise_before_touching_the_model():
    model = make_model()
    with pytest.raises(ValueError, match=r"experts\\\\.dental") as info:
        attach_lora(model, "seg", [LESION, r".*experts\.dental\.fc1"])  # one of two patterns matches nothing
    assert "closest layers" in str(info.value)
    assert not hasattr(model, "peft_config") and not any("lora_" in n for n, _ in model.named_parameters())
    with pytest.raises(ValueError, match="ExpertMLP.*cannot wrap"):
        attach_lora(model, "seg", r".*experts\.medical\.lesion")  # the container, not its linears
    with pytest.raises(ValueError, match="not a valid regular expression"):
        attach_lora(model, "seg", "fc[")
    with pytest.raises(ValueError, match="r must be"):
        attach_lora(model, "seg", LESION, r=0)
    with pytest.raises(ValueError, match="quantize_base must be False, True .int8., 8 or 4, got 2"):
        attach_lora(model, "seg", LESION, quantize_base=2)
    with pytest.raises(ValueError, match="no such head"):
        attach_lora(model, "det", LESION, train_head=True)
    attach_lora(model, "seg", LESION)
    with pytest.raises(ValueError, match="already has a LoRA adapter 'seg'"):
        attach_lora(model, "seg", LESION)
    with pytest.raises(KeyError, match="no LoRA adapter 'det'"):
        set_adapter(model, "det")


def test_training_changes_outputs_and_leaves_the_base_bit_identical():
    model = make_model()
    data = make_data(16)
    images = data.tensors[0][:4]
    before = logits(model, images)
    attach_lora(model, "seg", [EXPERTS, *HEAD_CONVS])  # (gives the targeted generic experts modules)
    torch.testing.assert_close(logits(model, images), before)  # lora_B starts at zero: values kept
    base = {n: t.clone() for n, t in model.state_dict().items() if "lora_" not in n}
    train_steps(model, data)
    after = logits(model, images)
    assert (after - before).abs().max() > 1e-3
    state = model.state_dict()
    for name, tensor in base.items():
        if name not in state:  # a LoRA-wrapped layer keeps its weight under .base_layer
            prefix, _, leaf = name.rpartition(".")
            name = f"{prefix}.base_layer.{leaf}"
        assert torch.equal(state[name], tensor), name


@pytest.mark.parametrize("quantize", [False, True, 4], ids=["float", "int8", "int4"])
def test_save_load_round_trip_in_a_fresh_model(tmp_path, quantize):
    model = make_model()
    data = make_data(16)
    images = data.tensors[0][:4]
    attach_lora(model, "seg", [EXPERTS, *HEAD_CONVS], quantize_base=quantize)
    train_steps(model, data)
    expected = logits(model, images)
    save_adapter(model, "seg", tmp_path / "seg")
    files = {p.name for p in (tmp_path / "seg").iterdir()}
    assert files == {"adapter_config.json", "adapter_model.safetensors", "head_config.json", "head.safetensors"}
    config = json.loads((tmp_path / "seg" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8

    fresh = make_model(head=False)  # the same backbone, no head: it comes from the adapter directory
    load_adapter(fresh, "seg", tmp_path / "seg")
    assert torch.equal(logits(fresh, images), expected)
    assert not any(p.requires_grad for n, p in fresh.named_parameters() if "lora_" in n or n.startswith("heads."))
    assert any(isinstance(m, Int8Linear) for m in fresh.modules()) == (quantize is True)
    assert any(isinstance(m, Int4Linear) for m in fresh.modules()) == (quantize == 4)
    with pytest.raises(ValueError, match="already has a LoRA adapter"):
        load_adapter(fresh, "seg", tmp_path / "seg")
    with pytest.raises(ValueError, match=r"holds a LoRA adapter .*vlsdk.train.lora.load_adapter"):
        make_model(head=False).add_head("seg", checkpoint=tmp_path / "seg")  # models do not import training
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_adapter(make_model(), "seg", tmp_path)


def test_set_adapter_switches_tasks_explicitly(tmp_path):
    model = make_model()
    data = make_data(16)
    images = data.tensors[0][:4]
    attach_lora(model, "seg", EXPERTS)
    train_steps(model, data)
    seg = logits(model, images)
    attach_lora(model, "other", EXPERTS)  # a second task on the same experts, now active
    torch.testing.assert_close(logits(model, images), logits(make_model(), images))  # its lora_B is still zero
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".seg." in n)
    set_adapter(model, "seg")
    assert torch.equal(logits(model, images), seg)
    assert not any(p.requires_grad for p in model.parameters())  # trainable=False by default
    set_adapter(model, "other", trainable=True)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if ".other." in n}


def test_int8_base_with_lora_trains_with_the_trainer(tmp_path):
    model = make_model()
    attach_lora(model, "seg", [EXPERTS, *HEAD_CONVS], r=8, quantize_base=True)
    fc1 = model.encoder.stages[0].blocks[0].ffn.experts["generic"]["0"].fc1
    assert isinstance(fc1, LoraQuantizedLinear) and isinstance(fc1.base_layer, Int8Linear)
    assert isinstance(model.encoder.stages[0].blocks[0].attn.qkv, Int8Linear)  # untargeted frozen linears too
    frozen = {n: t.clone() for n, t in model.state_dict().items() if "lora_" not in n}
    config = TrainConfig(steps=20, batch_size=4, lr=1e-2, warmup_steps=2, log_every=1, progress=False,
                         out_dir=str(tmp_path / "run"), seed=3)
    result = Trainer(model, seg_loss, make_data(), config).fit()
    losses = [r["loss"] for r in result.train]
    print(f"\nint8 + LoRA loss: {sum(losses[:4]) / 4:.4f} -> {sum(losses[-4:]) / 4:.4f}")
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4
    state = model.state_dict()
    assert all(torch.equal(state[n], t) for n, t in frozen.items())
    assert (tmp_path / "run" / "checkpoint" / "model.safetensors").is_file()


def test_trainable_state_is_12x_smaller_than_full_fine_tuning():
    full = make_model()
    full_bytes = trainable_state_bytes(full)
    lora = make_model()
    attach_lora(lora, "seg", [EXPERTS, *HEAD_CONVS], quantize_base=True)
    lora_bytes = trainable_state_bytes(lora)
    ratio = full_bytes / lora_bytes
    print(f"\ntrainable state (grads + AdamW): full {full_bytes} B, LoRA {lora_bytes} B, {ratio:.1f}x smaller")
    assert ratio >= 12
    # the estimate is what torch's AdamW really keeps (once every parameter had a gradient)
    trainable = [p for p in lora.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable)
    for p in trainable:
        p.grad = torch.zeros_like(p)
    opt.step()
    assert trainable_state_bytes(lora, opt) == lora_bytes
    with pytest.raises(ValueError, match="optimizer must be one of"):
        trainable_state_bytes(lora, "lion")


@pytest.mark.parametrize("bits,base,tolerance", [(8, Int8Linear, 0.02), (4, Int4Linear, 0.15)])
def test_merging_into_a_quantised_base_requantises(bits, base, tolerance):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 4))
    attach_lora(net, "t", "0", r=4, quantize_base=bits)  # works on any nn.Module, by module name
    layer = net[0]
    assert isinstance(layer, LoraQuantizedLinear) and isinstance(net[2], base) and isinstance(layer.base_layer, base)
    torch.nn.init.normal_(layer.lora_B["t"].weight, std=0.1)
    x = torch.randn(8, 32)
    before = {k: b.clone() for k, b in layer.base_layer.named_buffers()}
    with torch.no_grad():
        lora = net(x)
        with pytest.warns(UserWarning, match=f"int{bits} base re-quantises"):
            layer.merge()
        assert layer.merged and layer.merged_adapters == ["t"]
        merged = layer.base_layer(x)  # the update now lives in the quantised weight
        assert float((net[2](net[1](merged)) - lora).norm() / lora.norm()) < tolerance
        layer.unmerge()
        assert not layer.merged
        assert torch.equal(net(x), lora)  # the quantised base as it was, not re-quantised once more
        for _ in range(3):  # so rounds do not wear the base down
            with pytest.warns(UserWarning):
                layer.merge()
            layer.unmerge()
    assert all(torch.equal(b, before[k]) for k, b in layer.base_layer.named_buffers())


def test_loading_an_adapter_never_requantises_a_base_under_other_adapters(tmp_path):
    data = make_data(16)
    images = data.tensors[0][:4]
    four = make_model()
    attach_lora(four, "seg", EXPERTS, quantize_base=4)
    train_steps(four, data)
    save_adapter(four, "seg", tmp_path / "four")
    served = make_model()  # a float base already serving an adapter
    attach_lora(served, "other", LESION)
    other = logits(served, images)
    with pytest.raises(ValueError, match="under the LoRA adapters already on the model"):
        load_adapter(served, "seg", tmp_path / "four")
    set_adapter(served, "other")
    assert torch.equal(logits(served, images), other)  # unchanged, and still float
    eight = make_model()
    attach_lora(eight, "x", LESION, quantize_base=8)
    with pytest.raises(ValueError, match="trained on an int4 base, but this model's base is already int8"):
        load_adapter(eight, "seg", tmp_path / "four")
    with pytest.raises(ValueError, match="quantize_base must be .* got 1"):
        attach_lora(make_model(), "seg", LESION, quantize_base=1)


def test_the_recorded_base_layers_and_groups_come_back(tmp_path):
    from vlsdk.quant import quantize_linear_layers

    model = make_model()
    names = quantize_linear_layers(model, exclude=("router", "heads", "shared"), bits=4, group_size=32)
    attach_lora(model, "seg", [EXPERTS, *HEAD_CONVS])  # on the base as the user quantised it
    train_steps(model, make_data(16))
    images = make_data(4).tensors[0]
    expected = logits(model, images)
    save_adapter(model, "seg", tmp_path / "seg")
    fresh = make_model(head=False)
    load_adapter(fresh, "seg", tmp_path / "seg")
    layers = {n.removesuffix(".base_layer"): m for n, m in fresh.named_modules() if isinstance(m, Int4Linear)}
    assert set(layers) == set(names) and all(m.group_size <= 32 for m in layers.values())
    assert torch.equal(logits(fresh, images), expected)


def test_targeted_module_names_are_checked_after_peft_too(monkeypatch):
    """Without the up-front check, peft adapts what matched and stays silent about the rest: caught after."""
    import vlsdk.train.lora as lora

    monkeypatch.setattr(lora, "_check_patterns", lambda model, patterns: {p: [] for p in patterns})
    model = make_model()
    images = make_data(4).tensors[0]
    before = logits(model, images)
    with pytest.raises(ValueError, match=r"dental.*matched no module peft adapted"):
        attach_lora(model, "seg", [LESION, r".*experts\.dental\.fc1"])
    assert "seg" not in model.peft_config
    assert not any("lora_" in n for n, _ in model.named_parameters())
    torch.testing.assert_close(logits(model, images), before)


@pytest.mark.parametrize("metadata,message", [
    ({"vlsdk_base_bits": "16"}, "records a base of '16' bits"),
    ({"vlsdk_base_bits": "4", "vlsdk_base_layers": "{not json"}, "is not JSON"),
    ({"vlsdk_base_bits": "4", "vlsdk_base_layers": '{"a": -3}'}, "must map layer names to group sizes"),
    ({"vlsdk_base_bits": "4", "vlsdk_base_layers": '{"encoder.nowhere": 32}'}, "do not fit this model"),
])
def test_a_hostile_base_record_is_refused_by_name(tmp_path, metadata, message):
    from safetensors.torch import load_file, save_file

    model = make_model()
    attach_lora(model, "seg", EXPERTS)
    save_adapter(model, "seg", tmp_path / "seg")
    weights = tmp_path / "seg" / "adapter_model.safetensors"
    save_file(load_file(weights), weights, metadata={"format": "pt", **metadata})
    with pytest.raises(ValueError, match=message):
        load_adapter(make_model(), "seg", tmp_path / "seg")
