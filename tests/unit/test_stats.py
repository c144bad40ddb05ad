"""Verdict statistics and validity rules on synthetic measurements of known truth."""

from __future__ import annotations

import numpy as np
import pytest
from fakeruns import BASELINE, CANDIDATE, fake_result, plan_cell, typed_plan

from envmatrix import grammar
from envmatrix.analysis import stats
from envmatrix.analysis.stats import VerdictRules, check_validity, compare_cells, run_verdicts
from envmatrix.rundir.plan import Cell

BASE = f"{BASELINE}--cnn--cpu"
CAND = f"{CANDIDATE}--cnn--cpu"
FAST_RULES = VerdictRules()  # one look at whatever rounds a comparison has
DECISIVE = (stats.FASTER, stats.SLOWER)


def _cell(cid: str) -> Cell:
    return plan_cell(cid)


def _verdict(base_p50: float, cand_p50: float, seed: int, cv: float = 0.01,
             rules: VerdictRules = FAST_RULES) -> stats.Verdict:
    results = {BASE: fake_result(BASE, p50=base_p50, cv=cv, seed=2 * seed),
               CAND: fake_result(CAND, p50=cand_p50, cv=cv, seed=2 * seed + 1)}
    return compare_cells(_cell(BASE), _cell(CAND), results, rules)


def test_a_five_percent_slowdown_is_detected() -> None:
    words = [_verdict(0.005, 0.00525, seed).verdict for seed in range(20)]
    assert words.count(stats.SLOWER) >= 19, words


def test_a_large_speedup_is_faster_with_a_ci_around_it() -> None:
    v = _verdict(0.010, 0.005, seed=0)
    assert v.verdict == stats.FASTER
    p50 = v.ratios["p50"]
    assert p50.low < p50.ratio < p50.high
    assert p50.low > 0.45 and p50.high < 0.55
    # Throughput goes the other way: twice the inferences per second.
    assert 1.8 < v.ratios["throughput"].ratio < 2.2


def _units(values: np.ndarray) -> dict[int, float]:
    return {i: float(v) for i, v in enumerate(values)}


def test_identical_distributions_are_flagged_at_about_alpha_without_a_floor() -> None:
    rng = np.random.default_rng(7)
    rules = VerdictRules(min_effect=0.0)
    flagged = 0
    trials = 400
    for t in range(trials):
        a, b = 0.005 * np.exp(rng.normal(0, 0.02, size=(2, 5)))
        ci = stats.compare_units(f"a{t}", _units(a), f"b{t}", _units(b), False, rules)
        flagged += ci.verdict in DECISIVE
    # 5 vs 5 unpaired: the exact Mann-Whitney interval misses no change 3.2% of the time.
    assert 0.005 <= flagged / trials <= 0.07


def test_the_effect_floor_keeps_tiny_significant_shifts_from_being_slower() -> None:
    v = _verdict(0.005, 0.00505, seed=3, cv=0.001)  # +1%, very quiet: significant
    assert v.p50 is not None and v.p50.low > 1.0 and stats.below_min_effect(v.p50, 0.02)
    assert v.verdict == stats.EQUIVALENT  # and well inside +-5%


def test_ci_covers_the_true_ratio() -> None:
    trials, covered = 30, 0
    for seed in range(trials):
        v = _verdict(0.005, 0.0045, seed, cv=0.02, rules=VerdictRules())
        covered += v.ratios["p50"].low <= 0.9 <= v.ratios["p50"].high
    # Five repeats a side make the repeat-level bootstrap a little narrow; measured ~90%.
    assert covered / trials >= 0.8


def test_verdicts_are_deterministic_and_order_free() -> None:
    results = {BASE: fake_result(BASE, seed=1), CAND: fake_result(CAND, p50=0.0052, seed=2)}
    first = compare_cells(_cell(BASE), _cell(CAND), results, FAST_RULES)
    again = compare_cells(_cell(BASE), _cell(CAND), dict(reversed(results.items())), FAST_RULES)
    assert first == again


def test_too_few_repeats_are_said_in_the_notes() -> None:
    results = {BASE: fake_result(BASE, repeats=3, seed=1),
               CAND: fake_result(CAND, p50=0.008, repeats=3, seed=2)}
    v = compare_cells(_cell(BASE), _cell(CAND), results, FAST_RULES)
    assert v.verdict == stats.INCONCLUSIVE  # 3 vs 3: even all apart is 2 / 20 = 10%
    assert any("too few rounds for its test" in n and "at least 4" in n for n in v.notes)
    assert v.ratios["p50"].low == 0.0 and np.isinf(v.ratios["p50"].high)  # [0, inf]: none
    assert stats.min_repeats_for(0.05) == 4


# ---------------------------------------------------------------- validity


def test_a_provider_fallback_is_invalid() -> None:
    res = fake_result(CAND, provider="OpenVINOExecutionProvider")
    res["provider"].update(active=["CPUExecutionProvider"], fallback=True)
    validity = check_validity(res)
    assert not validity.valid
    assert "OpenVINOExecutionProvider is not active" in validity.reasons[0]


def test_a_version_mismatch_is_invalid_and_names_normalise() -> None:
    res = fake_result(CAND, packages={"onnxruntime_openvino": "1.20.0", "numpy": "2.0"})
    res["host"]["requested_packages"] = {"onnxruntime-openvino": "1.20.0"}
    assert check_validity(res).valid
    res["host"]["requested_packages"] = {"onnxruntime-openvino": "1.20.1"}
    assert check_validity(res).reasons == (
        "onnxruntime-openvino==1.20.1 requested but 1.20.0 installed",)
    res["host"]["requested_packages"] = {"torch": "2.3.0"}
    assert "not installed" in check_validity(res).reasons[0]


@pytest.mark.parametrize(("want", "got", "same"), [
    ("1.8", "1.8.0", True), ("2.3.0", "2.3.0+cpu", True), ("1.20.1", "1.20.0", False),
    ("1.8.0", "1.8.0rc1", False), ("1.8.0rc1", "1.8rc1", True), ("2.0", "2.0.post1", False),
    ("10", "1.0", False), ("0", "0.0.0", True)])
def test_versions_compare_by_release(want: str, got: str, same: bool) -> None:
    assert (grammar.version_mismatches({"x": want}, {"x": got}) == []) is same


def test_too_few_iterations_or_too_little_time_is_invalid() -> None:
    res = fake_result(CAND, iterations=40)
    res["settings"]["min_time_s"] = 0.0
    assert "40 iterations < 50" in check_validity(res).reasons[0]
    res = fake_result(CAND)
    res["settings"]["min_time_s"] = 5.0
    assert "< 5.0 s" in check_validity(res).reasons[0]
    res = fake_result(CAND)
    res["settings"]["repeats"] = 6
    assert "5 of 6 repeats" in check_validity(res).reasons[0]


def test_high_repeat_spread_warns_but_stays_valid() -> None:
    validity = check_validity(fake_result(CAND, cv=0.15, seed=4))
    assert validity.valid
    assert validity.warnings and "noisy" in validity.warnings[0]
    assert not check_validity(fake_result(CAND, cv=0.005)).warnings


def test_an_invalid_cell_gets_the_invalid_verdict_with_reasons() -> None:
    bad = fake_result(CAND)
    bad["provider"]["fallback"] = True
    v = compare_cells(_cell(BASE), _cell(CAND), {BASE: fake_result(BASE), CAND: bad},
                      FAST_RULES)
    assert v.verdict == stats.INVALID and v.reasons and not v.ratios


def test_a_baseline_without_the_provider_is_compared_with_its_cpu_cell() -> None:
    ov = f"{CANDIDATE}--cnn--openvino"
    plan = typed_plan([BASE, CAND, ov])
    results = {c: fake_result(c, seed=i) for i, c in enumerate((BASE, CAND, ov))}
    verdicts = run_verdicts(plan, results, FAST_RULES)
    assert [v.candidate for v in verdicts] == [CAND, ov]
    assert verdicts[1].baseline == BASE
    assert any("compared with its cpu cell" in n for n in verdicts[1].notes)


# ---------------------------------------------------------------- interleaved rounds


ROUNDS = 10
DRIFT = np.linspace(0.92, 1.08, ROUNDS)  # the machine slows by 16% over the run


def _rounds_result(cell: str, p50: float, drift: np.ndarray, seed: int, cv: float = 0.03,
                   per_round: int = 1) -> dict:
    """An ok result measured in interleaved rounds: round r runs at speed drift[r]."""
    res = fake_result(cell, p50=p50, cv=cv, repeats=len(drift) * per_round, seed=seed,
                      iterations=100)
    for i, rep in enumerate(res["repeats"]):  # fake_result drew each process's own noise
        r = i // per_round
        rep["latencies_s"] = [x * drift[r] for x in rep["latencies_s"]]
        rep["round"] = r
    res["summary"]["repeat_p50_s"] = [float(np.percentile(r["latencies_s"], 50))
                                      for r in res["repeats"]]
    res["host"].update(started_at="2026-11-23T12:00:00Z", finished_at="2026-11-23T12:05:00Z")
    return res


def _paired(base_p50: float, cand_p50: float, seed: int, **kw: object) -> stats.Verdict:
    results = {BASE: _rounds_result(BASE, base_p50, DRIFT, 2 * seed, **kw),  # type: ignore[arg-type]
               CAND: _rounds_result(CAND, cand_p50, DRIFT, 2 * seed + 1, **kw)}  # type: ignore[arg-type]
    return compare_cells(_cell(BASE), _cell(CAND), results, FAST_RULES)


def test_drift_between_blocks_fools_the_unpaired_test_but_not_the_paired_one() -> None:
    seeds = range(40)
    # Today's order: the baseline's 10 processes, then the candidate's, on a drifting machine.
    blocks = np.linspace(0.92, 1.08, 2 * ROUNDS)
    unpaired = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        a = 0.005 * blocks[:ROUNDS] * np.exp(rng.normal(0, 0.03, ROUNDS))
        b = 0.005 * blocks[ROUNDS:] * np.exp(rng.normal(0, 0.03, ROUNDS))
        ci = stats.compare_units("a", _units(a), "b", _units(b), False, FAST_RULES)
        unpaired.append(ci.verdict)
    decisive = [w for w in unpaired if w in DECISIVE]
    assert len(decisive) >= 36, unpaired  # an unchanged model "got slower"
    # Interleaved: the same drift hits both cells in every round, and pairing cancels it.
    verdicts = [_paired(0.005, 0.005, seed) for seed in seeds]
    assert all(v.method == stats.PAIRED and v.rounds == ROUNDS for v in verdicts)
    flagged = [v.verdict for v in verdicts if v.verdict in DECISIVE]
    # The paired sign-test interval at 95%, per-round ratio noise ~4%, 2% floor: rarely flags.
    assert len(flagged) <= 4, flagged
    errors = [abs(v.ratios["p50"].ratio - 1) for v in verdicts]
    assert np.median(errors) < 0.015  # the drift was 16%, the blocks' median ratio off by ~8%


def test_a_five_percent_slowdown_is_detected_through_the_drift() -> None:
    # 2% process CV, 10 rounds, one look: the sign-test interval needs 9 of 10 rounds on one
    # side; 37 of these 40 seeds get there.
    verdicts = [_paired(0.005, 0.00525, seed, cv=0.02) for seed in range(40)]
    words = [v.verdict for v in verdicts]
    assert words.count(stats.SLOWER) >= 35, words
    covered = sum(v.ratios["p50"].low <= 1.05 <= v.ratios["p50"].high for v in verdicts)
    assert covered >= 36  # an exact interval: at least 95% whatever the noise


def test_a_paired_verdict_is_deterministic_and_reports_its_method() -> None:
    first, again = _paired(0.005, 0.0055, seed=3), _paired(0.005, 0.0055, seed=3)
    assert first == again and first.method == stats.PAIRED
    assert first.p_value is None  # only the per-run error rate computes one (Holm)
    assert first.tail_verdict == first.ratios["p99"].verdict
    assert first.ratios["p50"].low < first.ratios["p50"].ratio < first.ratios["p50"].high


def test_rounds_of_other_runs_or_other_times_are_not_paired() -> None:
    base = _rounds_result(BASE, 0.005, DRIFT, 1)
    cand = _rounds_result(CAND, 0.0055, DRIFT, 2)
    cand["host"]["run_id"] = "run-2"  # e.g. `compare` of two runs
    v = compare_cells(_cell(BASE), _cell(CAND), {BASE: base, CAND: cand}, FAST_RULES)
    assert v.method == stats.UNPAIRED
    cand["host"].update(run_id=base["host"]["run_id"], started_at="2026-11-23T13:00:00Z",
                        finished_at="2026-11-23T13:05:00Z")  # re-measured by --resume
    v = compare_cells(_cell(BASE), _cell(CAND), {BASE: base, CAND: cand}, FAST_RULES)
    assert v.method == stats.UNPAIRED and not stats.interleaved(base, cand)


def test_too_few_shared_rounds_are_inconclusive_with_a_note() -> None:
    five = DRIFT[:5]
    results = {BASE: _rounds_result(BASE, 0.005, five, 1, per_round=2),
               CAND: _rounds_result(CAND, 0.006, five, 2, per_round=2)}
    v = compare_cells(_cell(BASE), _cell(CAND), results, FAST_RULES)
    # 5 rounds all one way happen by chance 2 / 2**5 = 6% of the time: no finite interval.
    assert v.method == stats.PAIRED and v.verdict == stats.INCONCLUSIVE
    assert any("5 shared rounds, a paired interval at 95% needs 6" in n for n in v.notes)
    assert stats.min_rounds_for(0.05) == 6


def test_round_p50s_take_the_median_of_each_rounds_repeats() -> None:
    res = {"repeats": [{"round": 0, "latencies_s": [1.0, 2.0, 3.0]},
                       {"round": 0, "latencies_s": [5.0]},
                       {"round": 1, "latencies_s": [4.0]}]}
    assert stats.round_p50s(res) == {0: 3.5, 1: 4.0}
    assert stats.round_p50s({"repeats": [{"latencies_s": [1.0]}]}) is None
    # Rounds are the units of a cell's point; without rounds (or with one), its processes.
    assert stats.unit_values(res) == {0: 3.5, 1: 4.0}
    assert stats.unit_values({"repeats": [{"round": 0, "latencies_s": [1.0]},
                                          {"round": 0, "latencies_s": [3.0]}]}) == {0: 1.0, 1: 3.0}


# ---------------------------------------------------------------- one procedure


def test_the_issues_case_an_interval_across_1_is_no_significant_change() -> None:
    # The issue: 20 rounds, p=0.0094, ratio 0.922, interval [0.911, 1.036] was "faster".
    assert stats.decide_interval(0.922, 0.911, 1.036, 0.02) == stats.INCONCLUSIVE
    # The same shape end to end: 11 rounds ~8% faster, 9 rounds ~4% slower.
    base = {r: 0.005 for r in range(20)}
    ratios = [0.915 + 0.001 * r for r in range(11)] + [1.03 + 0.003 * r for r in range(9)]
    cand = {r: 0.005 * x for r, x in enumerate(ratios)}
    ci = stats.compare_units(BASE, base, CAND, cand, True, VerdictRules())
    assert 0.92 < ci.ratio < 0.93 and ci.low < 1.0 < ci.high
    assert ci.verdict == stats.INCONCLUSIVE and ci.method == stats.PAIRED
    assert ci.cand is not None and ci.base is not None and ci.cand / ci.base == ci.ratio


def test_clear_cases_are_faster_and_slower_and_the_floor_holds() -> None:
    assert stats.decide_interval(0.90, 0.88, 0.93, 0.02) == stats.FASTER
    assert stats.decide_interval(1.10, 1.05, 1.12, 0.02) == stats.SLOWER
    assert stats.decide_interval(0.99, 0.985, 0.995, 0.02) == stats.INCONCLUSIVE  # under 2%
    assert stats.decide_interval(1.10, float("nan"), float("nan"), 0.02) == stats.INCONCLUSIVE
    assert stats.decide_interval(1.10, 1.05, 1.12, 0.02, higher_is_better=True) == stats.FASTER
    fast, slow = _paired(0.005, 0.0045, seed=1), _paired(0.005, 0.0056, seed=2)
    assert (fast.verdict, slow.verdict) == (stats.FASTER, stats.SLOWER)
    assert fast.ratios["p50"].high < 1.0 and slow.ratios["p50"].low > 1.0


def test_the_table_points_are_the_ones_the_change_divides() -> None:
    v = _paired(0.005, 0.0053, seed=4)
    results = {BASE: _rounds_result(BASE, 0.005, DRIFT, 8),
               CAND: _rounds_result(CAND, 0.0053, DRIFT, 9)}
    for ci in v.ratios.values():
        assert ci.cand is not None and ci.base is not None
        assert ci.cand / ci.base == pytest.approx(ci.ratio, rel=1e-12)
    v = compare_cells(_cell(BASE), _cell(CAND), results, FAST_RULES)
    assert v.method == stats.PAIRED
    # The baseline shows its own median; a paired candidate its median corrected for the
    # baseline's drift: the baseline's point times the median of the per-round ratios.
    assert v.ratios["p50"].base == stats.point_value(results[BASE], "p50")
    base_rounds = stats.unit_values(results[BASE], "p50")
    cand_rounds = stats.unit_values(results[CAND], "p50")
    # (the median taken on log ratios: with an even number of rounds, the geometric mean of
    # the middle two, so that swapping the cells inverts the ratio exactly)
    per_round = [np.log(cand_rounds[r] / base_rounds[r]) for r in sorted(base_rounds)]
    change = float(np.exp(np.median(per_round)))
    assert v.ratios["p50"].ratio == pytest.approx(change, rel=1e-9)
    assert v.ratios["p50"].cand == pytest.approx(
        stats.point_value(results[BASE], "p50") * change, rel=1e-12)


def test_too_few_units_have_no_interval_and_a_note() -> None:
    assert stats.too_few_note(stats.PAIRED, 5, 5) is not None
    assert stats.too_few_note(stats.PAIRED, 6, 6) is None
    assert stats.too_few_note(stats.UNPAIRED, 3, 20) is not None
    assert stats.too_few_note(stats.UNPAIRED, 4, 4) is None
    base = {r: 0.005 for r in range(5)}
    ci = stats.compare_units(BASE, base, CAND, {r: 0.004 for r in range(5)}, True, FAST_RULES)
    assert ci.verdict == stats.INCONCLUSIVE and np.isinf(ci.high) and ci.ratio == 0.8


def test_version_mismatches_take_every_installed_distribution() -> None:
    installed = {"Foo.Bar": "1.2", "foo_bar": "1.3", "zope.interface": "6.0", "odd": None,
                 "backports.tarfile": "1.0.0"}
    assert grammar.version_mismatches({"foo-bar": "1.3.0", "zope-interface": "6"}, installed) == []
    assert grammar.version_mismatches({"odd": "1"}, installed) == [
        "odd==1 requested but no version installed"]
    assert grammar.version_mismatches({"foo-bar": "2"}, installed) == [
        "foo-bar==2 requested but 1.2, 1.3 installed"]
