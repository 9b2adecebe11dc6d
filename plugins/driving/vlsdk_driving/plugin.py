"""The driving plugin's hooks (entry point ``driving = "vlsdk_driving.plugin"``).

Importing this module checks the ``driving`` extra first, so without it the plugin manager lists
the plugin as unavailable with the ``pip install "vlsdk[driving]"`` hint.
"""

from __future__ import annotations

from vlsdk.plugins.errors import require_extra

require_extra("driving", "nuscenes")

from vlsdk.plugins import hookimpl


@hookimpl
def vlsdk_register_experts(register):
    """Register the ``driving.lidar`` expert."""
    from vlsdk_driving.experts import LidarExpert

    register(
        "driving.lidar",
        LidarExpert,
        description="occupancy-gated dilated depthwise conv + SwiGLU for sparse LiDAR BEV grids",
    )


@hookimpl
def vlsdk_register_heads(register):
    """Register the ``driving.bev_detection`` head."""
    from vlsdk_driving.heads import BEVDetectionHead

    register("driving.bev_detection", BEVDetectionHead,
             description="CenterPoint-style BEV 3D detection: centre heatmap, offset, z, size, yaw, velocity")


@hookimpl
def vlsdk_register_input_readers(register):
    """Register ``driving.point_cloud``: LiDAR sweeps for ``vlsdk predict`` (models saved with a BEV encoder)."""
    from vlsdk_driving.predict import POINT_CLOUD_KIND, POINT_CLOUD_READER

    register(POINT_CLOUD_KIND, POINT_CLOUD_READER, description=POINT_CLOUD_READER.description)


@hookimpl
def vlsdk_register_output_writers(register):
    """Register ``driving.bev_boxes``: the BEV detection head's 3D boxes in JSON and over the BEV picture."""
    from vlsdk_driving.predict import BEV_BOXES_WRITER

    register("driving.bev_boxes", BEV_BOXES_WRITER, description=BEV_BOXES_WRITER.description)


@hookimpl
def vlsdk_register_datasets(register):
    """Register ``driving.nuscenes`` and ``driving.kitti``."""
    from vlsdk_driving.kitti import KittiDataset
    from vlsdk_driving.nuscenes_adapter import NuScenesDataset

    register("driving.nuscenes", NuScenesDataset,
             description="nuScenes-format logs via nuscenes-devkit: LiDAR sweeps, cameras, 3D boxes (LiDAR frame)")
    register("driving.kitti", KittiDataset, description="KITTI velodyne/calib/label_2/image_2 frames")


@hookimpl
def vlsdk_register_synthesizers(register):
    """Register ``driving.scenes``."""
    from vlsdk_driving.synth import NuScenesSceneSynthesizer

    register("driving.scenes", NuScenesSceneSynthesizer,
             description="ray-cast synthetic scenes written as a nuScenes-format dataset the devkit loads")


@hookimpl
def vlsdk_register_metrics(register):
    """Register ``driving.nuscenes_ap`` and ``driving.depth``."""
    from vlsdk_driving.depth import DepthMetrics
    from vlsdk_driving.metrics import NuScenesDetectionAP

    register("driving.nuscenes_ap", NuScenesDetectionAP,
             description="nuscenes-devkit center-distance AP (0.5/1/2/4 m) per class and mean")
    register("driving.depth", DepthMetrics, description="AbsRel and RMSE of depth against sparse LiDAR targets")


@hookimpl
def vlsdk_register_demos(register):
    """Register the ``driving`` part of ``vlsdk demo``."""
    from vlsdk_driving.demo import run_demo as run_driving_demo

    register("driving", run_driving_demo,
             description="BEV detector with the driving.lidar expert trained on synthetic nuScenes-format "
                         "scenes; devkit car AP@2m and mAP on held-out scenes")


@hookimpl
def vlsdk_register_commands(register):
    """Register ``vlsdk driving-detect``."""

    def configure(parser):
        from vlsdk_driving.cli import add_demo_arguments

        add_demo_arguments(parser)

    def run(args):
        from vlsdk_driving.cli import run_demo

        return run_demo(args)

    register("driving-detect", run, configure=configure,
             help="train LiDAR BEV detection on synthetic nuScenes scenes; evaluate (devkit AP) and draw "
                  "(the driving.bev task; vlsdk train examples/configs/driving_bev.yaml)",
             description="Train a CenterPoint-style BEV detector on synthetic nuScenes-format scenes, evaluate it "
                         "on held-out scenes and on a nuScenes-format folder (--nuscenes), save it and write "
                         "pictures: the driving.bev task run by the task runner.")


@hookimpl
def vlsdk_register_tasks(register):
    """Register the tasks ``driving.bev`` (LiDAR BEV detection) and ``driving.depth`` (camera depth)."""
    from vlsdk_driving.bev_task import BEVTask
    from vlsdk_driving.depth_task import DepthTask

    register(BEVTask.name, BEVTask, description=BEVTask.description, extra="driving")
    register(DepthTask.name, DepthTask, description=DepthTask.description, extra="driving")
