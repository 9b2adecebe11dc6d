"""Resume after what a kill leaves on disk: a log line cut short, a checkpoint swap cut short."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import vlsdk
from vlsdk.testing import segmentation_loss, square_lesions
from vlsdk.train import TrainConfig, Trainer
from vlsdk.train.log import read_jsonl

seg_loss = segmentation_loss("seg")


def make_model() -> vlsdk.VLModel:
    torch.manual_seed(0)
    model = vlsdk.VLModel("tiny", in_chans=1)
    model.add_head("seg", task="segmentation", num_classes=2)
    return model


def config(out_dir, **kw) -> TrainConfig:
    base = {"steps": 6, "batch_size": 4, "lr": 3e-3, "warmup_steps": 2, "log_every": 1, "progress": False,
            "out_dir": str(out_dir), "seed": 3, "device": "cpu", "save_every": 3}
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> list[float]:
    """The losses of an uninterrupted 6-step run: what every resumed run must reproduce."""
    out = tmp_path_factory.mktemp("straight")
    return [r["loss"] for r in Trainer(make_model(), seg_loss, square_lesions(), config(out)).fit().train]


def killed_run(out_dir, stop_after: int) -> None:
    trainer = Trainer(make_model(), seg_loss, square_lesions(), config(out_dir))
    trainer.stop_after = stop_after  # dies after this step; the last checkpoint is step 3
    trainer.fit()


def resume(out_dir):
    trainer = Trainer(make_model(), seg_loss, square_lesions(), config(out_dir))
    return trainer, trainer.fit(resume=True)


def train_losses(out_dir) -> list[float]:
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == list(range(1, 7))
    return [r["loss"] for r in rows if r["split"] == "train"]


def test_a_log_line_cut_short_by_a_kill_is_dropped_with_a_warning(tmp_path, straight):
    killed_run(tmp_path, stop_after=5)
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"split": "train", "step": 6, "loss": 0.4')  # the kill hit mid-line
    routing = (tmp_path / "routing.jsonl").read_text()
    (tmp_path / "routing.jsonl").write_text(routing + '{"step": 6, "layer": "0", "exp')
    metrics_lines = len((tmp_path / "metrics.jsonl").read_text().splitlines())
    with pytest.warns(UserWarning) as seen:
        trainer, result = resume(tmp_path)
    messages = [str(w.message) for w in seen]
    assert any(f"{tmp_path / 'metrics.jsonl'}: line {metrics_lines} is cut short" in m for m in messages), messages
    assert any(f"{tmp_path / 'routing.jsonl'}: line" in m and "cut short" in m for m in messages), messages
    assert result.step == 6
    assert train_losses(tmp_path) == pytest.approx(straight, rel=1e-5, abs=1e-6)
    assert max(r["step"] for r in read_jsonl(tmp_path / "routing.jsonl")) == 6


def test_a_damaged_line_inside_the_log_is_an_error_naming_file_and_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"split": "train", "step": 1, "loss": 1.0}\n{"split": tr\n'
                                            '{"split": "train", "step": 2, "loss": 0.9}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2 is not JSON .*Delete or repair that line"):
        read_jsonl(tmp_path / "metrics.jsonl")
    (tmp_path / "metrics.jsonl").write_text('{"split": "train", "loss": 1.0}\n')
    with pytest.raises(ValueError, match=r'metrics.jsonl: line 1: expected a JSON object with an integer "step"'):
        read_jsonl(tmp_path / "metrics.jsonl")


def test_a_complete_checkpoint_left_under_its_temporary_name_is_recovered(tmp_path, straight):
    killed_run(tmp_path, stop_after=4)
    # killed between removing the old checkpoint and renaming the new one into place (vlsdk <= 0.1 did this)
    (tmp_path / "checkpoint").rename(tmp_path / "checkpoint.tmp")
    with pytest.warns(UserWarning, match=r"checkpoint.tmp is a complete checkpoint \(step 3\).*moved into place"):
        trainer, result = resume(tmp_path)
    assert result.step == 6 and not (tmp_path / "checkpoint.tmp").exists()
    assert train_losses(tmp_path) == pytest.approx(straight, rel=1e-5, abs=1e-6)


def test_a_swap_cut_short_keeps_the_newest_checkpoint_and_a_fresh_start_deletes_nothing(tmp_path):
    killed_run(tmp_path, stop_after=4)
    # killed after checkpoint -> checkpoint.old and before checkpoint.tmp -> checkpoint
    shutil.copytree(tmp_path / "checkpoint", tmp_path / "checkpoint.old")
    (tmp_path / "checkpoint").rename(tmp_path / "checkpoint.tmp")
    # a caller asking "is there a checkpoint?" before fit (as the medical pipeline does) sees it again
    with pytest.warns(UserWarning, match="moved into place"):
        trainer = Trainer(make_model(), seg_loss, square_lesions(), config(tmp_path))
    assert (tmp_path / "checkpoint" / "trainer_state.pt").is_file()
    assert not (tmp_path / "checkpoint.tmp").exists() and not (tmp_path / "checkpoint.old").exists()
    assert torch.load(tmp_path / "checkpoint" / "trainer_state.pt", weights_only=True)["step"] == 3
    with pytest.warns(UserWarning, match=r"starts afresh in .*holds a checkpoint of an earlier run"):
        trainer.stop_after = 1
        trainer.fit()  # a fresh start says what its first save will replace


def test_an_unfinished_first_checkpoint_explains_what_was_found_and_is_kept(tmp_path):
    killed_run(tmp_path, stop_after=4)
    (tmp_path / "checkpoint").rename(tmp_path / "checkpoint.tmp")
    (tmp_path / "checkpoint.tmp" / "trainer_state.pt").unlink()  # killed before the state was written
    trainer = Trainer(make_model(), seg_loss, square_lesions(), config(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        trainer.fit(resume=True)
    message = str(err.value)
    assert "nothing to resume from" in message and "checkpoint.tmp" in message and "left unfinished" in message
    assert "with model.safetensors" in message and "from_pretrained" in message
    assert (tmp_path / "checkpoint.tmp" / "model.safetensors").is_file()  # the weights are still there
    assert vlsdk.VLModel.from_pretrained(tmp_path / "checkpoint.tmp").heads  # and they load


def test_a_state_file_cut_short_is_a_clear_error(tmp_path):
    killed_run(tmp_path, stop_after=3)
    state = tmp_path / "checkpoint" / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    trainer = Trainer(make_model(), seg_loss, square_lesions(), config(tmp_path))
    with pytest.raises(ValueError, match=r"trainer_state.pt cannot be read .*the checkpoint is damaged"):
        trainer.fit(resume=True)


def test_a_truncated_temporary_state_is_ignored_and_the_good_checkpoint_resumes(tmp_path, straight):
    killed_run(tmp_path, stop_after=4)
    shutil.copytree(tmp_path / "checkpoint", tmp_path / "checkpoint.tmp")
    state = tmp_path / "checkpoint.tmp" / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:100])  # an older vlsdk killed inside torch.save
    trainer, result = resume(tmp_path)
    assert result.step == 6 and not (tmp_path / "checkpoint.tmp").exists()  # the next save replaced it
    assert train_losses(tmp_path) == pytest.approx(straight, rel=1e-5, abs=1e-6)


def test_optimizer_state_of_another_parameter_layout_is_refused_by_name(tmp_path):
    """A checkpoint whose optimizer tracked other parameter tensors (experts stacked in one, one module
    per expert in the other) does not resume silently wrong: the error names the file and the way out."""
    killed_run(tmp_path, stop_after=4)
    model = make_model()
    for layer in model.encoder.moe_layers:
        layer.unstack_generic()  # the per-expert layout: 4 tensors per expert instead of 4 per layer
    trainer = Trainer(model, seg_loss, square_lesions(), config(tmp_path))
    with pytest.raises(ValueError, match=r"optimizer state is for .* parameter tensors .* start a new run"):
        trainer.fit(resume=True)
