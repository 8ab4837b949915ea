"""docs/contract.md and the code agree: the reject reasons and the payload fields
named in both, the device id pattern, examples that are rejected for the reason
they illustrate, and every "contract section N" citation leading to a section."""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bridge.ingest.parse import DEVICE_ID, ParseRules, Reject, RejectReason, parse_message
from bridge.streams import STREAMS
from tests.support.services import ROOT

pytestmark = pytest.mark.unit

CONTRACT = ROOT / "docs" / "contract.md"
# The receive time the document's examples are written for.
RECEIVED_AT = datetime(2026, 11, 27, 12, 0, 30, tzinfo=UTC)
# Rows whose example is described in words rather than given as bytes.
DESCRIBED_EXAMPLES = {RejectReason.PAYLOAD_TOO_LARGE, RejectReason.DB_ERROR}
CITATION = re.compile(r"contract\.md(?:\]\(contract\.md\))? section (\d+)")


def section(heading: str) -> str:
    """The text under one ``##``/``###`` heading, up to the next heading of any level."""
    text = CONTRACT.read_text()
    return text.split(f"{heading}\n", 1)[1].split("\n#", 1)[0]


def table(text: str) -> list[list[str]]:
    """The body rows of the first Markdown table in ``text``, cells stripped."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = list(itertools.takewhile(lambda line: line.startswith("|"), lines[start:]))
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def code(cell: str) -> str | None:
    """The text of a cell that is one code span, else None."""
    match = re.fullmatch(r"`([^`]*)`", cell)
    return match[1] if match else None


def reject_rows() -> dict[str, list[str]]:
    return {row[0].strip("`"): row for row in table(section("### Rejects: a clear reason, nothing lost"))}


def test_every_reject_reason_is_documented_and_every_documented_one_exists() -> None:
    """The rejects table names exactly the codes of RejectReason."""
    assert set(reject_rows()) == {str(reason) for reason in RejectReason}


def test_each_example_is_rejected_for_the_reason_it_illustrates() -> None:
    """Every example given as a topic and a payload, parsed at the stated receive
    time with the default rules, is rejected with its row's reason."""
    for reason, (_, _, topic_cell, payload_cell) in reject_rows().items():
        topic, payload = code(topic_cell), code(payload_cell)
        if reason in DESCRIBED_EXAMPLES:
            assert payload is None, f"{reason}: give its example in words or drop it from DESCRIBED_EXAMPLES"
            continue
        assert topic is not None, reason
        assert payload is not None, reason
        result = parse_message(topic, payload.encode(), RECEIVED_AT, ParseRules())
        assert isinstance(result, Reject), f"{reason}: its example is accepted"
        assert result.reason == reason, f"{reason}: its example is rejected as {result.reason} ({result.detail})"


def test_oversize_example_is_one_byte_over_the_default_limit() -> None:
    """The payload_too_large row states the first size that is refused."""
    limit = ParseRules().max_payload_bytes
    assert f"{limit + 1:,} bytes or more" in reject_rows()["payload_too_large"][3]
    too_large = b'{"ts": 1}'.ljust(limit + 1)
    result = parse_message("meter/MTR-1", too_large, RECEIVED_AT, ParseRules())
    assert isinstance(result, Reject)
    assert result.reason == RejectReason.PAYLOAD_TOO_LARGE


@pytest.mark.parametrize("stream", sorted(STREAMS))
def test_payload_fields_are_the_parsers(stream: str) -> None:
    """Each stream's field table names exactly the fields the parser reads, with
    ``ts`` and the energy field required, the rest optional."""
    spec = STREAMS[stream]
    rows = table(section(f"**{stream.capitalize()}** (`{stream}/{{{spec.id_field}}}`):"))
    documented = {row[0].strip("`"): row[1] for row in rows}
    required = {"ts", spec.energy_field}
    optional = {spec.id_field, *spec.optional_fields, "seq"}
    assert documented == {**{f: "yes" for f in required}, **{f: "no" for f in optional}}


def test_device_id_pattern_is_the_parsers() -> None:
    """The documented device id pattern is the one the parser applies."""
    assert f"`^{DEVICE_ID.pattern}$`" in section("### Topics")


def test_every_citation_leads_to_a_section() -> None:
    """Code and documents cite the contract as "docs/contract.md section N" (within
    docs/, a link); each N is a numbered section, and no citation names a file that
    does not exist."""
    numbered = {int(n) for n in re.findall(r"^## (\d+)\. ", CONTRACT.read_text(), re.MULTILINE)}
    files = [p for d in ("bridge", "loadgen", "tests", "bench", "docs") for p in (ROOT / d).rglob("*.*")]
    cited: set[int] = set()
    for path in files:
        if path.suffix not in (".py", ".md", ".sql") or path in (CONTRACT, Path(__file__)):
            continue
        text = path.read_text()
        assert "CONTRACT section" not in text, f"{path}: cite docs/contract.md"
        cited.update(int(n) for n in CITATION.findall(text))
    assert cited
    assert cited <= numbered
