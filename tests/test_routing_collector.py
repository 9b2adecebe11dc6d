"""The encoder publishes routing once per forward, to subscribers, the router-probability
reader and the routing log."""

from __future__ import annotations

import copy

import torch

import vlsdk
from vlsdk.models.collector import routing_collectors
from vlsdk.train.routing_log import RoutingLog
from vlsdk.train.specialise import router_probs


def test_encoder_publishes_layer_grid_and_stride_once_per_forward():
    model = vlsdk.VLModel("tiny").eval()
    seen = []
    (encoder, collector), = routing_collectors(model)
    handle = collector.subscribe(lambda enc, stats: seen.append((enc, [(s.layer, s.grid, s.stride) for s in stats])))
    with torch.no_grad():
        model.forward_features(torch.zeros(1, 3, 64, 96))
        model.encoder(torch.zeros(1, 3, 64, 64), max_stride=16)
    handle.remove()
    with torch.no_grad():
        model.forward_features(torch.zeros(1, 3, 64, 64))
    assert seen == [(encoder, [(0, (4, 6), 16), (1, (2, 3), 32)]), (encoder, [(0, (4, 4), 16)])]
    assert len(copy.deepcopy(model).encoder.routing) == 0  # a copy does not feed this model's subscribers


def test_router_probs_and_routing_log_come_from_the_collector(tmp_path):
    model = vlsdk.VLModel("tiny").train()
    log = RoutingLog(model, tmp_path)
    with router_probs(model) as seen:
        feats = model.forward_features(torch.rand(2, 3, 64, 64))
    assert [names for names, _ in seen] == [s.expert_names for s in feats.router_stats]
    assert all(p is s.probs and p.requires_grad for (_, p), s in zip(seen, feats.router_stats, strict=True))
    log.snapshot(step=1)
    log.close()
    rows = log.rows()
    assert [r["layer"] for r in rows] == ["0", "1"]
    assert [r["tokens"] for r in rows] == [s.tokens_per_expert.tolist() for s in feats.router_stats]
    assert len(model.encoder.routing) == 0
