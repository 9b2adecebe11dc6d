"""benchmarks/host_work.py (aten ops and host syncs per forward), throughput.py --channels-last and its CPU scaling."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
throughput = pytest.importorskip("throughput")
host_work = pytest.importorskip("host_work")


def test_host_work_counts_ops_and_each_host_read_once():
    with host_work.HostWork() as work:
        t = torch.arange(6)
        t.sum().item()  # sum, and the read (its _local_scalar_dense is not a second sync)
        t[t > 2]  # boolean indexing: a data-dependent shape
        t.nonzero()
    assert work.syncs == 3
    assert work.by_op["nonzero"] == 1 and work.by_op["sum"] == 1
    assert work.ops == sum(work.by_source.values()) >= 6


def test_op_count_reports_both_moe_paths(tmp_path):
    r = host_work.main(["--models", "tiny", "--size", "32", "--out", str(tmp_path)])
    rows = {row["path"]: row for row in r["op_count"]}
    layers = sum(1 for _ in throughput.build("tiny").moe_layers)
    assert rows["loop"]["host_syncs"] == layers  # one read of the split sizes per MoE layer
    assert rows["grouped"]["host_syncs"] == 0
    assert 0 < rows["grouped"]["ops"] < rows["loop"]["ops"]
    assert rows["grouped"]["cpu_ms"] > 0
    assert not any("load_balancing_loss" in s or "z_loss" in s for s in rows["grouped"]["ops_by_source"])
    assert json.loads((tmp_path / "op_count.json").read_text())["op_count"][0]["model"] == "tiny"


def test_channels_last_runs_on_the_cpu(tmp_path):
    r = throughput.main(["--models", "tiny", "--size", "32", "--batch", "1", "--repeats", "1", "--channels-last",
                         "--out", str(tmp_path)])
    assert r["setting"]["channels_last"] and r["cases"][0]["images_per_s"] > 0


def test_train_step_is_timed_beside_the_reference(tmp_path):
    r = throughput.main(["--models", "tiny", "vit_b16", "--size", "32", "--batch", "1", "--repeats", "1", "--train",
                         "--out", str(tmp_path)])
    steps = {c["model"]: c for c in r["cases"] if c["model"].endswith("train step")}
    assert set(steps) == {"tiny train step", "vit_b16 train step"}
    assert r["tiny_over_vit_b16@32_train"] == pytest.approx(
        steps["tiny train step"]["images_per_s"] / steps["vit_b16 train step"]["images_per_s"])


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="CPU peak memory is read from Linux /proc")
def test_cpu_scaling_measures_peak_memory_per_case(tmp_path):
    pytest.importorskip("matplotlib")
    r = throughput.main(["--models", "tiny", "--size", "32", "--batch", "1", "--repeats", "1", "--scaling", "tiny",
                         "--scaling-sizes", "128", "--scaling-batches", "1", "32", "--out", str(tmp_path)])
    one, many = r["scaling"]
    assert (one["batch"], many["batch"]) == (1, 32)
    # each case in its own process: 31 more 128 px images hold at least their 6 MiB of fp32 input
    assert 0 < one["peak_mib"] and many["peak_mib"] > one["peak_mib"] + 6, (one, many)
    assert (tmp_path / "scaling.png").stat().st_size > 0
