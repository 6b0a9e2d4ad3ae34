"""Request bodies. Every model forbids unknown fields: a body that tries to name a user, an override, a policy
or a store is a 422, never silently ignored."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["AskBody", "ChatBody", "ChatMessage", "FeedbackBody", "RetrieveBody"]


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
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class ChatBody(_Body):
    """OpenAI chat completion request. The last user message is the question; ``model`` may name a generator
    profile (a preference the routing policy may overrule), anything else means the configured default.
    Sampling fields are accepted for compatibility and ignored; ``user`` and unknown fields are rejected."""

    model: str = "ragconf"
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int | None = Field(None, ge=1, le=1)
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None

    def question(self) -> str:
        for msg in reversed(self.messages):
            if msg.role != "user":
                continue
            if isinstance(msg.content, str):
                return msg.content
            if isinstance(msg.content, list):
                return " ".join(str(p.get("text", "")) for p in msg.content if p.get("type") == "text")
        return ""
