"""One model holding every domain's expert: the cross-domain domain x expert table of ``vlsdk demo``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import vlsdk_industrial.plugin as industrial_plugin
import vlsdk_medical.plugin as medical_plugin
from vlsdk.demo import DemoResult, run_demos
from vlsdk.inspect.cross_domain import cross_domain_routing, pad_channels
from vlsdk.plugins import hookimpl


@pytest.fixture
def real_domains(register_plugin):
    register_plugin(medical_plugin, "medical")
    register_plugin(industrial_plugin, "industrial")


def _medical(n, seed):
    from vlsdk_medical.synth import LesionSynthesizer

    synth = LesionSynthesizer((64, 64))
    return torch.stack([synth(seed + i)["image"] for i in range(n)])


def _industrial(n, seed):
    from vlsdk_industrial.samples import collate
    from vlsdk_industrial.synth import BoardSynthesizer

    boards = BoardSynthesizer(size=96, template=True).dataset(n, seed=seed)
    return collate([boards[i] for i in range(n)])[0]


def test_routing_lesson_sends_each_domain_to_its_own_expert(real_domains):
    """Real experts on real synthetic inputs: rows sum to 1 and each own share grows on held-out inputs."""
    experts = {"medical": "medical.lesion", "industrial": "industrial.pcb_defect"}
    train = {"medical": _medical(12, 0), "industrial": _industrial(12, 0)}
    held_out = {"medical": _medical(6, 1000), "industrial": _industrial(6, 1000)}
    res = cross_domain_routing(train, held_out, experts, steps=20, seed=0)
    table = res.table
    assert table.domains == ["medical", "industrial"]
    assert table.experts == ["medical.lesion", "industrial.pcb_defect", "generic"]
    np.testing.assert_allclose(table.share.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(table.per_layer.sum(2), 1.0, atol=1e-5)
    np.testing.assert_allclose(res.before.share.sum(1), 1.0, atol=1e-5)
    for domain in experts:
        assert table.own_share(domain) > res.before.own_share(domain) + 0.2, res.rows()
        assert table.own_share(domain) > 0.5
    assert res.losses[-1] < res.losses[0]
    assert res.in_chans == 2
    # tiny: two MoE layers at strides 16 and 32 -> (64/16)^2 + (64/32)^2 = 20 tokens per medical image
    assert table.tokens["medical"] == 6 * 20
    frozen = [n for n, p in res.model.named_parameters() if p.requires_grad]
    assert frozen == []


def test_cross_domain_errors_name_the_problem(real_domains):
    x = torch.rand(2, 1, 32, 32)
    with pytest.raises(ValueError, match="two or more domains"):
        cross_domain_routing({"medical": x}, {"medical": x}, {"medical": "medical.lesion"})
    with pytest.raises(ValueError, match="its own expert"):
        cross_domain_routing({"a": x, "b": x}, {"a": x, "b": x}, {"a": "medical.lesion", "b": "medical.lesion"})
    with pytest.raises(ValueError, match=r"\['b'\] lack"):
        cross_domain_routing({"a": x}, {"a": x, "b": x}, {"a": "medical.lesion", "b": "industrial.pcb_defect"})
    with pytest.raises(ValueError, match="more than the 1"):
        pad_channels(torch.rand(1, 2, 8, 8), 1)
    padded = pad_channels(x, 3)
    assert padded.shape == (2, 3, 32, 32) and torch.equal(padded[:, :1], x) and not padded[:, 1:].any()


class Lin(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x):
        return self.fc(x)


def _toy_demo(domain, channels, scale):
    """A domain whose inputs are noise of its own channel count and brightness."""

    def run(out_dir, *, quick, device, seed):
        g = torch.Generator().manual_seed(seed)
        def make(n):
            return torch.rand(n, channels, 32, 32, generator=g) * scale

        return DemoResult(domain, f"the {domain} toy", {"score": 1.0}, samples=make(4), train_samples=make(8),
                          expert=f"{domain}.lin")

    return run


class TwoToyDomains:
    @hookimpl
    def vlsdk_register_experts(self, register):
        register("calm.lin", Lin)
        register("busy.lin", Lin)

    @hookimpl
    def vlsdk_register_demos(self, register):
        register("calm", _toy_demo("calm", 1, 1.0))
        register("busy", _toy_demo("busy", 3, 4.0))


def test_demo_report_has_the_cross_domain_table(plugin_host, register_plugin, tmp_path, capsys):
    register_plugin(TwoToyDomains(), name="toys")
    path = run_demos(tmp_path, quick=True)
    html = path.read_text()
    assert "Cross-domain routing: one model" in html
    assert (tmp_path / "cross_domain_routing.png").stat().st_size > 1000
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    for domain in ("calm", "busy"):
        assert 0.0 <= metrics[f"cross_domain.{domain}.own_share"] <= 1.0
        assert f"cross_domain.{domain}.own_share_before" in metrics
    assert "[demo] cross-domain routing: done" in capsys.readouterr().out


def test_demo_without_two_usable_domains_has_no_cross_domain_section(plugin_host, register_plugin, tmp_path):
    class One:
        @hookimpl
        def vlsdk_register_demos(self, register):
            register("solo", lambda out_dir, *, quick, device, seed: DemoResult("solo", "alone", {"x": 1.0}))

    register_plugin(One(), name="one")
    html = run_demos(tmp_path, quick=True).read_text()
    assert "Cross-domain" not in html and not (tmp_path / "cross_domain_routing.png").exists()
