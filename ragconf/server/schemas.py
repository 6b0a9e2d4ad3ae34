"""Request bodies. Every model forbids unknown fields: a body that tries to name a user, an override, a policy
or a store is a 422, never silently ignored. The chat completion body also accepts OpenAI's documented request
fields (chat UIs send them) and ignores those ragconf cannot honour; none of them can set anything."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["IGNORED_CHAT_FIELDS", "AskBody", "ChatBody", "ChatMessage", "FeedbackBody", "RetrieveBody"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RetrieveBody(_Body):
    question: str = Field(min_length=1, description="The question (at most serve.max_question_chars characters).")
    top_k: int | None = Field(None, ge=1, description="Cap on retrieved documents (at most serve.max_top_k).")


class AskBody(RetrieveBody):
    profile: str | None = Field(None, description="Preferred generator profile; the routing policy decides.")
    stream: bool = Field(False, description="Stream Server-Sent Events: documents, delta..., final.")


class FeedbackBody(_Body):
    run_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$", description="The ask's run_id.")
    rating: int = Field(ge=-1, le=5, description="-1/1 (thumbs) or 1-5 (stars); 0 = neutral.")
    comment: str | None = Field(None, max_length=2000)


class ChatMessage(_Body):
    """An OpenAI chat message. ``role`` and ``content`` are read; the other documented message fields (an
    assistant's ``tool_calls``, ``refusal``, ``audio``, ``function_call``, a tool's ``tool_call_id``) are accepted
    so a client can send its history back, and ignored."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None
    audio: dict[str, Any] | None = None
    function_call: dict[str, Any] | None = None


#: OpenAI chat completion request fields that are accepted and ignored: ragconf's generator settings, routing
#: and output policy decide sampling, length, tools and format; nothing here reaches the pipeline, the
#: principal, the policies, the store or the tracked run.
IGNORED_CHAT_FIELDS = (
    "audio",
    "frequency_penalty",
    "function_call",
    "functions",
    "logit_bias",
    "logprobs",
    "max_completion_tokens",
    "max_tokens",
    "metadata",
    "modalities",
    "moderation",
    "parallel_tool_calls",
    "prediction",
    "presence_penalty",
    "prompt_cache_key",
    "prompt_cache_options",
    "prompt_cache_retention",
    "reasoning_effort",
    "response_format",
    "safety_identifier",
    "seed",
    "service_tier",
    "stop",
    "store",
    "temperature",
    "tool_choice",
    "tools",
    "top_logprobs",
    "top_p",
    "user",
    "verbosity",
    "web_search_options",
)


class ChatBody(_Body):
    """OpenAI chat completion request. Honoured: ``messages`` (the last user message is the question),
    ``model`` (names a generator profile: a preference the routing policy may overrule; anything else means the
    configured default), ``stream``, ``stream_options.include_usage`` and ``n`` (must be 1). OpenAI's other
    documented fields (:data:`IGNORED_CHAT_FIELDS`) are accepted with their documented types and ignored:
    ``user`` is the client's end-user label, never the principal, and ``store`` is OpenAI's boolean, not a
    ragconf store. Any other field (``user_id``, ``principal``, ``overrides``, ``policy``, ``profile``...) is
    rejected (422)."""

    model: str = "ragconf"
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    n: int | None = Field(None, ge=1, le=1)
    # accepted and ignored (IGNORED_CHAT_FIELDS)
    audio: dict[str, Any] | None = None
    frequency_penalty: float | None = None
    function_call: str | dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    max_completion_tokens: int | None = None
    max_tokens: int | None = None
    metadata: dict[str, str] | None = None
    modalities: list[str] | None = None
    moderation: dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    prediction: dict[str, Any] | None = None
    presence_penalty: float | None = None
    prompt_cache_key: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    prompt_cache_retention: str | None = None
    reasoning_effort: str | None = None
    response_format: dict[str, Any] | None = None
    safety_identifier: str | None = None
    seed: int | None = None
    service_tier: str | None = None
    stop: str | list[str] | None = None
    store: bool | None = None
    temperature: float | None = None
    tool_choice: str | dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    top_logprobs: int | None = None
    top_p: float | None = None
    user: str | None = None
    verbosity: str | None = None
    web_search_options: dict[str, Any] | None = None

    def question(self) -> str:
        for msg in reversed(self.messages):
            if msg.role != "user":
                continue
            if isinstance(msg.content, str):
                return msg.content
            if isinstance(msg.content, list):
                return " ".join(str(p.get("text", "")) for p in msg.content if p.get("type") == "text")
        return ""
