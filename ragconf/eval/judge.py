"""Judged answer metrics: an OpenAI-compatible judge model through MLflow's GenAI judges (``make_judge``).

Three metrics, each a mean over the evaluated answers (``eval.judge.metrics`` picks which):

- ``judge_faithfulness``: share of an answer's sentences that are supported by a passage they cite. A sentence
  with no valid citation counts as unsupported (no call is made for it).
- ``judge_citation_correctness``: share of (sentence, cited passage) pairs where that passage supports the
  sentence: a sentence citing ``[1][2]`` where only passage 2 supports it scores 1/2 here and 1 above.
- ``judge_answer_relevance``: share of answers the judge finds address the question.

The judge is asked yes/no questions with MLflow's structured output (``Literal["yes", "no"]``); a reply it
cannot parse is counted in ``judge_errors`` and left out of the means, never scored as a pass. A judge that
cannot be reached stops the evaluation with one clean line naming the endpoint.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ragconf.errors import EvalError

__all__ = ["AnswerJudge", "JudgedAnswer"]

_SENT = re.compile(r"(?<=[.!?])\s+")

SUPPORT = (
    "You check whether a sentence of an answer is supported by a passage it cites.\n"
    "The sentence is in {{ outputs }}. The passage is in {{ inputs }} (field 'passage').\n"
    "Answer 'yes' only if everything the sentence states can be found in or directly inferred from the "
    "passage; answer 'no' if the passage does not contain it or contradicts it. Ignore citation markers "
    "such as [1]."
)
RELEVANCE = (
    "You check whether an answer addresses a question.\n"
    "The question is in {{ inputs }} (field 'question'), the answer in {{ outputs }}.\n"
    "Answer 'yes' if the answer responds to what was asked (even partially, or by saying precisely what "
    "is and is not known); answer 'no' if it is off topic, empty, a refusal or a generic statement."
)


@dataclass
class JudgedAnswer:
    """The judge's verdicts on one answer (``None``: not computed or no verdict)."""

    faithfulness: float | None = None
    citation_correctness: float | None = None
    answer_relevance: float | None = None
    sentences: int = 0
    pairs: int = 0
    calls: int = 0
    errors: int = 0
    rationales: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "faithfulness": self.faithfulness,
            "citation_correctness": self.citation_correctness,
            "answer_relevance": self.answer_relevance,
            "sentences": self.sentences,
            "pairs": self.pairs,
            "calls": self.calls,
            "errors": self.errors,
        }


@contextmanager
def _provider_env(key: str, timeout_s: float) -> Iterator[None]:
    """MLflow's OpenAI provider insists on ``OPENAI_API_KEY`` being set, reads its HTTP timeout from
    ``MLFLOW_GATEWAY_ROUTE_TIMEOUT_SECONDS`` and fetches a model catalog from GitHub unless
    ``MLFLOW_MODEL_CATALOG_URI`` is empty (an offline machine would wait on its retries); these are set for
    the duration of the judge calls (the key itself is sent as the bearer token in the request headers) and
    restored afterwards."""
    names = ("OPENAI_API_KEY", "MLFLOW_GATEWAY_ROUTE_TIMEOUT_SECONDS", "MLFLOW_MODEL_CATALOG_URI")
    saved = {k: os.environ.get(k) for k in names}
    os.environ["OPENAI_API_KEY"] = key or "no-key"
    os.environ["MLFLOW_GATEWAY_ROUTE_TIMEOUT_SECONDS"] = str(int(max(1, round(timeout_s))))
    os.environ.setdefault("MLFLOW_MODEL_CATALOG_URI", "")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class AnswerJudge:
    """Judges answers with an OpenAI-compatible model (``eval.judge``) through ``mlflow.genai.judges``."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        self.endpoint = spec.base_url.rstrip("/") + "/chat/completions"
        self._key = os.environ.get(spec.api_key_env, "") if spec.api_key_env else ""
        if spec.api_key_env and not self._key:
            raise EvalError(
                f"eval.judge.api_key_env names {spec.api_key_env}, which is not set",
                hint=f"export {spec.api_key_env}=..., or set eval.judge.api_key_env=null for an endpoint without keys",
            )
        self._judges: dict[str, Any] = {}
        self._checked = False

    def profile(self) -> dict[str, Any]:
        """The judge as the routing policy sees a generator profile."""
        s = self.spec
        return {"name": "judge", "locality": s.locality, "provider": s.provider, "region": s.region}

    def _judge(self, name: str) -> Any:
        if name not in self._judges:
            from typing import Literal

            from mlflow.genai.judges import make_judge

            self._judges[name] = make_judge(
                name=name,
                instructions=SUPPORT if name == "support" else RELEVANCE,
                model=f"openai:/{self.spec.model}",
                feedback_value_type=Literal["yes", "no"],
                inference_params={"temperature": 0},
                base_url=self.endpoint,
                extra_headers={"Authorization": f"Bearer {self._key}"} if self._key else None,
            )
        return self._judges[name]

    def _reachable(self) -> None:
        """Fail at once when nothing listens at the endpoint (MLflow's judge client retries a refused connection
        ten times with backoff, minutes in all, which is right for a blip and wrong for a typo)."""
        import socket
        from urllib.parse import urlsplit

        if self._checked:
            return
        url = urlsplit(self.endpoint)
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            socket.create_connection((url.hostname or "", port), timeout=min(10.0, self.spec.timeout_s)).close()
        except OSError as exc:
            raise EvalError(
                f"the judge at {self.endpoint} cannot be reached: {exc.strerror or exc}",
                hint="check eval.judge.base_url (the API base, e.g. http://host:8000/v1) and that the server runs",
            ) from None
        self._checked = True

    def _ask(self, name: str, inputs: dict[str, Any], outputs: str, out: JudgedAnswer) -> bool | None:
        """One yes/no verdict; ``None`` when the judge's reply could not be used."""
        self._reachable()
        out.calls += 1
        try:
            with _provider_env(self._key, self.spec.timeout_s):
                fb = self._judge(name)(inputs=inputs, outputs=outputs)
        except Exception as exc:
            if "failed to parse response" in str(exc).lower():  # a reply that is not the requested verdict
                out.errors += 1
                return None
            # the endpoint itself failed: nothing further can be judged
            msg = str(exc).replace(self._key, "***") if self._key else str(exc)
            raise EvalError(
                f"the judge at {self.endpoint} failed: {type(exc).__name__}: {msg.splitlines()[0][:300]}",
                hint="check eval.judge.base_url / model and that the endpoint speaks the OpenAI chat API",
            ) from None
        value = str(getattr(fb, "value", "") or "").strip().lower()
        if getattr(fb, "error", None) is not None or value not in ("yes", "no"):
            out.errors += 1
            return None
        out.rationales.append({"judge": name, "value": value, "rationale": str(getattr(fb, "rationale", ""))[:500]})
        return value == "yes"

    def judge(self, question: str, answer: str, passages: list[str]) -> JudgedAnswer:
        """Judge one answer against the passages it was given (citation ``[n]`` = ``passages[n-1]``)."""
        from ragconf.components.citations import CITATION_RE, citation_numbers

        out = JudgedAnswer()
        wanted = set(self.spec.metrics)
        if wanted & {"faithfulness", "citation_correctness"}:
            supported_sentences = 0
            supported_pairs = 0
            judged_pairs = 0
            judged_sentences = 0
            for sent in [s for s in _SENT.split(answer or "") if CITATION_RE.sub("", s).strip()][
                : self.spec.max_sentences
            ]:
                nums = [n for n in citation_numbers(sent) if 1 <= n <= len(passages)]
                text = re.sub(r"\s+([.,;:!?])", r"\1", CITATION_RE.sub("", sent)).strip()
                verdicts: list[bool] = []
                for n in nums:
                    v = self._ask("support", {"passage": passages[n - 1]}, text, out)
                    if v is not None:
                        verdicts.append(v)
                out.pairs += len(nums)
                judged_pairs += len(verdicts)
                supported_pairs += sum(verdicts)
                if nums and not verdicts:
                    continue  # every verdict on this sentence failed: not judged
                judged_sentences += 1
                supported_sentences += any(verdicts)
            out.sentences = judged_sentences
            if "faithfulness" in wanted and judged_sentences:
                out.faithfulness = supported_sentences / judged_sentences
            elif "faithfulness" in wanted and not (answer or "").strip():
                out.faithfulness = 0.0
            if "citation_correctness" in wanted and judged_pairs:
                out.citation_correctness = supported_pairs / judged_pairs
            elif "citation_correctness" in wanted and not out.pairs:
                out.citation_correctness = 0.0  # no citation at all is not a correct citation
        if "answer_relevance" in wanted:
            v = self._ask("relevance", {"question": question}, answer or "", out)
            if v is not None:
                out.answer_relevance = 1.0 if v else 0.0
        return out
