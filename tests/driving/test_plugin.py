"""The driving plugin registers everything through its hooks; the depth path works on the real keyframe."""

from __future__ import annotations

import torch

import vlsdk_driving.plugin as driving_plugin
from vlsdk.plugins import build_head, get_registry


def test_registrations(register_plugin):
    info = register_plugin(driving_plugin, "driving")
    assert info.status == "loaded"
    assert {k: set(v) for k, v in info.registered.items()} == {
        "experts": {"driving.lidar"}, "heads": {"driving.bev_detection"},
        "datasets": {"driving.kitti", "driving.nuscenes"}, "synthesizers": {"driving.scenes"},
        "metrics": {"driving.depth", "driving.nuscenes_ap"}, "commands": {"driving-detect"},
        "demos": {"driving"}, "tasks": {"driving.bev", "driving.depth"}, "input_readers": {"driving.point_cloud"},
        "output_writers": {"driving.bev_boxes"}}
    head = build_head("driving.bev_detection", {4: 16, 8: 32}, num_classes=3)
    assert head.num_classes == 3
    assert get_registry("datasets").get("driving.nuscenes").plugin == "driving"
    metric = get_registry("metrics").get("driving.nuscenes_ap").obj()
    assert hasattr(metric, "update") and hasattr(metric, "compute") and hasattr(metric, "reset")


def test_core_depth_head_on_sparse_lidar_targets(register_plugin, real_sample):
    """Camera depth: the core DepthHead supervised by the real LiDAR projected into CAM_FRONT."""
    import vlsdk
    from vlsdk_driving.depth import DepthMetrics, sparse_depth_map

    register_plugin(driving_plugin, "driving")
    cam = real_sample.cameras["CAM_FRONT"]
    target = sparse_depth_map(real_sample.points, cam, (48, 80))[None, None]
    image = torch.from_numpy(cam.load_image()).permute(2, 0, 1)[None].float() / 255
    image = torch.nn.functional.interpolate(image, size=(48, 80), mode="bilinear", align_corners=False)
    torch.manual_seed(0)
    model = vlsdk.VLModel("tiny", in_chans=3)
    model.add_head("depth", task="depth", max_depth=100.0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    metric = DepthMetrics()
    losses = []
    for _ in range(4):
        out = model(image, heads=["depth"])["depth"]
        loss = model.heads["depth"].loss(out, target)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    metric.update(out.depth.detach(), target)
    res = metric.compute()
    assert res["pixels"] == int((target > 0).sum()) > 200
    assert res["abs_rel"] > 0 and res["rmse"] > 0
    assert losses[-1] < losses[0]


def test_registered_synthesizer_makes_a_dataset_from_a_seed(register_plugin):
    import shutil

    from vlsdk_driving.synth import SceneRandomization

    register_plugin(driving_plugin, "driving")
    factory = get_registry("synthesizers").get("driving.scenes").obj
    synth = factory(num_scenes=1, samples_per_scene=1, camera_channel=None,
                    randomization=SceneRandomization(num_objects=(2, 3), azimuth_steps=(100, 120)))
    ds = synth(seed=5)
    try:
        sample = ds[0]
        assert len(sample.boxes) == len(synth.truth[sample.token]) >= 2
    finally:
        shutil.rmtree(ds.dataroot)
