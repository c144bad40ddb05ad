"""envmatrix benchmark harness: runs inside every image with only the standard library, numpy
and the runtime under test. Python 3.6+ (checked with `vermin -t=3.6- --violations harness/`):
no dataclasses, no walrus, no `from __future__ import annotations`.

Entry point: `python -m harness --help`. The host imports `harness.inputs.make_inputs` to make
the shared input tensors, so host and harness produce identical bytes.
"""

# Bumped when the measurement or the result layout changes; recorded in every result.
HARNESS_VERSION = "1"
RESULT_SCHEMA = "envmatrix.result/1"
