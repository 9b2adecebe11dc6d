"""Byte-level text encoder (English and Chinese) and the cross-modal gate, closed and open."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from vlsdk.models.config import TextConfig, get_config
from vlsdk.models.gate import CrossModalGate
from vlsdk.models.model import VLModel
from vlsdk.models.text import ByteTextEncoder, ByteTokenizer


def test_tokenizer_round_trips_both_languages():
    tok = ByteTokenizer(max_len=64)
    texts = ["small lesion in the left lung", "左肺小结节", "PCB 短路 short"]
    ids, mask = tok(texts)
    assert ids.shape[0] == 3 and mask.dtype == torch.bool
    assert tok.decode(ids) == texts
    assert int(mask[1].sum()) == len("左肺小结节".encode()) + 2  # BOS + bytes + EOS
    with pytest.raises(ValueError, match="sequence of strings"):
        tok("one string")


def test_tokenizer_truncates_to_max_len():
    ids, _ = ByteTokenizer(max_len=4)(["abcdefgh"])
    assert ids.shape[1] == 6


def test_text_encoder_ignores_padding():
    enc = ByteTextEncoder(TextConfig(dim=32, depth=1, heads=2)).eval()
    alone = enc.encode(["肿瘤"]).pooled
    padded = enc.encode(["肿瘤", "a much longer caption that forces padding"]).pooled[:1]
    torch.testing.assert_close(alone, padded, rtol=1e-5, atol=1e-5)


def _flops(fn) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_closed_gate_skips_text_compute_at_inference():
    model = VLModel(get_config("tiny")).eval()
    images = torch.randn(2, 3, 64, 64)
    texts = ["左肺结节", "a lesion"]
    calls = []
    model.text_encoder.register_forward_hook(lambda *a: calls.append("text"))
    for gate in model.encoder.gates:
        gate.attn.register_forward_hook(lambda *a: calls.append("gate"))
    no_text = _flops(lambda: model(images, heads=[]))
    closed = _flops(lambda: model(images, text=texts, heads=[]))
    assert calls == [] and closed == no_text
    with torch.no_grad():
        torch.testing.assert_close(model(images, text=texts, heads=[]).features.tokens,
                                   model(images, heads=[]).features.tokens)
    with torch.no_grad():
        for gate in model.encoder.gates:
            gate.alpha.fill_(0.5)
    opened = _flops(lambda: model(images, text=texts, heads=[]))
    assert "text" in calls and "gate" in calls and opened > closed


def test_gate_notices_every_kind_of_alpha_change_between_forwards():
    gate = CrossModalGate(16, 8, 2).eval()
    x, text = torch.randn(1, 4, 16), torch.randn(1, 3, 8)
    with torch.no_grad():
        assert torch.equal(gate(x, text), x)  # closed
        gate.alpha.fill_(0.5)  # in place: a new version
        assert not torch.equal(gate(x, text), x)
        gate.load_state_dict({**gate.state_dict(), "alpha": torch.zeros(1)})
        assert torch.equal(gate(x, text), x)
        gate.alpha.data = torch.full((1,), 0.5)  # new storage
        assert not torch.equal(gate(x, text), x)
        gate.alpha.zero_()
        assert torch.equal(gate(x, text), x)


def test_open_gate_changes_tokens_and_text_matters():
    model = VLModel(get_config("tiny")).eval()
    with torch.no_grad():
        for gate in model.encoder.gates:
            gate.alpha.fill_(1.0)
        images = torch.randn(1, 3, 64, 64)
        a = model(images, text=["lesion"], heads=[]).features.tokens
        b = model(images, text=["病灶很大"], heads=[]).features.tokens
        c = model(images, heads=[]).features.tokens
    assert not torch.allclose(a, b) and not torch.allclose(a, c)


def test_gate_trains_from_closed():
    gate = CrossModalGate(16, 8, 2).train()
    x, text = torch.randn(1, 4, 16), torch.randn(1, 3, 8)
    gate(x, text).pow(2).sum().backward()
    assert gate.alpha.grad is not None and gate.alpha.grad.abs() > 0


def test_text_count_must_match_images():
    model = VLModel(get_config("tiny")).train()
    with pytest.raises(ValueError, match="one text per image"):
        model(torch.randn(2, 3, 32, 32), text=["only one"], heads=[])
    with pytest.raises(ValueError, match="no text path"):
        VLModel(get_config("tiny", text=None)).train()(torch.randn(1, 3, 32, 32), text=["x"], heads=[])


def test_local_hugging_face_text_encoder(tmp_path):
    transformers = pytest.importorskip("transformers", reason="the optional HF text path needs transformers")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "lesion", "肺", "结", "节", *"abcdefghijklmnopqrstuvwxyz"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab), encoding="utf-8")
    transformers.BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    bert = transformers.BertConfig(vocab_size=len(vocab), hidden_size=24, num_hidden_layers=1,
                                   num_attention_heads=2, intermediate_size=48)
    transformers.BertModel(bert).save_pretrained(tmp_path)
    model = VLModel(get_config("tiny", text=TextConfig(dim=8, hf_path=str(tmp_path)))).eval()
    assert model.config.text.dim == 24  # follows the HF model's hidden size
    with torch.no_grad():
        for gate in model.encoder.gates:
            gate.alpha.fill_(1.0)
        a = model(torch.zeros(2, 3, 32, 32), text=["a lesion", "左肺结节"], heads=[]).features.tokens
    assert not torch.allclose(a[0], a[1])  # same image, different text
    with pytest.raises(FileNotFoundError, match="never downloads"):
        VLModel(get_config("tiny", text=TextConfig(hf_path=str(tmp_path / "nope"))))
