"""nuScenes-schema data from another fleet: Lyft category names, an extra LiDAR, dangling links, through the CLI."""

from __future__ import annotations

import argparse
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from vlsdk_driving.categories import LYFT_CATEGORY_MAP, resolve_category_map
from vlsdk_driving.nuscenes_adapter import DataWarning
from vlsdk_driving.nuscenes_source import NuScenesSource
from vlsdk_driving.cli import add_demo_arguments
from vlsdk_driving.sample import DETECTION_CLASSES
from vlsdk_driving.synth import NuScenesSceneSynthesizer, SceneRandomization

VERSION = "v1.0-trainval"
#: the written category of each detection class: Lyft's names, and two the Lyft map does not hold
LYFT_NAMES = {"car": "car", "truck": "other_vehicle", "trailer": "other_vehicle", "bus": "bus",
              "construction_vehicle": "emergency_vehicle", "bicycle": "bicycle", "motorcycle": "motorcycle",
              "pedestrian": "pedestrian", "traffic_cone": "movable_object.debris", "barrier": "animal"}
DANGLING = "deadbeefdeadbeefdeadbeefdeadbeef"


def _add_lidar_channel(table_dir: Path, root: Path, channel: str) -> None:
    """A second LiDAR (its own sensor, calibration, keyframe files and linked sample_data rows)."""
    load = lambda name: json.loads((table_dir / f"{name}.json").read_text())  # noqa: E731
    sensors, cals, rows = load("sensor"), load("calibrated_sensor"), load("sample_data")
    top = next(s for s in sensors if s["channel"] == "LIDAR_TOP")
    sensors.append({"token": "f" * 32, "channel": channel, "modality": "lidar"})
    new_cal = {}
    for c in [c for c in cals if c["sensor_token"] == top["token"]]:
        new_cal[c["token"]] = {**c, "token": c["token"][::-1], "sensor_token": "f" * 32,
                               "translation": [c["translation"][0] + 1.0, c["translation"][1] + 0.5, 1.6]}
    cals += list(new_cal.values())
    (root / "samples" / channel).mkdir(parents=True, exist_ok=True)
    extra = []
    for r in [r for r in rows if r["calibrated_sensor_token"] in new_cal and r["is_key_frame"]]:
        name = r["filename"].replace("LIDAR_TOP", channel)
        shutil.copy(root / r["filename"], root / name)
        extra.append({**r, "token": r["token"][::-1], "filename": name,
                      "calibrated_sensor_token": new_cal[r["calibrated_sensor_token"]]["token"]})
    tokens = [""] + [r["token"] for r in extra] + [""]
    for i, r in enumerate(extra):  # each scene's rows in time order; links never cross scenes in this test
        r["prev"], r["next"] = tokens[i], tokens[i + 2]
    for name, table in (("sensor", sensors), ("calibrated_sensor", cals), ("sample_data", rows + extra)):
        (table_dir / f"{name}.json").write_text(json.dumps(table))


@pytest.fixture(scope="module")
def lyft_root(tmp_path_factory) -> Path:
    """Two synthetic scenes written with Lyft names, version v1.0-trainval, LIDAR_FRONT_LEFT and a dangling link."""
    root = tmp_path_factory.mktemp("lyft")
    weights = {c: 3.0 if c in ("barrier", "traffic_cone", "truck") else 1.0 for c in DETECTION_CLASSES}
    synth = NuScenesSceneSynthesizer(1, 3, version=VERSION, category_names=LYFT_NAMES, image_size=(64, 36),
                                     randomization=SceneRandomization(azimuth_steps=(300, 400), num_objects=(12, 16),
                                                                      class_weights=weights, area=25.0))
    synth.write(root, seed=3)
    table_dir = root / VERSION
    _add_lidar_channel(table_dir, root, "LIDAR_FRONT_LEFT")
    anns = json.loads((table_dir / "sample_annotation.json").read_text())
    anns[0]["next"] = DANGLING  # a link to a record that is not in the table
    (table_dir / "sample_annotation.json").write_text(json.dumps(anns))
    return root


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_demo_arguments(parser)
    return parser.parse_args(list(argv))


def test_reader_with_the_lyft_map_reports_drops_once(lyft_root):
    args = _parse("--nuscenes", str(lyft_root), "--version", VERSION, "--category-map", "lyft",
                  "--lidar-channel", "LIDAR_TOP", "--camera-channels", "CAM_FRONT")
    source = NuScenesSource.from_args(args)
    assert source == NuScenesSource(VERSION, "LIDAR_TOP", ("CAM_FRONT",), "lyft")
    anns = json.loads((lyft_root / VERSION / "sample_annotation.json").read_text())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = source.open(args.nuscenes)
        samples = [ds[i] for i in range(len(ds))]
    messages = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert len(messages) == 2, messages  # one for the categories, one for the link; none per sample
    dropped = ds.dropped_categories
    assert set(dropped) == {"animal", "movable_object.debris"} and all(n > 0 for n in dropped.values())
    drop_msg = next(m for m in messages if "categories outside the category map" in m)
    assert f"{sum(dropped.values())} annotation(s)" in drop_msg
    assert f"animal {dropped['animal']}" in drop_msg and f"movable_object.debris {dropped['movable_object.debris']}" \
        in drop_msg
    assert any(f"sample_annotation.json: 1 prev/next" in m and DANGLING in m for m in messages)
    names = {n for s in samples for n in s.boxes.names}
    assert "truck" in names and not names & {"traffic_cone", "barrier"}  # other_vehicle -> truck; cones, barriers dropped
    kept = sum(len(s.boxes) for s in samples)
    assert kept + sum(dropped.values()) == len(anns)
    assert list(samples[0].cameras) == ["CAM_FRONT"]
    bad = next(s for s in samples if anns[0]["token"] in s.boxes.tokens)
    assert np.isnan(bad.boxes.velocity[bad.boxes.tokens.index(anns[0]["token"])]).all()
    assert ds.skipped["dangling_link_velocity"] == 1
    # the extra LiDAR: the same cloud, in the frame of a sensor mounted elsewhere
    other = NuScenesSource(VERSION, "LIDAR_FRONT_LEFT", (), "lyft").open(lyft_root)
    moved = other[0]
    assert moved.points.shape == samples[0].points.shape
    np.testing.assert_allclose(moved.boxes.centers - samples[0].boxes.centers,
                               np.broadcast_to(moved.boxes.centers[:1] - samples[0].boxes.centers[:1],
                                               moved.boxes.centers.shape), atol=1e-6)


def test_without_a_map_foreign_names_are_dropped_and_named(lyft_root):
    with pytest.warns(DataWarning, match="outside the devkit's nuScenes mapping are dropped: .*other_vehicle"):
        ds = NuScenesSource(VERSION, camera_channels=()).open(lyft_root)
    anns = json.loads((lyft_root / VERSION / "sample_annotation.json").read_text())
    assert sum(ds.dropped_categories.values()) == len(anns)  # every annotation, counted by its name
    assert {"other_vehicle", "animal"} <= set(ds.dropped_categories) <= set(LYFT_NAMES.values())
    assert len(ds[0].boxes) == 0


def test_category_map_files(tmp_path):
    good = tmp_path / "fleet.json"
    good.write_text(json.dumps({"sedan": "car", "tram": None}))
    assert resolve_category_map(str(good)) == {"sedan": "car", "tram": None}
    assert resolve_category_map("lyft") == LYFT_CATEGORY_MAP and resolve_category_map("nuscenes") is None
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"sedan": "automobile"}))
    with pytest.raises(ValueError, match="bad.json: category 'sedan' maps to 'automobile'; expected one of"):
        resolve_category_map(str(bad))
    with pytest.raises(FileNotFoundError, match="'lfyt' is neither a built-in map"):
        resolve_category_map("lfyt")


def test_cli_run_on_lyft_data_scores_both_with_the_devkit(lyft_root, tmp_path, capsys):
    from vlsdk.cli.main import main

    rc = main(["driving-detect", "--quick", "--out", str(tmp_path), "--train-scenes", "1", "--test-scenes", "1",
               "--epochs", "1", "--no-progress", "--depth-steps", "0", "--nuscenes", str(lyft_root),
               "--version", VERSION, "--category-map", "lyft", "--camera-channels", "CAM_FRONT"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "dropped annotations of unmapped categories: " in printed and "animal" in printed
    assert "nuscenes-devkit DetectionEval" in printed and "NDS" in printed
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    synth, lyft = metrics["synthetic_devkit"], metrics["data_devkit"]
    assert metrics["data.nds"] == lyft["NDS"] and metrics["car_ap_2m"] == metrics["synthetic.car_ap_2m"]
    for result in (synth, lyft):
        assert 0.0 <= result["mAP"] <= 1.0 and 0.0 <= result["NDS"] <= 1.0, result
        assert (Path(result["submission"])).is_file()
    assert synth["eval_set"] == "synthetic"
    assert "a category map" in lyft["evaluator"] and "dangling annotation links" in lyft["evaluator"]
    assert set(lyft["dropped_categories"]) == {"animal", "movable_object.debris"}
    submission = json.loads(Path(lyft["submission"]).read_text())
    samples = json.loads((lyft_root / VERSION / "sample.json").read_text())
    assert set(submission["results"]) == {s["token"] for s in samples}
