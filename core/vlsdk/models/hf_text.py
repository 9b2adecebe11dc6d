"""Use any Hugging Face text model from a local directory as the text encoder (no downloads)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from vlsdk.models.text import TextFeatures

__all__ = ["HFTextEncoder"]


class HFTextEncoder(nn.Module):
    """A local Hugging Face encoder (``AutoModel`` + ``AutoTokenizer``, ``local_files_only``).

    Args:
        path: a directory written by ``save_pretrained`` of a transformers model and tokenizer.
        max_len: longest text in tokens.

    Example:
        >>> enc = HFTextEncoder("/models/bert-base-chinese")  # doctest: +SKIP
        >>> enc.encode(["左肺结节"]).tokens.shape[-1] == enc.dim  # doctest: +SKIP
        True
    """

    def __init__(self, path: str | Path, max_len: int = 128) -> None:
        super().__init__()
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError as err:
            raise ImportError('a Hugging Face text encoder needs transformers: pip install "vlsdk[lora]" '
                              "(peft brings transformers) or pip install transformers") from err
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path / 'config.json'} is missing: expected a local Hugging Face model "
                                    "directory (vlsdk never downloads weights)")
        self.path, self.max_len = str(path), max_len
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True)
        self.dim = int(self.model.config.hidden_size)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> TextFeatures:
        hidden = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        return TextFeatures(hidden, mask.bool(), pooled)

    def encode(self, texts: Sequence[str]) -> TextFeatures:
        """Tokenise and encode a batch of strings on the model's device."""
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_len,
                               return_tensors="pt")
        device = next(self.model.parameters()).device
        return self(batch["input_ids"].to(device), batch["attention_mask"].to(device).bool())
