"""The bench's pure parts: the --link flag, result file names, the RSS flatness report."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import report
import stores


def test_link_flag_is_rate_each_way_and_round_trip() -> None:
    link = stores.parse_link("100mbit,40ms")
    assert link.rate_bits_per_s == 100e6
    assert link.rtt_s == pytest.approx(0.040)
    assert link.one_way_s == pytest.approx(0.020)
    assert stores.parse_link("1.5Gbit, 500us") == stores.Link(1.5e9, pytest.approx(0.0005))
    assert stores.parse_link("8000,0.1").rtt_s == pytest.approx(0.1)


@pytest.mark.parametrize("text", ["100mbit", "fast,40ms", "100mbit,soon", "0mbit,40ms", ""])
def test_bad_link_flags_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        stores.parse_link(text)


def test_flatness_report_compares_each_tool_and_step() -> None:
    mib = 1024 * 1024

    def result(size: int, ck: int, restic: int) -> dict[str, object]:
        return {
            "size_mib": size,
            "tools": {
                "cloudkeep": {
                    "steps": {
                        "initial": {"peak_rss_bytes": ck * mib},
                        "restore_new": {"peak_rss_bytes": 100 * mib},
                    }
                },
                "restic": {"steps": {"initial": {"peak_rss_bytes": restic * mib}}},
            },
        }

    rows = report.rss_rows(result(600, 150, 100), result(5120, 170, 140))
    verdicts = {(r["tool"], r["step"]): r["verdict"] for r in rows}
    assert verdicts == {
        ("cloudkeep", "initial"): "PASS",
        ("cloudkeep", "restore_new"): "PASS",
        ("restic", "initial"): "FAIL",
    }
    assert report.overall(rows)["verdict"] == "PASS"
    assert (
        report.overall(report.rss_rows(result(600, 150, 1), result(5120, 181, 1)))["verdict"]
        == "FAIL"
    )
    assert "B/A 1.13 <= 1.2: PASS" in report.render(result(600, 150, 100), result(5120, 170, 1))
