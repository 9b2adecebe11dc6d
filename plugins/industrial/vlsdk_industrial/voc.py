"""Pascal VOC XML reader (the core's :mod:`vlsdk.data.voc`) and the PKU-Market-PCB class mapping.

PKU-Market-PCB's layout (``Annotations/<Class>/*.xml`` + ``images/<Class>/*.jpg``) is read by
:class:`~vlsdk.data.voc.VOCDataset`; map its class names onto DeepPCB's with
``VOCDataset(root, PKU_MARKET_PCB_TO_DEEPPCB, target_classes=DEEPPCB_CLASSES)``.
"""

from __future__ import annotations

from vlsdk.data.voc import VOCDataset, VOCRecord, parse_voc_xml

__all__ = ["PKU_MARKET_PCB_TO_DEEPPCB", "VOCDataset", "VOCRecord", "parse_voc_xml"]

#: PKU-Market-PCB class names -> the DeepPCB class of the same defect.
PKU_MARKET_PCB_TO_DEEPPCB: dict[str, str] = {
    "open_circuit": "open", "short": "short", "mouse_bite": "mousebite", "spur": "spur",
    "spurious_copper": "copper", "missing_hole": "pin-hole",
}
