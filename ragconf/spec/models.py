"""Pydantic v2 models of a composed ragconf config. Extra keys are forbidden everywhere."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from ragconf.types import CLASSIFICATIONS

__all__ = [
    "AccessMappingSpec",
    "AuditSpec",
    "CacheSpec",
    "ChunkingSpec",
    "ComponentSpec",
    "ConnectionSpec",
    "CorpusSpec",
    "ElasticsearchStoreSpec",
    "EmbedderSpec",
    "EvalSpec",
    "FailedAttemptsSpec",
    "GeneratorSpec",
    "IdentitySpec",
    "IndexingSpec",
    "JudgeSpec",
    "MetricsSpec",
    "PipelineSpec",
    "PolicySpec",
    "ProjectSpec",
    "RagconfSpec",
    "RoutingSpec",
    "ServeSpec",
    "SourceSpec",
    "SqliteStoreSpec",
    "StageSpec",
    "StoreSpec",
    "TrackingSpec",
    "UserSpec",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class ProjectSpec(_Strict):
    name: str = "ragconf"
    #: Where ragconf keeps state (store, audit log, MLflow store), relative to the current directory.
    workdir: str = ".ragconf"


class SourceSpec(_Strict):
    type: Literal["files", "beir"]
    path: str
    include: list[str] = Field(default_factory=lambda: ["**/*.md", "**/*.txt", "**/*.html", "**/*.htm", "**/*.pdf"])
    exclude: list[str] = Field(default_factory=list)


class ChunkingSpec(_Strict):
    strategy: Literal["markdown", "recursive", "none"] = "recursive"
    #: Chunk size in words.
    size: int = Field(200, gt=0)
    #: Overlap between consecutive chunks, in words.
    overlap: int = Field(40, ge=0)

    @model_validator(mode="after")
    def _overlap_below_size(self) -> ChunkingSpec:
        if self.overlap >= self.size:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than size ({self.size})")
        return self


class AccessMappingSpec(_Strict):
    """Where each access field comes from and what a document without access metadata gets (docs/ingest.md).

    Access values are validated with one strict schema (``ragconf.access``) before anything is written."""

    #: Source metadata key of each access field (null: the corpus has no such field; a document that sets it
    #: anyway is rejected). A dotted key reads a nested mapping (``access.groups``).
    acl_groups: str | None = "acl_groups"
    tenant: str | None = "tenant"
    classification: str | None = "classification"
    #: Further metadata fields that are access attributes: validated like access fields (a non-empty string or
    #: a list of them), never flattened, and shown to the access policy as ``document.meta.<name>``.
    attributes: list[str] = Field(default_factory=list)
    #: Source values mapped onto classification levels, e.g. {Confidential: confidential, secret: restricted}.
    #: Any other value that is not exactly a level is rejected (no case folding).
    classification_map: dict[str, str] = Field(default_factory=dict)
    #: Values a document gets for the access fields it lacks, e.g. {classification: internal, tenant: acme}.
    defaults: dict[str, Any] = Field(default_factory=dict)
    #: A document with no access field at all, when no defaults are declared: ``quarantine`` (not indexed,
    #: reported) or ``public`` (indexed without access fields: visible to every user of every tenant).
    unlabeled: Literal["quarantine", "public"] = "quarantine"

    @field_validator("classification_map")
    @classmethod
    def _known_levels(cls, v: dict[str, str]) -> dict[str, str]:
        for key, level in v.items():
            if level not in CLASSIFICATIONS:
                raise ValueError(f"'{key}' maps to '{level}', which is not one of {', '.join(CLASSIFICATIONS)}")
        return v

    @field_validator("attributes")
    @classmethod
    def _attribute_names(cls, v: list[str]) -> list[str]:
        from ragconf.access import ACCESS_FIELDS

        for name in v:
            if not name or name in ACCESS_FIELDS or "." in name:
                raise ValueError(
                    f"'{name}' cannot be an access attribute (a plain key, not {', '.join(ACCESS_FIELDS)})"
                )
        return v

    @model_validator(mode="after")
    def _valid_defaults(self) -> AccessMappingSpec:
        from ragconf.access import ACCESS_FIELDS, AccessValueError, validate_field

        allowed = (*ACCESS_FIELDS, *self.attributes)
        for key, value in list(self.defaults.items()):
            if key not in allowed:
                raise ValueError(f"defaults: unknown access field '{key}'; valid: {', '.join(sorted(allowed))}")
            try:
                self.defaults[key] = validate_field(key, value, classification_map=self.classification_map)
            except AccessValueError as exc:
                raise ValueError(f"defaults: {exc}") from None
        return self


class IndexingSpec(_Strict):
    """The corpus's indexing pipeline (docs/ingest.md), declared like a query stage: components by registry alias
    or allowed Haystack class path, params, connections, inputs and the output (chunks). ragconf reads the sources
    and validates access metadata before it; its writer re-checks every chunk's access fields after it."""

    name: str = "indexing"
    components: dict[str, ComponentSpec] = Field(min_length=1)
    connections: list[ConnectionSpec] = Field(default_factory=list)
    #: `documents` / `sources` (every document) or `<format>_documents` / `<format>_sources` (format: markdown,
    #: text, html, pdf, beir), each to a list of "component.socket".
    inputs: dict[str, list[str]] = Field(min_length=1)
    #: "component.socket" producing the chunks (a list of Documents) that ragconf's writer checks and stores.
    output: str


class CorpusSpec(_Strict):
    name: str
    #: Convenience root for single-source corpora (e.g. `corpus=beir corpus.path=DIR`).
    path: str | None = None
    sources: list[SourceSpec] = Field(min_length=1)
    access: AccessMappingSpec = Field(default_factory=AccessMappingSpec)
    chunking: ChunkingSpec = Field(default_factory=ChunkingSpec)
    #: The indexing pipeline; null: ragconf's default (the `chunking` chunker, then the configured embedder).
    indexing: IndexingSpec | None = None


class SqliteStoreSpec(_Strict):
    """The embedded store: one SQLite file (WAL) with FTS5 BM25 and in-memory dense vectors."""

    type: Literal["sqlite"] = "sqlite"
    #: The database file (created with its folder, private to the user).
    path: str | None = None
    #: Approximate dense search (usearch HNSW, ``pip install 'ragconf[ann]'``): ``mode`` auto|on|off, ``min_rows``,
    #: ``exact_below`` (filter fraction searched exactly), ``exact_rows``, ``candidates``, ``dtype`` i8 (default)
    #: |f16|f32, ``filter_cache_mb`` (contiguous copies of filters' allowed vectors, 256), ... (see
    #: ``ragconf.store.ann.AnnOptions``; checked when the store opens).
    ann: dict[str, Any] | None = None
    #: Index files next to the store (``<path>.idx/``): the BM25 index, vectors and HNSW graph of the latest
    #: write, so a new process loads them instead of rebuilding (``enabled`` true|false, ``min_rows`` 20000).
    index_files: dict[str, Any] | bool | None = None


class ElasticsearchStoreSpec(_Strict):
    """Elasticsearch through elasticsearch-haystack (``pip install 'ragconf[elasticsearch]'``)."""

    type: Literal["elasticsearch"]
    hosts: str = "http://localhost:9200"
    index: str = "ragconf"
    #: Environment variable holding the API key (null: no authentication).
    api_key_env: str | None = None


def _store_type(value: Any) -> Any:
    if isinstance(value, dict):
        return value.get("type", "sqlite")  # a store without `type` is the embedded one, as before
    return getattr(value, "type", None)


#: The `store` group: one spec per store type, chosen by `type` (default sqlite); a key of another store type
#: is an error naming the valid keys.
StoreSpec = Annotated[
    Annotated[SqliteStoreSpec, Tag("sqlite")] | Annotated[ElasticsearchStoreSpec, Tag("elasticsearch")],
    Discriminator(_store_type),
]


class EmbedderSpec(_Strict):
    model: str = "minilm-int8"
    batch_size: int = Field(32, gt=0)
    max_length: int = Field(256, gt=0, le=512)
    threads: int | None = Field(None, gt=0)
    #: Query embeddings kept per process (LRU, keyed by the query text; 0: off). An embedding depends only on
    #: the text and the model, never on who asks.
    query_cache: int = Field(1024, ge=0)


class CacheSpec(_Strict):
    """Retrieval results kept per process (LRU). Keyed by the question, ``top_k``, the whole principal as the
    policy sees it (id, groups, tenant, clearance, attributes), the index version (bumped by every write) and
    the policy bundle revision: an entry never serves another user, an older index or an older policy. A hit
    still evaluates the access filter and re-checks every cached document with the current policy (both
    audited); only the retrievers and the fusion are skipped. Stores without an index version
    (Elasticsearch) are not cached."""

    #: Entries (0: off).
    retrieval: int = Field(256, ge=0)
    #: Answers kept per process (LRU; 0, the default: off, every ask generates). Keyed by the question, the
    #: generator profile the routing policy chose, the output rules and the exact passages the generator would
    #: get (ids and text, after the access guard): an answer is reused only for the very same inputs, which
    #: the asking user is allowed to see, so it can be shared between users without crossing rights. A hit
    #: skips generation only; retrieval, routing and output decisions are made (and audited) as usual.
    answers: int = Field(0, ge=0)


class ComponentSpec(_Strict):
    #: A registry alias (see `ragconf components`), or a Haystack class path from the allowlist.
    type: str
    params: dict[str, Any] = Field(default_factory=dict)


class ConnectionSpec(_Strict):
    sender: str
    receiver: str


class StageSpec(_Strict):
    name: str
    components: dict[str, ComponentSpec] = Field(min_length=1)
    connections: list[ConnectionSpec] = Field(default_factory=list)
    #: Stage inputs fed by the runtime, each to a list of "component.socket".
    inputs: dict[str, list[str]] = Field(default_factory=dict)
    #: "component.socket" that produces the stage's result.
    output: str


class PipelineSpec(StageSpec):
    """The retrieval stage. ragconf appends an access guard after `output` and feeds the access filter to
    every retriever."""


class GeneratorSpec(StageSpec):
    """The generation stage (a routing profile): inputs `query` and `documents`, output replies."""

    locality: Literal["local", "remote"] = "local"
    provider: str | None = None
    region: str | None = None


class UserSpec(_Strict):
    groups: list[str] = Field(default_factory=list)
    tenant: str | None = None
    clearance: Literal["public", "internal", "confidential", "restricted"] = "public"
    attributes: dict[str, Any] = Field(default_factory=dict)


class IdentitySpec(_Strict):
    #: A folder of YAML files, one per user (file stem = user id) or a users.yaml mapping id -> user.
    users_dir: str | None = None
    users: dict[str, UserSpec] = Field(default_factory=dict)
    default_user: str | None = None


class AuditSpec(_Strict):
    sink: Literal["file", "none"] = "file"
    path: str | None = None
    #: Rotate the audit file when a line would take it past this size (0: never rotate).
    max_bytes: int = Field(default=10_000_000, ge=0, le=2**40)
    #: Rotated files kept (audit.jsonl.1 newest ... audit.jsonl.<keep> oldest); `ragconf audit` reads them all.
    keep: int = Field(default=5, ge=1, le=1000)


class PolicySpec(_Strict):
    engine: Literal["embedded", "opa"] = "embedded"
    bundle: str = "policies"
    url: str | None = None
    token_env: str | None = None
    audit: AuditSpec = Field(default_factory=AuditSpec)


class RoutingSpec(_Strict):
    #: Generator options (configs/generator/<name>.yaml) the routing policy may choose from, besides the
    #: configured `generator`.
    profiles: list[str] = Field(default_factory=list)


class TrackingSpec(_Strict):
    enabled: bool = True
    uri: str | None = None
    experiment: str = "ragconf"
    log_asks: bool = True
    #: What MLflow traces capture: `ids` (document and decision ids, sizes, timings), `redacted` (plus the
    #: question and answer with PII redacted) or `full` (plus the raw text, only when the output policy does not
    #: require redaction for that request; otherwise redacted). docs/tracking.md
    trace_content: Literal["ids", "redacted", "full"] = "ids"
    #: Who writes ask/retrieve runs to MLflow: `thread` (a background thread of the asking process), `process`
    #: (the process hands each run, as a 0600 file, to the spool writer process on another core: MLflow's
    #: Python costs ~150 ms of CPU per run, which would otherwise hold the server's interpreter lock), or `auto`
    #: (`process` for `ragconf serve` and the CLI, `thread` for Python callers). docs/tracking.md
    ask_writer: Literal["auto", "thread", "process"] = "auto"


JudgeMetric = Literal["faithfulness", "citation_correctness", "answer_relevance"]
JUDGE_METRICS: tuple[JudgeMetric, ...] = ("faithfulness", "citation_correctness", "answer_relevance")


class JudgeSpec(_Strict):
    """An OpenAI-compatible judge model for answer metrics (MLflow GenAI judges), configured like the generator.

    The judge sees the question, the answer and the passages the answer cites, so it is routed by the routing
    policy like a generator profile: answers built on confidential or restricted passages are judged only by a
    ``locality: local`` judge (the others are counted as ``judge_skipped_by_policy``)."""

    #: Model name sent to the endpoint.
    model: str = Field(min_length=1)
    #: API base of the OpenAI-compatible endpoint (``.../v1``); ``/chat/completions`` is appended.
    base_url: str = Field(min_length=1, pattern=r"^https?://")
    #: Environment variable holding the API key (sent as a bearer token); null for an endpoint without keys.
    api_key_env: str | None = "OPENAI_API_KEY"
    #: How the routing policy sees the judge (like a generator profile's locality/provider/region).
    locality: Literal["local", "remote"] = "remote"
    provider: str = "openai"
    region: str | None = None
    #: Seconds per judge call.
    timeout_s: float = Field(60.0, gt=0)
    #: Answer sentences judged per answer (the rest are not judged; bounds the calls).
    max_sentences: int = Field(20, gt=0)
    #: Which judged metrics to compute.
    metrics: list[JudgeMetric] = Field(default_factory=lambda: list(JUDGE_METRICS), min_length=1)


class EvalSpec(_Strict):
    name: str = "none"
    path: str | None = None
    split: str = "test"
    user: str | None = None
    answers: str | None = None
    #: null: the pipeline's own top_k (what users get). A number overrides the top_k of the pipeline's output
    #: component for the evaluation (warned and tagged on the run).
    top_k: int | None = Field(None, gt=0)
    max_queries: int | None = Field(None, gt=0)
    gates: list[str] = Field(default_factory=list)
    personas: list[str] = Field(default_factory=list)
    #: Ground truth of what each persona must never see (JSONL: {"user", "doc_ids", "canaries"}), independent of
    #: the policy; `leakage` counts retrieved/cited forbidden documents and canary strings in answers.
    forbidden: str | None = None
    #: Judged answer metrics through an OpenAI-compatible judge model (null: only the offline lexical metrics).
    judge: JudgeSpec | None = None


class ApiKeySpec(_Strict):
    """One API key of `ragconf serve`, stored as the sha256 hex digest of the key (never the key itself)."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    #: The identity-directory user id the key authenticates as.
    user: str
    name: str | None = None


class JwtSpec(_Strict):
    """JWT bearer tokens: HS256 with a secret from an environment variable, or RS256 with a PEM public key or
    a JWKS file. Tokens must carry `exp` and the user claim; `alg: none` and other algorithms are rejected."""

    algorithm: Literal["HS256", "RS256"] = "HS256"
    #: Environment variable holding the HS256 secret.
    secret_env: str | None = None
    public_key_file: str | None = None
    jwks_file: str | None = None
    issuer: str | None = None
    audience: str | None = None
    #: Claim holding the identity-directory user id.
    user_claim: str = "sub"
    #: Principal field -> token claim (fields: groups, tenant, clearance). Used only when `claims_win`.
    claims: dict[str, str] = Field(default_factory=dict)
    #: False (default): the directory entry decides groups/tenant/clearance and mapped claims are ignored.
    #: True: mapped claims present in the token replace the directory's values (the user must still exist).
    claims_win: bool = False
    leeway_s: int = Field(0, ge=0)

    @field_validator("claims")
    @classmethod
    def _known_fields(cls, v: dict[str, str]) -> dict[str, str]:
        allowed = {"groups", "tenant", "clearance"}
        for key in v:
            if key not in allowed:
                raise ValueError(f"unknown principal field '{key}'; valid: {', '.join(sorted(allowed))}")
        return v

    @property
    def enabled(self) -> bool:
        return bool(self.secret_env or self.public_key_file or self.jwks_file)


class FailedAttemptsSpec(_Strict):
    """A brake on guessing keys and tokens: failed authentications (401 for credentials that were sent) per
    client address, in a sliding window kept in each process. Past `limit` failures within `window_s` the client
    gets 429 with `Retry-After` before any credential it sends is checked, until the oldest failure leaves the
    window."""

    #: Failed authentications a client address may make within `window_s`; 0 = no limit.
    limit: int = Field(20, ge=0)
    window_s: float = Field(60.0, gt=0)
    #: Client addresses tracked at most (memory bound); the least recently failing one is forgotten first.
    max_clients: int = Field(10000, gt=0)


class AuthSpec(_Strict):
    api_keys: list[ApiKeySpec] = Field(default_factory=list)
    #: A YAML file with more keys: a list of {sha256, user, name} (keeps digests out of the config).
    api_keys_file: str | None = None
    jwt: JwtSpec = Field(default_factory=JwtSpec)
    #: Users whose directory entry lists this role in `attributes.roles` may call /v1/admin/*.
    admin_role: str = "admin"
    failed_attempts: FailedAttemptsSpec = Field(default_factory=FailedAttemptsSpec)


class MetricsSpec(_Strict):
    """`GET /metrics` (Prometheus)."""

    #: True: a scrape needs the credentials of a user with `role` or the admin role (401/403 otherwise).
    #: False: anyone may scrape (restrict /metrics at the proxy or network instead).
    auth: bool = True
    #: The role (in the directory entry's `attributes.roles`) that may scrape without being an admin.
    role: str = "metrics"


class ServeSpec(_Strict):
    """`ragconf serve`: fixed at start; no request can change it."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    #: Processes (uvicorn workers), each with its own app, store connections and thread pool; `--workers`.
    workers: int = Field(1, gt=0)
    #: Threads per process that run retrievals and asks (a slow generator holds one of them).
    threads: int = Field(4, gt=0)
    #: Requests waiting for a worker beyond which the server answers 503.
    max_queue: int = Field(64, ge=0)
    request_timeout_s: float = Field(60.0, gt=0)
    #: Seconds an idle keep-alive connection stays open. Longer than the idle expiry of client pools (httpx and
    #: the openai SDK: 5 s) so the server never closes a connection a client is about to reuse.
    keep_alive_s: float = Field(75.0, gt=0)
    max_body_bytes: int = Field(65536, gt=0)
    max_question_chars: int = Field(2000, gt=0)
    max_top_k: int = Field(100, gt=0)
    #: Requests per minute per authenticated user and process (429 beyond); 0 = no limit.
    rate_limit_per_minute: int = Field(0, ge=0)
    auth: AuthSpec = Field(default_factory=AuthSpec)
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)


class RagconfSpec(_Strict):
    project: ProjectSpec = Field(default_factory=ProjectSpec)
    corpus: CorpusSpec
    store: StoreSpec = Field(default_factory=SqliteStoreSpec)
    embedder: EmbedderSpec = Field(default_factory=EmbedderSpec)
    pipeline: PipelineSpec
    generator: GeneratorSpec
    identity: IdentitySpec = Field(default_factory=IdentitySpec)
    policy: PolicySpec = Field(default_factory=PolicySpec)
    routing: RoutingSpec = Field(default_factory=RoutingSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    serve: ServeSpec = Field(default_factory=ServeSpec)
    cache: CacheSpec = Field(default_factory=CacheSpec)
