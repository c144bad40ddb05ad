"""The fake results (tests/fakeruns.py) are what the report's validity check accepts, or
rejects for the reason a failed cell carries."""

from __future__ import annotations

from fakeruns import BASELINE, failed_result, fake_result

from envmatrix.analysis.stats import check_validity


def test_fake_result_is_valid_and_has_the_asked_p50() -> None:
    res = fake_result(f"{BASELINE}--cnn--cpu", p50=0.004, cv=0.0)
    assert check_validity(res).valid
    assert abs(res["summary"]["latency_s"]["p50"] - 0.004) / 0.004 < 0.01


def test_failed_result_is_invalid_with_its_status() -> None:
    verdict = check_validity(failed_result(f"{BASELINE}--cnn--cpu"))
    assert not verdict.valid
    assert "build_failed" in verdict.reasons[0]
