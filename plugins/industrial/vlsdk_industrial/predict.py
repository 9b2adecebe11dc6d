"""Detect defects on a folder of board images with a saved PCB model (``vlsdk pcb --predict``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlsdk_industrial.samples import DEEPPCB_CLASSES
from vlsdk_industrial.task import HEAD, PcbSettings, PcbTask

if TYPE_CHECKING:
    from vlsdk import VLModel

__all__ = ["load_detector", "predict_folder"]


def load_detector(checkpoint: str | Path, device: str = "auto", *, channels: int | None = None) -> VLModel:
    """A saved model with the ``pcb`` head, on ``device``.

    Args:
        checkpoint: a ``save_pretrained`` folder.
        device: torch device or ``"auto"``.
        channels: the channel count the data has (checked against the model's).

    Raises:
        ValueError: no ``pcb`` head, or a model that takes another number of channels.
    """
    from vlsdk import VLModel
    from vlsdk.tasks.runner import resolve_device

    model = VLModel.from_pretrained(checkpoint, map_location=resolve_device(device))
    if HEAD not in model.heads:
        raise ValueError(f"{checkpoint} has no {HEAD!r} detection head (heads: {sorted(model.heads)})")
    if channels is not None and model.config.in_chans != channels:
        hint = "drop --no-template" if model.config.in_chans == 2 else "pass --no-template"
        raise ValueError(f"{checkpoint} takes {model.config.in_chans}-channel boards but the data has {channels} "
                         f"channel(s); {hint}")
    return model


def predict_folder(checkpoint: str | Path, folder: str | Path, out: str | Path, *, image_size: int | None = None,
                   batch_size: int = 16, device: str = "auto", amp: str = "none", score_threshold: float = 0.3,
                   template: tuple[str, str] = ("_test", "_temp"), draw: int = 4) -> dict[str, Any]:
    """Detect defects on every board image of a folder with a saved model.

    A 2-channel model reads each ``<n>_test.*`` with its ``<n>_temp.*`` template; a 1-channel
    model reads every image but the ``*_temp.*`` ones. Boxes are reported in the original pixels.

    Args:
        checkpoint: a ``save_pretrained`` folder with the ``pcb`` head.
        folder: the images (searched recursively).
        out: writes ``predictions.json`` and ``predictions.png`` here.
        image_size: the model's input side; default: the size the model was trained at (640 when
            the model does not record it).
        batch_size: boards per forward pass.
        device: torch device or ``"auto"``.
        amp: ``"none"`` or ``"bf16"``.
        score_threshold: detections kept from this score up.
        template: ``(board_suffix, template_suffix)`` for 2-channel models.
        draw: boards drawn into the PNG.

    Returns:
        ``{"images", "detections", "json", "png"}``.
    """
    from vlsdk_industrial.folder import ImageFolder
    from vlsdk_industrial.transforms import build_transforms

    model = load_detector(checkpoint, device).eval()
    recorded = model.metadata.input.image_size if model.metadata.input is not None else None
    size = image_size or (recorded[0] if recorded else 640)
    two = model.config.in_chans == 2
    images = ImageFolder(folder, template=template if two else None, exclude=() if two else (template[1],),
                         transform=build_transforms(train=False, size=size))
    if len(images) == 0:
        raise ValueError(f"no board images in {folder}" + (f" named *{template[0]}.*" if two else ""))
    images.classes = model.metadata.class_names.get(HEAD) or DEEPPCB_CLASSES
    settings = PcbSettings(image_size=size, batch_size=batch_size, device=device, template=two, num_workers=0,
                           precision="off" if amp == "none" else amp, score_threshold=score_threshold,  # type: ignore[arg-type]
                           draw=draw)
    task = PcbTask()
    import torch

    with torch.no_grad():
        results = task.predict(model, images, settings)
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "predictions.json").write_text(json.dumps(results, indent=1))
        png = task.render(model, images, settings, out / "predictions.png")
    detections = sum(len(r["scores"]) for r in results)
    print(f"{len(results)} boards at {size} px, {detections} detections -> {out / 'predictions.json'}, {png}")
    return {"images": len(results), "detections": detections, "json": str(out / "predictions.json"), "png": str(png)}
