"""ONNX export: parity with PyTorch on every head and expert, dynamic batch, dropped experts, INT8, CLI."""

from __future__ import annotations

import argparse
import contextlib
import copy

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import vlsdk  # noqa: E402
from vlsdk import VLModel  # noqa: E402
from vlsdk.export import (  # noqa: E402
    check_parity,
    decode_onnx_outputs,
    int8_drift,
    missing_experts,
    quantize_onnx,
    read_metadata,
    read_props,
    run_onnx,
    to_onnx,
)
from vlsdk.export.cli import EXPORT_COMMAND  # noqa: E402
from vlsdk.export.onnx import ExportWrapper  # noqa: E402
from vlsdk.export.parity import session  # noqa: E402
from vlsdk.export.quantize import float_node_names  # noqa: E402

SIZE = (32, 32)  # stage grids 2x2 and 1x1: a batch-1 image reaches 2 experts of the last layer
ATOL = 1e-4  # issue 8 target for fp32 parity
DOMAIN = "industrial.pcb_defect"


def _images(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, *SIZE, generator=torch.Generator().manual_seed(seed))


def _spread_routing(model: VLModel, images: torch.Tensor) -> None:
    """Force routing apart: each router row points at a different token of ``images``.

    Layer by layer (a layer's input depends on the routing before it), the centred inputs of
    ``E`` spread-out tokens become the rows of the router, biases zero, so each of those tokens
    prefers a different expert and every expert is reached.
    """
    for layer in model.moe_layers:
        seen: list[torch.Tensor] = []
        handle = layer.register_forward_pre_hook(lambda mod, args, seen=seen: seen.append(args[0].reshape(-1, mod.dim)))
        try:
            with torch.no_grad():
                model(images, heads=[])
        finally:
            handle.remove()
        tokens = seen[0] - seen[0].mean(0)
        rows = torch.linspace(0, tokens.shape[0] - 1, len(layer.expert_names)).round().long()
        with torch.no_grad():
            layer.router.weight.copy_(8.0 * tokens[rows] / tokens[rows].norm(dim=1, keepdim=True))
            layer.router.bias.zero_()


def _counts(model: VLModel, images: torch.Tensor) -> list[torch.Tensor]:
    """Tokens per expert of each MoE layer on the sparse path (RouterStats)."""
    with torch.no_grad():
        out = model(images, heads=[])
    return [s.tokens_per_expert for s in out.features.router_stats]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: a tiny model gains nothing from two, and OpenMP spinning on a busy
    2-core machine made a 25 ms forward take 5 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from vlsdk.plugins import get_registry

    try:
        get_registry("experts").get(DOMAIN)
    except Exception as exc:  # noqa: BLE001 - the industrial extra is not installed
        pytest.skip(f"{DOMAIN} is not registered: {exc}")
    torch.manual_seed(0)
    model = VLModel("tiny").eval()
    model.add_head("det", task="detection", num_classes=3, width=16)
    model.add_head("seg", task="segmentation", num_classes=4)
    model.add_head("depth", task="depth", max_depth=10.0)
    model.add_expert(DOMAIN, init_bias=5.0)
    _spread_routing(model, _images(8, seed=1))
    path = to_onnx(model, tmp_path_factory.mktemp("onnx") / "tiny.onnx", image_size=SIZE, batch_size=2)
    return model, path, session(path, threads=1)


def test_metadata_and_state_restored(exported):
    model, path, sess = exported
    meta = read_metadata(path)
    assert meta["outputs"] == ["det.cls_logits", "det.obj_logits", "det.ltrb", "det.boxes", "det.anchors",
                               "det.strides", "seg.logits", "depth.depth"]
    assert meta["experts"] == [layer.expert_names for layer in model.moe_layers]
    assert all(DOMAIN in names for names in meta["experts"])
    assert meta["heads"]["det"]["level_sizes"] and meta["image_size"] == list(SIZE)
    assert not any(layer.dense for layer in model.moe_layers)  # back on the sparse path
    assert missing_experts(model, path) == []


def test_parity_on_input_reaching_every_expert(exported):
    model, path, sess = exported
    images = _images(8, seed=1)
    for i, counts in enumerate(_counts(model, images)):
        assert bool((counts > 0).all()), f"layer {i} leaves experts unreached: {counts.tolist()}"
    errors = check_parity(model, sess, images)
    assert set(errors) == set(read_metadata(path)["outputs"])
    assert max(errors.values()) <= ATOL, errors
    # the dense path the graph was traced from agrees as well
    assert max(check_parity(model, sess, images, dense=True).values()) <= ATOL


def test_parity_on_tiny_input_reaching_few_experts(exported):
    model, path, sess = exported
    images = _images(1, seed=2)  # batch 1 (exported with 2): one token in the last MoE layer
    counts = _counts(model, images)
    assert int((counts[-1] > 0).sum()) == model.moe_layers[-1].top_k
    errors = check_parity(model, sess, images)
    assert max(errors.values()) <= ATOL, errors


def test_parity_of_the_base_layout_stride_32_tokens_and_upsampled_stride_16(tmp_path):
    torch.manual_seed(0)
    model = VLModel("tiny@patch_size=4@depths=2,@stem_entry=patchify").eval()  # base's layout, tiny widths
    model.add_head("det", task="detection", num_classes=3, width=16)
    model.add_head("seg", task="segmentation", num_classes=2)
    assert model.encoder.up16 is not None and 16 in model.heads["det"].strides
    path = to_onnx(model, tmp_path / "stride32.onnx", image_size=SIZE, batch_size=2)
    errors = check_parity(model, path, _images(3, seed=3))
    assert max(errors.values()) <= ATOL, errors


def test_dynamic_batch(exported):
    model, path, sess = exported
    out = run_onnx(sess, _images(3, seed=3))
    assert out["seg.logits"].shape == (3, 4, *SIZE)
    assert out["det.cls_logits"].shape[0] == 3 and out["det.anchors"].shape[1] == 2
    assert max(check_parity(model, sess, _images(3, seed=3)).values()) <= ATOL


@contextlib.contextmanager
def _silenced(layer, name):
    """Expert ``name`` of ``layer`` answers zeros: a hook on a module, zeroed fc2 slices for a stacked generic one."""
    if name.startswith("generic.") and layer.stacked:
        i, experts = int(name.split(".")[1]), layer.experts["generic"]
        saved = experts.fc2_weight[i].clone(), experts.fc2_bias[i].clone()
        with torch.no_grad():
            experts.fc2_weight[i].zero_()
            experts.fc2_bias[i].zero_()
        try:
            yield
        finally:
            with torch.no_grad():
                experts.fc2_weight[i].copy_(saved[0])
                experts.fc2_bias[i].copy_(saved[1])
        return
    handle = layer.expert(name).register_forward_hook(lambda mod, args, out: torch.zeros_like(out))
    try:
        yield
    finally:
        handle.remove()


def test_dropping_any_expert_breaks_parity(exported):
    """A graph without one expert would fail the every-expert parity check: silence each in turn."""
    model, path, sess = exported
    images = _images(8, seed=1)
    onnx_out = run_onnx(sess, images)
    names = read_metadata(path)["outputs"]
    for i, layer in enumerate(model.moe_layers):
        for name in [*layer.expert_names, "shared"]:
            with _silenced(layer, name), torch.no_grad():
                ref = ExportWrapper(model, list(read_metadata(path)["heads"]))(images)
            worst = max(float(np.abs(onnx_out[n] - r.numpy()).max()) for n, r in zip(names, ref, strict=True))
            assert worst > 10 * ATOL, f"dropping layer {i} {name} changes no output ({worst:.1e})"


def test_perturbed_experts_differ_from_graph(exported):
    """The graph holds the weights it was exported with: it matches the original, not a perturbed copy."""
    model, path, sess = exported
    perturbed = copy.deepcopy(model)
    with torch.no_grad():
        for layer in perturbed.moe_layers:
            for name in ("generic.3", DOMAIN):
                layer.expert(name).fc2.weight.add_(0.5)
    images = _images(8, seed=1)
    assert max(check_parity(model, sess, images).values()) <= ATOL
    assert max(check_parity(perturbed, sess, images).values()) > 100 * ATOL
    assert sorted(missing_experts(perturbed, path)) == []  # fc1 and the convs are unchanged
    for layer in perturbed.moe_layers:  # now every weight matrix of those experts differs
        for name in ("generic.3", DOMAIN):
            for p in layer.expert(name).parameters():
                if p.dim() >= 2:
                    p.data.add_(0.5)
    assert sorted(missing_experts(perturbed, path)) == sorted(f"layer{i}/{n}" for i in range(2)
                                                              for n in (DOMAIN, "generic.3"))


def test_missing_experts_finds_an_expert_absent_from_the_graph(exported):
    model, path, sess = exported
    bigger = copy.deepcopy(model)
    bigger.add_expert("extra.probe", nn.Linear(64, 64))
    assert missing_experts(bigger, path) == ["layer0/extra.probe", "layer1/extra.probe"]


def test_layers_no_output_reads_are_pruned_not_reported_as_dropped(tmp_path):
    """A head on strides 4-16 leaves the stride-32 stage dead: exported without it, and said so."""
    model = VLModel("tiny")
    model.add_head("seg", task="segmentation", num_classes=2, strides=(4, 8, 16))
    model.eval()
    path = to_onnx(model, tmp_path / "seg16.onnx", image_size=SIZE)
    assert read_metadata(path)["unused_moe_layers"] == [1]
    assert missing_experts(model, path) == [f"layer1/{n}" for n in (*model.moe_layers[1].expert_names, "shared")]
    assert missing_experts(model, path, layers=[0]) == []
    assert max(check_parity(model, path, _images(2, seed=5)).values()) <= ATOL


def test_decode_onnx_outputs_matches_head_decode(exported):
    model, path, sess = exported
    images = _images(2, seed=4)
    meta = read_metadata(path)
    with torch.no_grad():
        out = model(images)
        ref = ExportWrapper(model)(images)
    arrays = {n: t.numpy() for n, t in zip(meta["outputs"], ref, strict=True)}
    decoded = decode_onnx_outputs(arrays, meta, score_threshold=0.0, max_detections=20)
    expected = model.heads["det"].decode(out["det"], score_threshold=0.0, max_detections=20)
    for got, want in zip(decoded["det"], expected, strict=True):
        assert torch.equal(got.labels, want.labels) and torch.allclose(got.boxes, want.boxes)
    assert torch.equal(decoded["seg"].labels, model.heads["seg"].decode(out["seg"]).labels)
    assert decoded["depth"].shape == (2, *SIZE)
    onnx_decoded = decode_onnx_outputs(run_onnx(sess, images), meta, score_threshold=0.0)
    assert len(onnx_decoded["det"]) == 2


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_int8_runs_and_drift_is_bounded(exported, tmp_path, mode):
    _, path, _ = exported
    calibration = [_images(4, seed=10 + i) for i in range(2)] if mode == "static" else None
    int8 = quantize_onnx(path, tmp_path / f"{mode}.onnx", mode=mode, calibration=calibration)
    assert read_metadata(int8)["quantization"]["mode"] == mode
    # routers and shared experts kept float: their Gemm nodes are still there, by name
    kept = float_node_names(path)
    assert any("/router" in n for n in kept) and any("/shared/" in n for n in kept)
    import onnx

    int8_nodes = {n.name: n.op_type for n in onnx.load(str(int8)).graph.node}
    assert all(int8_nodes.get(n) == "Gemm" or int8_nodes.get(f"{n}_MatMul") == "MatMul" for n in kept)
    assert "MatMulInteger" in int8_nodes.values() or "QuantizeLinear" in int8_nodes.values()
    if mode == "dynamic":  # the stacked experts are quantised too (static QDQ keeps its Gemm nodes)
        generic = [op for name, op in int8_nodes.items() if "/generic/" in name]
        assert generic and not any(op in ("MatMul", "Gemm") for op in generic)
    drift = int8_drift(path, int8, [_images(4, seed=20)])
    print(f"\nINT8 {mode} drift:", {k: {m: f"{v:.1e}" for m, v in row.items()} for k, row in drift.items()})
    bound = 0.01 if mode == "dynamic" else 0.1
    assert all(row["rel_rms"] <= bound for row in drift.values()), drift
    assert drift["seg.logits"]["label_agreement"] >= (0.99 if mode == "dynamic" else 0.95)


def test_bad_arguments(exported, tmp_path):
    model, path, sess = exported
    with pytest.raises(ValueError, match="attached heads"):
        to_onnx(model, tmp_path / "x.onnx", heads=["nope"], image_size=SIZE)
    with pytest.raises(ValueError, match="in_chans=3"):
        to_onnx(model, tmp_path / "x.onnx", image_size=SIZE, in_chans=1)
    with pytest.raises(ValueError, match="image_size"):
        to_onnx(model, tmp_path / "x.onnx", image_size=(32,))
    with pytest.raises(ValueError, match="opset"):
        to_onnx(model, tmp_path / "x.onnx", image_size=SIZE, opset=9)
    with pytest.raises(ValueError, match="VLModel"):
        to_onnx(nn.Linear(2, 2), tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="mode"):
        quantize_onnx(path, tmp_path / "q.onnx", mode="int4")
    with pytest.raises(ValueError, match="calibration"):
        quantize_onnx(path, tmp_path / "q.onnx", mode="static")
    assert not (tmp_path / "x.onnx").exists()


def _edit_metadata(directory, **fields) -> None:
    """Change fields of the saved config.json's "metadata" block in the real file (a hand edit)."""
    import json

    config = json.loads((directory / "config.json").read_text())
    config["metadata"].update(fields)
    (directory / "config.json").write_text(json.dumps(config))


def _lesion_model() -> VLModel:
    from vlsdk.models.metadata import InputSpec, ModelMetadata

    torch.manual_seed(0)
    model = VLModel("tiny", in_chans=1)
    model.add_head("seg", task="segmentation", num_classes=2)
    model.metadata = ModelMetadata(task="lesion segmentation", class_names={"seg": ("background", "lesion")},
                                   input=InputSpec(("flair",), "zscore_per_image", (32, 32), (1.0, 1.0, 1.0)))
    return model


def test_cli_export_onnx(tmp_path, capsys):
    import json

    import onnx

    _lesion_model().save_pretrained(tmp_path / "model")
    parser = argparse.ArgumentParser()
    EXPORT_COMMAND.configure(parser)
    out = tmp_path / "seg.onnx"
    args = parser.parse_args(["onnx", "--model", str(tmp_path / "model"), "--out", str(out),
                              "--image-size", *map(str, SIZE), "--int8"])
    assert EXPORT_COMMAND.run(args) == 0
    printed = capsys.readouterr().out
    assert "int8 drift seg.logits" in printed
    rows = [line.split() for line in printed.splitlines() if line.split()[:1] in (["1"], ["2"])]
    assert [(r[0], r[1], r[2], r[-1]) for r in rows] == [("2", "32x32", "seg.logits", "ok"),
                                                         ("1", "32x32", "seg.logits", "ok")]
    assert '  class_names: {"seg": ["background", "lesion"]}' in printed and "  scaling: zscore_per_image" in printed
    expected = {"vlsdk_version": vlsdk.__version__, "task": "lesion segmentation",
                "class_names": '{"seg": ["background", "lesion"]}', "in_chans": "1", "input_channels": '["flair"]',
                "scaling": "zscore_per_image", "image_size": "[32, 32]", "dynamic_size": "false",
                "voxel_spacing": "[1.0, 1.0, 1.0]"}
    on_disk = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert {k: on_disk[k] for k in expected} == expected
    assert json.loads(on_disk["vlsdk"])["parity"]["atol"] == 1e-4
    ort_meta = session(out).get_modelmeta().custom_metadata_map
    assert {k: ort_meta[k] for k in expected} == expected
    int8_meta = session(out.with_suffix(".int8.onnx")).get_modelmeta().custom_metadata_map
    assert int8_meta["class_names"] == expected["class_names"] and "parity" not in read_metadata(
        out.with_suffix(".int8.onnx"))
    assert run_onnx(out, torch.zeros(2, 1, *SIZE))["seg.logits"].shape == (2, 2, *SIZE)
    args = parser.parse_args(["onnx", "--model", str(tmp_path / "model"), "--out", str(out), "--heads", "nope"])
    assert EXPORT_COMMAND.run(args) == 1
    assert "unknown head" in capsys.readouterr().out


def test_cli_without_metadata_and_with_a_bad_one(tmp_path, capsys):
    torch.manual_seed(0)
    plain = VLModel("tiny", in_chans=1)
    plain.add_head("seg", task="segmentation", num_classes=2)
    plain.save_pretrained(tmp_path / "plain")
    parser = argparse.ArgumentParser()
    EXPORT_COMMAND.configure(parser)
    out = tmp_path / "seg.onnx"
    args = parser.parse_args(["onnx", "--model", str(tmp_path / "plain"), "--out", str(out),
                              "--image-size", *map(str, SIZE)])
    assert EXPORT_COMMAND.run(args) == 0
    props = read_props(out)
    assert props["task"] == "segmentation" and props["in_chans"] == "1"  # the heads' task when none was recorded
    assert "class_names" not in props  # not recorded: absent, not invented
    _lesion_model().save_pretrained(tmp_path / "bad")
    _edit_metadata(tmp_path / "bad", class_names={"seg": ["lesion"]})
    out.unlink()
    args = parser.parse_args(["onnx", "--model", str(tmp_path / "bad"), "--out", str(out),
                              "--image-size", *map(str, SIZE)])
    assert EXPORT_COMMAND.run(args) == 1
    printed = capsys.readouterr().out
    assert "'class_names.seg': expected 2 names (head 'seg' outputs 2 labels (segmentation: the background" in printed
    assert str(tmp_path / "bad" / "config.json") in printed and not out.exists()


def test_cli_tracer_warnings_fail_unless_allowed_and_are_printed(tmp_path, capsys):
    torch.manual_seed(0)
    model = VLModel("tiny")
    model.add_head("det", task="detection", num_classes=2, width=16)
    model.save_pretrained(tmp_path / "det")
    parser = argparse.ArgumentParser()
    EXPORT_COMMAND.configure(parser)
    out = tmp_path / "det.onnx"
    base = ["onnx", "--model", str(tmp_path / "det"), "--out", str(out), "--image-size", *map(str, SIZE),
            "--dynamic-size"]
    assert EXPORT_COMMAND.run(parser.parse_args(base)) == 1
    printed = capsys.readouterr().out
    assert "error: the tracer froze values" in printed and "heads/detection.py:" in printed and not out.exists()
    with pytest.warns(UserWarning, match="tracer warning"):
        assert EXPORT_COMMAND.run(parser.parse_args([*base, "--allow-tracer-warnings"])) == 0
    printed = capsys.readouterr().out
    assert "tracer warnings allowed by --allow-tracer-warnings (2)" in printed
    assert {line.split()[1] for line in printed.splitlines() if line.split()[:1] in (["1"], ["2"])} == {"32x32",
                                                                                                         "64x96"}
