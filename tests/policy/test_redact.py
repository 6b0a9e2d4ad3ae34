"""PII redaction runs Presidio only where it could find something, and redacts exactly as before there."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("presidio_analyzer")

from ragconf.policy import redact as R  # noqa: E402

TEXTS = [
    "Contact Jane Doe at jane.doe@example.com or +1 415 555 0199 [1].",
    "Jane approved it [2].",
    "written by john smith, reviewed by ana.",  # the model names people in lower-case text too
    "Card 4111 1111 1111 1111 expires soon; SSN 078-05-1120 [1].",
    "Pay to IBAN DE89 3704 0044 0532 0130 00 [3]. The host is 10.0.0.1 or fe80::1.",
    "Call 16 40 now.",  # a four-digit number the phone recognizer accepts
    "Fail over the primary PostgreSQL cluster when replication lag exceeds 60 seconds [1].",
    "Band E4 ranges from 76,000 to 95,000 EUR [1]. Reception closes at 17:30 [2].",
    "I could not find an answer in the documents you can access.",
]


def _before(text: str) -> tuple[str, list[str]]:
    """The redaction as it was before the pre-check: Presidio over every segment between citation markers."""
    analyzer, anonymizer = R._load()
    parts = R._MARKER.split(text)
    masked: set[str] = set()
    for i in range(0, len(parts), 2):
        if parts[i].strip():
            results = analyzer.analyze(text=parts[i], language="en", entities=list(R.ENTITIES))
            if results:
                parts[i] = anonymizer.anonymize(text=parts[i], analyzer_results=results).text
                masked.update(r.entity_type for r in results)
    return "".join(parts), sorted(masked)


@pytest.mark.parametrize("text", TEXTS)
def test_redaction_is_unchanged_by_the_pre_check(text: str) -> None:
    expected = _before(text)
    assert R.redact(text) == expected
    assert R.redact(text) == expected  # again, possibly from the clean-segment cache


def test_known_pii_is_masked_and_clean_text_is_remembered() -> None:
    text, masked = R.redact("Contact Jane Doe at jane.doe@example.com [1].")
    assert masked == ["EMAIL_ADDRESS", "PERSON"] and "jane.doe" not in text and text.endswith(" [1].")
    clean = "The guest network is called AcmeGuest and rotates weekly."
    assert R.redact(clean) == (clean, [])
    before = dict(R.stats)
    assert R.redact(clean) == (clean, [])
    assert R.stats["cached"] == before["cached"] + 1 and R.stats["presidio"] == before["presidio"]


def test_a_redacted_segment_is_remembered_redacted() -> None:
    text = "Escalate to Maria Keller on +49 30 1234 5678 [2]. Then wait."
    first = R.redact(text)
    assert first == _before(text) and "Maria" not in first[0] and "1234" not in first[0]
    before = dict(R.stats)
    assert R.redact(text) == first  # the same masked text and entity types, Presidio not run again
    assert R.stats["presidio"] == before["presidio"] and R.stats["cached"] == before["cached"] + 2


def test_pattern_candidates_cover_the_pattern_recognizers() -> None:
    for text in ("a@b.co", "call 1640", "16-40", "ab12", "::", "2001:db8::1", "4111111111111111", "078-05-1120"):
        assert R._decide(text) == "presidio", text
    assert R._decide("12 - 3") == "skipped"


def test_text_without_candidates_never_loads_presidio() -> None:
    """In a fresh process: a text without letters loads nothing; clean prose loads the spaCy model (whose
    plugin entry points import presidio_analyzer's modules) but never builds Presidio's analyzer or imports
    its anonymizer; only a candidate does."""
    code = textwrap.dedent(
        """
        import sys
        from ragconf.policy.redact import _engines, redact
        assert redact("12 - 3 [1]") == ("12 - 3 [1]", [])
        assert "spacy" not in sys.modules and "presidio_analyzer" not in sys.modules
        text = "The VPN password rotates every Monday and is posted at reception [1]."
        assert redact(text) == (text, [])
        assert "spacy" in sys.modules and "presidio_anonymizer" not in sys.modules and "analyzer" not in _engines
        out, masked = redact("Mail jane.doe@example.com [2].")
        assert masked == ["EMAIL_ADDRESS"] and "presidio_anonymizer" in sys.modules and "analyzer" in _engines
        print("ok")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok"
