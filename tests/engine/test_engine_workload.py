"""Workloads: seeded length distributions, Poisson arrivals, JSONL files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reference_engine import WorkloadConfig, load_workload_jsonl, make_workload


def test_fixed_uniform_lognormal_seeded():
    a = make_workload(WorkloadConfig(num_requests=400, prompt_len="uniform:128:1024", output_len="fixed:256"), 32000)
    b = make_workload(WorkloadConfig(num_requests=400, prompt_len="uniform:128:1024", output_len="fixed:256"), 32000)
    assert [r.prompt_token_ids for r in a] == [r.prompt_token_ids for r in b]
    lens = np.array([r.prompt_len for r in a])
    assert lens.min() >= 128 and lens.max() <= 1024 and 500 < lens.mean() < 650
    assert {r.max_new_tokens for r in a} == {256}
    assert all(r.arrival_s == 0.0 for r in a)
    assert [r.request_id for r in a] == list(range(400))
    assert all(0 <= t < 32000 for r in a[:20] for t in r.prompt_token_ids)
    c = make_workload(WorkloadConfig(num_requests=400, prompt_len="uniform:128:1024", seed=1), 32000)
    assert [r.prompt_len for r in c] != list(lens)
    logn = make_workload(WorkloadConfig(num_requests=4000, prompt_len="lognormal:200:0.5",
                                        output_len="lognormal:50:1.0:300"), 1000)
    p = np.array([r.prompt_len for r in logn])
    o = np.array([r.max_new_tokens for r in logn])
    assert 185 < p.mean() < 215 and p.min() >= 1
    assert o.max() <= 300 and o.min() >= 1


def test_poisson_arrivals():
    reqs = make_workload(WorkloadConfig(num_requests=2000, prompt_len="fixed:4", output_len="fixed:1",
                                        arrival_rate=50.0, seed=3), 100)
    t = np.array([r.arrival_s for r in reqs])
    assert (np.diff(t) >= 0).all() and t[0] > 0
    assert 45 < len(t) / t[-1] < 55


@pytest.mark.parametrize("bad", ["fixed:0", "uniform:5:2", "gauss:3", "lognormal:10", "uniform:a:b", "fixed"])
def test_bad_distributions(bad):
    with pytest.raises(ValueError, match="distribution"):
        WorkloadConfig(num_requests=2, prompt_len=bad)


def test_bad_workload_config():
    with pytest.raises(ValueError):
        WorkloadConfig(num_requests=0)
    with pytest.raises(ValueError):
        WorkloadConfig(num_requests=3, arrival_rate=0)


def test_jsonl(tmp_path):
    path = tmp_path / "w.jsonl"
    rows = [{"prompt_len": 5, "output_len": 3}, {"prompt_token_ids": [1, 2, 3], "output_len": 7}, {},
            {"prompt_len": 9, "output_len": 1}]
    path.write_text("\n".join(json.dumps(r) if r else "" for r in rows) + "\n")
    reqs = load_workload_jsonl(path, vocab_size=50)
    assert [(r.prompt_len, r.max_new_tokens) for r in reqs] == [(5, 3), (3, 7), (9, 1)]
    assert reqs[1].prompt_token_ids == [1, 2, 3]
    via_cfg = make_workload(WorkloadConfig(num_requests=2, jsonl=str(path), arrival_rate=10.0), vocab_size=50)
    assert len(via_cfg) == 2 and via_cfg[1].arrival_s > via_cfg[0].arrival_s > 0
    assert via_cfg[0].prompt_token_ids == reqs[0].prompt_token_ids
    path.write_text('{"prompt_len": 5}\n')
    with pytest.raises(ValueError, match="w.jsonl:1"):
        load_workload_jsonl(path, vocab_size=50)
