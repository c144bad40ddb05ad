"""results.csv and results.json: the report's numbers for other programs.

Both are built from `cell_numbers` (one row per cell, plan order); results.json adds every
result, validity, verdict, parity and within-environment comparison, as strict JSON.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict
from typing import Any

from envmatrix.analysis.rundata import RunData, cell_numbers
from envmatrix.analysis.stats import finite_interval

REPORT_SCHEMA = "envmatrix.report/1"


def results_csv(data: RunData) -> str:
    rows = [cell_numbers(data, c) for c in data.cells]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["cell"],
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(v) for k, v in row.items()})
    return buf.getvalue()


def _csv_value(value: Any) -> Any:
    """Numbers as numbers (six significant digits), None as an empty field."""
    if value is None:
        return ""
    if isinstance(value, float):
        return format(value, ".6g") if math.isfinite(value) else ""
    return value


def results_document(data: RunData) -> dict[str, Any]:
    """results.json: every cell's result merged, with validity, verdicts and parity."""
    return {
        "schema": REPORT_SCHEMA,
        "run_id": data.run_dir.run_id,
        "baseline": data.baseline,
        "rules": asdict(data.rules),
        "cells": data.results,
        "validity": {cid: asdict(v) for cid, v in data.validity.items()},
        "verdicts": [asdict(v) for v in data.verdicts],
        "parity": {cid: asdict(p) for cid, p in data.parity.items()},
        "rows": [cell_numbers(data, c) for c in data.cells],
        "costs": {cid: asdict(c) if c else None for cid, c in data.costs.items()},
        "cost_ratios": {cid: {k: asdict(r) for k, r in ratios.items()}
                        for cid, ratios in data.cost_ratios.items()},
        "noise": {cid: asdict(n) if n else None for cid, n in data.noise.items()},
        "within": [{"environment": g.environment, "network": g.network, "host": g.host,
                    "reference": g.reference.id, "cells": [c.id for c in g.cells],
                    "verdicts": {cid: asdict(v) for cid, v in g.verdicts.items()},
                    "parity": {cid: asdict(p) for cid, p in g.parity.items()}}
                   for g in data.within],
    }


def json_text(obj: Any) -> str:
    """results.json's text: strict JSON (`_strict`), keys sorted, so rebuilds are identical."""
    return json.dumps(_strict(obj), indent=2, sort_keys=True, allow_nan=False) + "\n"


def _strict(obj: Any) -> Any:
    """NaN and infinities as null: results.json is strict JSON like every result file. An
    interval without a finite bound (too few rounds: 0 to infinity as a ratio) is null at
    both ends, as in results.csv (rundata.interval_bounds)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        if _unbounded(obj):
            obj = {**obj, "low": None, "high": None}
        return {str(k): _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def _unbounded(obj: dict[Any, Any]) -> bool:
    """Is this a comparison (asdict of a RatioCI) whose interval has no finite bound?"""
    if not {"metric", "ratio", "low", "high"} <= set(obj):
        return False
    low, high = obj["low"], obj["high"]
    return isinstance(low, float) and isinstance(high, float) and not finite_interval(low, high)
