"""``vlsdk predict`` through plugin readers/writers: NIfTI masks with the input's affine, BEV boxes, the hook."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import vlsdk
import vlsdk_driving.plugin as driving_plugin
import vlsdk_medical.plugin as medical_plugin
from vlsdk.cli import main
from vlsdk.plugins import hookimpl
from vlsdk.predict import predict_files
from vlsdk.predict_io import InputReader, OutputWriter


@pytest.fixture
def medical(register_plugin):
    register_plugin(medical_plugin, "medical")


@pytest.fixture
def driving(register_plugin):
    register_plugin(driving_plugin, "driving")


def test_nifti_mask_has_the_inputs_affine_shape_and_the_models_labels(medical, tmp_path):
    import nibabel as nib

    from vlsdk_medical.inference import predict_volume, probs_to_labels

    torch.manual_seed(0)
    model = vlsdk.VLModel("tiny", in_chans=1)
    model.add_head("lesion", task="segmentation", num_classes=1)
    model.save_pretrained(tmp_path / "model")
    c, s = np.cos(0.3), np.sin(0.3)
    affine = np.array([[0.8 * c, -0.9 * s, 0, -40.0], [0.8 * s, 0.9 * c, 0, 12.5], [0, 0, 2.5, 7.0], [0, 0, 0, 1]])
    data = (np.random.default_rng(0).random((24, 20, 5)) * 100).astype(np.int16)
    img = nib.Nifti1Image(data, affine)
    img.header.set_slope_inter(0.01, 0.0)  # stored scaling must not leak into the mask
    nib.save(img, tmp_path / "scan.nii.gz")

    index = predict_files(tmp_path / "model", [tmp_path / "scan.nii.gz"], tmp_path / "out")
    entry = index["inputs"][0]
    assert entry["reader"] == "medical.nifti"
    out = nib.load(entry["lesion"]["mask"])
    assert entry["lesion"]["mask"].endswith("scan.lesion.nii.gz")
    np.testing.assert_allclose(out.affine, nib.load(tmp_path / "scan.nii.gz").affine, atol=1e-5)
    assert out.shape == (24, 20, 5) and out.get_data_dtype() == np.uint8
    mask = np.asarray(out.dataobj)
    volume = torch.from_numpy(nib.load(tmp_path / "scan.nii.gz").get_fdata(dtype=np.float32))[None]
    expected = probs_to_labels(predict_volume(model.eval(), volume, head="lesion")).numpy()
    np.testing.assert_array_equal(mask, expected)
    assert sum(entry["lesion"]["voxels_per_label"]) == 24 * 20 * 5
    assert Image.open(entry["lesion"]["picture"]).size[0] > 100


def test_nifti_errors_name_the_file(medical, tmp_path):
    import nibabel as nib

    model = vlsdk.VLModel("tiny", in_chans=2)
    model.add_head("lesion", task="segmentation", num_classes=1)
    model.save_pretrained(tmp_path / "model")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 3, 3), np.float32), np.eye(4)), tmp_path / "three.nii.gz")
    with pytest.raises(ValueError, match=r"expects 2 channels .*three.nii.gz has 3"):
        predict_files(tmp_path / "model", [tmp_path / "three.nii.gz"], tmp_path / "out")
    (tmp_path / "broken.nii").write_bytes(b"not a volume")
    with pytest.raises(ValueError, match=r"broken.nii: cannot read NIfTI"):
        predict_files(tmp_path / "model", [tmp_path / "broken.nii"], tmp_path / "out")


def _scene(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    ground = np.c_[rng.uniform(-15, 15, (n, 2)), rng.normal(-1.8, 0.05, n), rng.uniform(0, 50, n), np.zeros(n)]
    car = np.c_[rng.uniform(3, 7, (400, 1)), rng.uniform(-2, 0, (400, 1)), rng.uniform(-1.5, 0, 400),
                rng.uniform(50, 200, 400), np.zeros(400)]
    return np.vstack([ground, car]).astype(np.float32)  # x, y, z, intensity, time_lag


def test_bev_boxes_in_json_equal_the_heads_decoded_boxes(driving, tmp_path, capsys):
    from vlsdk_driving.bev import BEVGrid
    from vlsdk_driving.detector import HEAD, build_detector

    torch.manual_seed(0)
    grid = BEVGrid((-16.0, 16.0), (-16.0, 16.0), (-5.0, 3.0), 0.5)
    detector = build_detector(grid, backbone="tiny")
    detector.save(tmp_path / "model")
    points = _scene()
    points.tofile(tmp_path / "sweep.pcd.bin")
    np.save(tmp_path / "sweep4.npy", points[:, :4])  # the same sweep without its (zero) time_lag column

    assert main(["predict", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "out"),
                 "--score-threshold", "0.05", str(tmp_path / "sweep.pcd.bin"), str(tmp_path / "sweep4.npy")]) == 0
    index = json.loads((tmp_path / "out" / "predictions.json").read_text())
    model = detector.model.eval()
    with torch.no_grad():
        out = model(detector.encoder([torch.from_numpy(points)]), heads=[HEAD])
    expected = detector.head.decode(out[HEAD], score_threshold=0.05)[0]
    assert len(expected) > 0
    for entry in index["inputs"]:
        assert entry["reader"] == "driving.point_cloud"
        got = entry[HEAD]
        assert got["frame"] == "lidar" and len(got["boxes"]) == len(expected)
        np.testing.assert_allclose(np.array(got["boxes"]), expected.boxes, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got["scores"], expected.scores, rtol=1e-5)
        assert got["labels"] == expected.labels.tolist()
        assert Image.open(got["picture"]).size[0] > 300
    assert index["inputs"][0][HEAD]["picture"].endswith("sweep.bev.png")
    assert f"{HEAD}: {len(expected)} boxes" in capsys.readouterr().out


def test_npy_images_still_go_to_the_core_reader_without_a_bev_encoder(driving, tmp_path):
    model = vlsdk.VLModel("tiny", in_chans=1)
    model.add_head("seg", task="segmentation", num_classes=2)
    model.save_pretrained(tmp_path / "model")
    np.save(tmp_path / "img.npy", np.random.default_rng(0).random((40, 48)).astype(np.float32))
    entry = predict_files(tmp_path / "model", [tmp_path / "img.npy"], tmp_path / "out")["inputs"][0]
    assert entry["reader"] == "image" and entry["size"] == [40, 48]
    assert np.array(Image.open(entry["seg"]["labels"])).shape == (40, 48)
    with pytest.raises(ValueError, match=r"no reader for this file type.*driving.point_cloud \(.pcd.bin .bin .npy\)"):
        (tmp_path / "x.vtk").write_text("x")
        predict_files(tmp_path / "model", [tmp_path / "x.vtk"], tmp_path / "out")


class CountingWriter:
    """A third-party plugin: its segmentation writer wins over the core's for image inputs."""

    @hookimpl
    def vlsdk_register_output_writers(self, register):
        def write(p):
            return {"task": p.task, "foreground": int((p.head.decode(p.output()).labels[0] > 0).sum())}

        register("acme.count", OutputWriter(task="segmentation", write=write))


def test_a_plugin_writer_replaces_the_core_writer_and_bad_entries_are_refused(plugin_host, register_plugin, tmp_path):
    register_plugin(CountingWriter(), name="acme")
    model = vlsdk.VLModel("tiny", in_chans=1)
    model.add_head("seg", task="segmentation", num_classes=2)
    model.save_pretrained(tmp_path / "model")
    Image.fromarray((np.random.default_rng(1).random((32, 32)) * 255).astype("uint8")).save(tmp_path / "a.png")
    entry = predict_files(tmp_path / "model", [tmp_path / "a.png"], tmp_path / "out")["inputs"][0]
    assert set(entry["seg"]) == {"task", "foreground"}
    registry = plugin_host.registry("output_writers")
    with pytest.raises(TypeError, match="expected a vlsdk.predict_io.OutputWriter"):
        registry.register("acme.bad", lambda p: {})
    with pytest.raises(ValueError, match="suffixes must be"):
        InputReader(suffixes="nii", read=lambda *a: None)


def test_cli_names_the_vlsdk_version_that_wrote_a_newer_model(tmp_path, capsys):
    model = vlsdk.VLModel("tiny", in_chans=1)
    model.add_head("seg", task="segmentation", num_classes=2)
    model.save_pretrained(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    config.update(format_version=99, vlsdk_version="9.9.0")
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "a.png")
    assert main(["predict", "--model", str(tmp_path / "model"), str(tmp_path / "a.png")]) == 1
    err = capsys.readouterr().err
    assert "written by vlsdk 9.9.0 (checkpoint format 99)" in err and "upgrade vlsdk" in err
    config.update(format_version=1, vlsdk_version="0.0.1")  # an older release, same format: loads, with a warning
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="written by vlsdk 0.0.1"):
        predict_files(tmp_path / "model", [tmp_path / "a.png"], tmp_path / "out")
