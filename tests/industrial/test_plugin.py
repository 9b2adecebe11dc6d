"""The industrial plugin registers everything through its hooks, attributed to it."""

from __future__ import annotations

import vlsdk_industrial.plugin as industrial_plugin
from vlsdk_industrial.coco import COCODataset
from vlsdk_industrial.deeppcb import DeepPCBDataset
from vlsdk_industrial.demo import run_demo
from vlsdk_industrial.experts import PcbDefectExpert
from vlsdk_industrial.folder import ImageFolder
from vlsdk_industrial.metrics import DetectionMAP
from vlsdk_industrial.synth import BoardSynthesizer
from vlsdk_industrial.transforms import build_transforms
from vlsdk_industrial.voc import VOCDataset

EXPECTED = {
    "experts": {"industrial.pcb_defect": PcbDefectExpert},
    "datasets": {"industrial.deeppcb": DeepPCBDataset, "industrial.voc": VOCDataset, "industrial.coco": COCODataset,
                 "industrial.folder": ImageFolder},
    "transforms": {"industrial.default": build_transforms},
    "metrics": {"industrial.map": DetectionMAP},
    "synthesizers": {"industrial.boards": BoardSynthesizer},
    "demos": {"industrial": run_demo},
}


def test_registrations(plugin_host, register_plugin) -> None:
    register_plugin(industrial_plugin, "industrial")
    for kind, entries in EXPECTED.items():
        registry = plugin_host.registry(kind)
        for name, obj in entries.items():
            entry = registry.get(name)
            assert entry.obj is obj and entry.plugin == "industrial" and entry.metadata["description"]
    command = plugin_host.registry("commands").get("pcb")
    assert command.plugin == "industrial" and command.obj.help
    # the registered factories follow their registries' contracts
    synth = plugin_host.registry("synthesizers").get("industrial.boards").obj(size=96)
    sample = build_transforms(train=True, size=64, seed=0)(synth(0))
    assert sample["image"].shape == (64, 64, 1)
    metric = plugin_host.registry("metrics").get("industrial.map").obj()
    metric.update([{"boxes": sample["boxes"], "scores": [1.0] * len(sample["boxes"]), "labels": sample["labels"]}],
                  [{"boxes": sample["boxes"], "labels": sample["labels"]}])
    assert metric.compute().map50 == 1.0
    metric.reset()
    assert metric._images == []
