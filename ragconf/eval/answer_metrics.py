"""Answer metrics that need no hosted LLM: citation precision and overlap with a reference answer."""

from __future__ import annotations

import re

__all__ = ["citation_precision", "reference_overlap"]

_SENT = re.compile(r"(?<=[.!?])\s+")


def _tokens(text: str) -> list[str]:
    from ragconf.components.citations import CITATION_RE
    from ragconf.store.text import analyze

    return analyze(CITATION_RE.sub(" ", text))


def citation_precision(answer: str, passages: list[str], threshold: float = 0.5) -> float:
    """Share of (sentence, cited passage) pairs where the passage supports the sentence: at least
    ``threshold`` of the sentence's content terms occur in the passage. 0.0 when nothing is cited."""
    from ragconf.components.citations import citation_numbers

    pairs = supported = 0
    for sent in _SENT.split(answer):
        nums = citation_numbers(sent)  # the answer path's parser: [1-3], [1;2], [1, 2], [1][2]
        terms = set(_tokens(sent))
        for n in nums:
            pairs += 1
            if 1 <= n <= len(passages) and terms:
                overlap = len(terms & set(_tokens(passages[n - 1]))) / len(terms)
                supported += overlap >= threshold
    return supported / pairs if pairs else 0.0


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def reference_overlap(answer: str, reference: str) -> dict[str, float]:
    """Token F1 and ROUGE-L (LCS) F1 between an answer and a reference answer (stemmed, no stopwords)."""
    a, r = _tokens(answer), _tokens(reference)
    if not a or not r:
        return {"f1": 0.0, "rougeL": 0.0}
    common = sum(min(a.count(t), r.count(t)) for t in set(a))
    p, rec = common / len(a), common / len(r)
    f1 = 2 * p * rec / (p + rec) if common else 0.0
    lcs = _lcs(a, r)
    lp, lr = lcs / len(a), lcs / len(r)
    return {"f1": f1, "rougeL": 2 * lp * lr / (lp + lr) if lcs else 0.0}
