"""One home per contract: the plan round-trips, and render's guard uses the config's grammar."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from envmatrix import grammar
from envmatrix.config import load as config
from envmatrix.errors import ConfigError
from envmatrix.images import render
from envmatrix.rundir.plan import ImageRecord, plan_from_dict, plan_to_dict

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("matrix", ["matrix.yaml", "examples/cuda-upgrade.yaml"])
def test_resolved_plan_reads_back_as_the_same_typed_plan(matrix: str) -> None:
    plan = config.load_plan(REPO / matrix)
    doc = json.loads(json.dumps(plan_to_dict(plan)))  # as it lands on disk: plain data
    doc["run"] = {"run_id": "r1", "images": {plan.environments[0].id: {"tag": "t", "image_id":
                                                                         "sha256:x"}}}
    back = plan_from_dict(doc)
    assert back.plan == plan
    assert back.run.images[plan.environments[0].id] == ImageRecord("t", "sha256:x")
    assert [c.config_hash(back.plan.measure) for c in back.plan.cells] == [
        c.config_hash(plan.measure) for c in plan.cells]


@pytest.mark.parametrize("env_id", ["a__b", "a--b", "a-", "A", "a" * 64, "a_-b", "bookworm-ort1.2"])
def test_render_refuses_exactly_the_ids_config_refuses(env_id: str) -> None:
    plan = config.load_plan(REPO / "matrix.yaml")
    env = plan.environments[0]
    bad = grammar.check_id(env_id) is not None
    tampered = type(env)(**{**env.__dict__, "id": env_id})
    if bad:
        with pytest.raises(ConfigError):
            render.validate_environment(tampered, plan)
    else:
        render.validate_environment(tampered, plan)


def test_one_normalize_package() -> None:
    from envmatrix.analysis import stats
    from envmatrix.config import expand, spec

    for module in (expand, spec, stats):
        assert getattr(module, "normalize_package", grammar.normalize_package) is \
            grammar.normalize_package


def test_one_release_parser_and_one_pin_check() -> None:
    from envmatrix.analysis import stats
    from envmatrix.config import expand, gpucompat
    from envmatrix.images import locks

    assert expand.release is grammar.release and gpucompat.release is grammar.release
    for module in (stats, locks):
        assert getattr(module, "version_mismatches", grammar.version_mismatches) is \
            grammar.version_mismatches


def test_the_result_schema_is_the_harness_s() -> None:
    import envmatrix_harness
    from envmatrix.rundir import results

    assert results.SCHEMA is envmatrix_harness.RESULT_SCHEMA
