"""The model card README.md that save_pretrained writes: recorded facts shown, missing ones 'not recorded'."""

from __future__ import annotations

import vlsdk
from vlsdk.models.metadata import InputSpec, ModelMetadata


def test_card_shows_every_recorded_fact(tmp_path):
    model = vlsdk.VLModel("tiny", in_chans=2, text=None)
    model.add_head("lesion", task="segmentation", num_classes=3)
    model.metadata = ModelMetadata(
        task="brain lesion segmentation", class_names={"lesion": ("background", "oedema", "core")},
        input=InputSpec(("flair", "t1c"), "zscore_per_image", (240, 240), (1.0, 1.0, 1.5)),
        training={"data": "BraTS 2015, 4 patients", "data_licence": "CC BY-NC-SA 4.0",
                  "metrics": {"dice": 0.708}, "command": "vlsdk medical --held-out pat0001", "seed": 3,
                  "steps": 400},
        intended_use="research on lesion segmentation", limitations="trained on 4 patients")
    model.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    counts = vlsdk.count_parameters(model)
    for fact in ("# vlsdk model: brain lesion segmentation", "`lesion` (task `segmentation`): 0 = background, "
                 "1 = oedema, 2 = core", "Channels: 2: flair, t1c", "Scaling: zscore_per_image",
                 "Image size (height x width): 240 x 240", "Voxel spacing (mm): 1.0 x 1.0 x 1.5",
                 "Training data: BraTS 2015, 4 patients", "Data licence: CC BY-NC-SA 4.0", "dice: 0.708",
                 "`vlsdk medical --held-out pat0001`", "Seed: 3", "steps: 400", "research on lesion segmentation",
                 "trained on 4 patients", f"vlsdk version: {vlsdk.__version__}", f"{counts.total:,} total",
                 f"{counts.active:,} active"):
        assert fact in card, fact
    assert "not recorded" not in card


def test_card_says_not_recorded_instead_of_inventing(tmp_path):
    model = vlsdk.VLModel("tiny", in_chans=1, text=None)
    model.add_head("det", task="detection", num_classes=2)
    model.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    for fact in ("Task: not recorded", "`det` (task `detection`): class names not recorded",
                 "Channels: 1: channel_0 (meanings not recorded)", "Image size (height x width): not recorded",
                 "Voxel spacing (mm): not recorded", "Training data: not recorded", "Data licence: not recorded",
                 "Metrics: not recorded", "Command that produced the metrics: not recorded",
                 "## Intended use\n\nnot recorded", "## Limitations\n\nnot recorded"):
        assert fact in card, fact
