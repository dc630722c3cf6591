"""Golden tests: every number the HTML shows is the one in metrics.json, and absent stays absent."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

from asyncbatch_prof.analysis.contract import lookup
from asyncbatch_prof.report import write_report
from asyncbatch_prof.report.cards import HEADLINE, IDLE_CAUSES


class Cards(HTMLParser):
    """Collects each card's data attributes and visible value text."""

    def __init__(self):
        super().__init__()
        self.cards, self._open, self._in_value = [], None, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div" and "card" in (attrs.get("class") or "").split():
            self._open = {**attrs, "text": ""}
            self.cards.append(self._open)
        elif tag == "div" and attrs.get("class") == "value" and self._open is not None:
            self._in_value = True

    def handle_endtag(self, tag):
        if self._in_value and tag == "div":
            self._in_value = False

    def handle_data(self, data):
        if self._in_value:
            self._open["text"] += data


def shown_number(text: str) -> float:
    """The number a reader sees on a card, parsed independently of the report's formatter."""
    return float(re.match(r"[-\d.,]+", text.strip()).group(0).replace(",", ""))


def parse(path):
    parser = Cards()
    parser.feed(path.read_text())
    return {c["data-metric"]: c for c in parser.cards}


def test_report_cards_show_metrics_json_numbers(runs):
    path = write_report(runs["sync"])
    doc = json.loads((runs["sync"] / "metrics.json").read_text())
    cards = parse(path)
    for card in HEADLINE + IDLE_CAUSES:
        value, reason = lookup(doc, card.metric)
        shown = cards[card.metric]
        if value is None:
            continue
        assert float(shown["data-value"]) == value, card.metric
        # what is printed agrees with metrics.json to the printed precision
        decimals = len(shown["text"].strip().split()[0].rstrip("%").partition(".")[2])
        assert abs(shown_number(shown["text"]) - value) <= 0.5 * 10 ** -decimals + 1e-9, (card.metric, shown["text"])
    assert cards["gpu_idle_pct.step"]["text"] == "24.1%"
    assert cards["gpu_idle_pct.kernel"]["text"] == "20.4%"
    assert cards["tokens_per_s"]["text"] == "1,235 tok/s"
    assert cards["dependency_pct"]["text"] == "5.0%"
    assert float(cards["trace_busy_pct"]["data-value"]) == 100 - 20.41
    assert cards["nvml_util_pct"]["text"] == "97.3%"


def test_report_absent_metric_is_absent_with_reason_never_zero(runs):
    cards = parse(write_report(runs["sync"]))
    card = cards["joules_per_token"]
    assert "data-value" not in card
    assert card["text"] == "absent"
    assert card["data-absent"] == "NVML total energy counter not supported on this GPU"


def test_report_metric_missing_from_both_sections_is_absent(runs, tmp_path):
    doc_path = runs["sync"] / "metrics.json"
    doc = json.loads(doc_path.read_text())
    del doc["metrics"]["overlap_pct"]
    doc_path.write_text(json.dumps(doc))
    card = parse(write_report(runs["sync"]))["overlap_pct"]
    assert card["text"] == "absent" and card["data-absent"] == "not in metrics.json"


def test_report_throttled_run_is_flagged(runs):
    doc_path = runs["sync"] / "metrics.json"
    doc = json.loads(doc_path.read_text())
    html = write_report(runs["sync"]).read_text()
    assert "clocks throttled" not in html
    doc["metrics"]["clock_throttled"] = True
    doc_path.write_text(json.dumps(doc))
    assert "clocks throttled during this run" in write_report(runs["sync"]).read_text()


def test_comparison_table_shows_each_runs_metrics_json_numbers(runs, tmp_path):
    from asyncbatch_prof.report import write_comparison
    from asyncbatch_prof.report.compare import COMPARED

    html = write_comparison([runs["sync"], runs["async"]], tmp_path / "compare.html").read_text()
    table = html[html.index('<table class="deltas">'):html.index("</table>")]
    rows = re.findall(r"<tr>(.*?)</tr>", table)[1:]
    assert len(rows) == len(COMPARED)
    docs = [json.loads((runs[n] / "metrics.json").read_text()) for n in ("sync", "async")]
    for (metric, _), row in zip(COMPARED, rows):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row)[1:]
        values = re.findall(r'data-metric="([^"]+)" data-value="([^"]+)"', row)
        for doc, cell in zip(docs, cells):
            value, _ = lookup(doc, metric)
            if value is None:
                assert cell == "absent", metric
            else:
                assert (metric, repr(value)) in values
    assert re.search(r'data-value="24.137">24.1% </td>|data-value="24.137">24.1%</td>', table)
    assert '1.8% <span class="better">-22.3 points</span>' in table
