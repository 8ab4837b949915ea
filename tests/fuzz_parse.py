"""Coverage-guided fuzzing of the parser with atheris (libFuzzer), run as a script:

    python tests/fuzz_parse.py -runs=100000 [CORPUS_DIR ...]

The first input byte picks a topic (valid, prefixed, hostile), the rest is the
payload. Any exception escaping ``parse_message`` is a crash; so is a Reading
that breaks the contract's bounds. tests/test_hostile_input.py runs it bounded.
"""

from __future__ import annotations

import math
import sys
from datetime import UTC, datetime

import atheris
from atheris.import_hook import instrument_imports

with instrument_imports():
    from bridge.ingest.parse import DEVICE_ID, KWH_LIMIT, ParseRules, Reading, Reject, parse_message

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
RULES = ParseRules(topic_prefix="site/")
TOPICS = [
    "site/meter/MTR-00001",
    "site/vehicle/EV-00001",
    "site/meter/'; DROP TABLE x; --",
    "site/vehicle/a\x00b",
    "meter/MTR-00001",
    "site/meter/",
    "site/gas/G-1",
    "site/vehicle/" + "E" * 65,
]


def fuzz_one_input(data: bytes) -> None:
    if not data:
        return
    topic = TOPICS[data[0] % len(TOPICS)]
    result = parse_message(topic, data[1:], NOW, RULES)
    if isinstance(result, Reading):
        assert DEVICE_ID.fullmatch(result.device_id), result
        energy = result.values[0]
        assert energy is not None, result
        assert 0 <= energy < KWH_LIMIT, result
        assert all(v is None or math.isfinite(v) for v in result.values), result
        assert result.recorded_at.tzinfo is not None, result
    else:
        assert isinstance(result, Reject), result
        assert len(result.detail) <= 300, result


if __name__ == "__main__":
    atheris.Setup(sys.argv, fuzz_one_input)
    atheris.Fuzz()
