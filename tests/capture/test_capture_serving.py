"""Serving metrics from request records, and requests.csv."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from reference_engine import RequestRecord

from asyncbatch_prof.analysis.serving import serving_metrics
from asyncbatch_prof.runfolder import requests_csv


def _records():
    a = RequestRecord(0, 10, 3, 0.0, scheduled_s=0.0, first_token_s=0.1, finish_s=0.4,
                      token_times_s=[0.1, 0.2, 0.4], output_token_ids=[1, 2, 3], preemptions=1, finish_reason="length")
    b = RequestRecord(1, 20, 2, 0.05, scheduled_s=0.1, first_token_s=0.35, finish_s=0.45,
                      token_times_s=[0.35, 0.45], output_token_ids=[4, 5], finish_reason="length")
    c = RequestRecord(2, 5000, 2, 0.0, rejected_reason="prompt longer than max_model_len", finish_reason="rejected")
    return [a, b, c]


def test_capture_serving_numbers():
    metrics, absent, section = serving_metrics(_records(), wall_s=0.5, output_tokens=5)
    assert metrics["tokens_per_s"] == 10.0 and metrics["requests_per_s"] == 4.0
    assert metrics["ttft_ms_p50"] == pytest.approx(np.percentile([100, 300], 50))
    assert metrics["itl_ms_p99"] == pytest.approx(np.percentile([100, 200, 100], 99))
    assert metrics["e2e_ms_p90"] == pytest.approx(np.percentile([400, 400], 90))
    assert metrics["preemptions"] == 1 and not absent
    assert section["rejected"] == 1 and section["rejected_reasons"] == {"prompt longer than max_model_len": 1}
    assert section["finished"] == 2 and section["samples"] == {"ttft": 2, "itl": 3, "e2e": 2}


def test_capture_serving_absent_not_zero():
    one_token = RequestRecord(0, 4, 1, 0.0, first_token_s=0.2, finish_s=0.2, token_times_s=[0.2],
                              output_token_ids=[9], finish_reason="length")
    metrics, absent, _ = serving_metrics([one_token], wall_s=0.0, output_tokens=1)
    assert "tokens_per_s" in absent and "tokens_per_s" not in metrics
    assert "itl_ms_p50" in absent and "itl_ms_p50" not in metrics
    assert metrics["ttft_ms_p50"] == pytest.approx(200.0)


def test_capture_requests_csv_columns():
    rows = list(csv.DictReader(io.StringIO(requests_csv(_records()))))
    assert [r["request_id"] for r in rows] == ["0", "1", "2"]
    assert float(rows[1]["ttft_ms"]) == pytest.approx(300.0) and rows[1]["output_tokens"] == "2"
    assert rows[0]["token_times_s"].split() == ["0.100000", "0.200000", "0.400000"]
    assert rows[2]["first_token_s"] == "" and rows[2]["rejected_reason"] == "prompt longer than max_model_len"
