"""SQLModel tables. Schema changes go through store/migrations.py, never create_all alone."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import Column, Index, LargeBinary, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class SchemaMigration(SQLModel, table=True):
    __tablename__ = "schema_migration"
    name: str = Field(primary_key=True)
    applied_at: datetime = Field(default_factory=utcnow)


class Run(SQLModel, table=True):
    """One command invocation: a vocabulary build, a tagging run, an evolution, a scoring."""

    __tablename__ = "run"
    id: str = Field(primary_key=True)
    kind: str = Field(index=True)
    status: str = Field(default="running", index=True)  # running|done|failed|budget|interrupted
    model: str = ""
    config_json: str = Field(default="{}", sa_column=Column(Text))  # config at start, no secrets
    inputs_json: str = Field(default="{}", sa_column=Column(Text))  # the graph's first input
    prompt_hashes_json: str = Field(default="{}", sa_column=Column(Text))
    metrics_json: str = Field(default="{}", sa_column=Column(Text))
    parent_run: str | None = Field(default=None, index=True)
    error: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    calls: int = 0  # LLM calls paid for (cache hits excluded)
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    # One process drives a run at a time: it holds the lease (host:pid:token) and renews it
    # while it runs; another may take it over once it has expired (a crashed owner).
    lease_owner: str | None = None
    lease_until: datetime | None = None


class LLMCall(SQLModel, table=True):
    """A log row for every gateway call, cached or not, failed or not."""

    __tablename__ = "llm_call"
    __table_args__ = (Index("ix_llm_call_run_node", "run_id", "node"),)
    id: int | None = Field(default=None, primary_key=True)
    run_id: str | None = None  # looked up through (run_id, node)
    node: str = ""
    model: str = ""
    cache_key: str = ""
    messages_json: str = Field(default="[]", sa_column=Column(Text))
    response_text: str | None = Field(default=None, sa_column=Column(Text))
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0
    cache_hit: bool = False
    attempts: int = 1  # transport attempts (retries) + re-asks
    reasks: int = 0
    error: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow)


class LLMCache(SQLModel, table=True):
    """Response cache: key = hash(model, messages, schema, params, sample index)."""

    __tablename__ = "llm_cache"
    key: str = Field(primary_key=True)
    model: str = ""
    response_json: str = Field(sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow)


class RunRecord(SQLModel, table=True):
    """Generic keyed output of a run (one row per item, per candidate, per version...).

    Pipelines write their results here (or in their own tables) with an idempotent upsert
    on (run_id, kind, key), so a node that is re-run after a crash never duplicates rows.
    """

    __tablename__ = "run_record"
    __table_args__ = (UniqueConstraint("run_id", "kind", "key", name="uq_run_record"),
                      Index("ix_run_record_work", "run_id", "kind", "state", "id"))
    id: int | None = Field(default=None, primary_key=True)
    run_id: str  # looked up through (run_id, kind, key) and (run_id, kind, state, id)
    kind: str
    key: str
    data_json: str = Field(sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow)
    # Work records of a batch stage (an item to tag, a document to score): pending, done or
    # failed, and how many times they were tried. The next wave is an indexed query on
    # (run_id, kind, state, id): its cost does not grow with what is done. NULL elsewhere.
    state: str | None = Field(default=None, max_length=8)
    attempts: int = 0
    result_json: str | None = Field(default=None, sa_column=Column(Text))  # what the stage made of it


class RunStat(SQLModel, table=True):
    """Counters of a run (items loaded, skipped per reason, answers, OOV...), incremented in
    the same transaction as the work they count, so they are exact after any crash."""

    __tablename__ = "run_stat"
    run_id: str = Field(primary_key=True)
    name: str = Field(primary_key=True)
    value: float = 0.0


class RunBlob(SQLModel, table=True):
    """A run's binary state that is not a record per key (a density sketch)."""

    __tablename__ = "run_blob"
    run_id: str = Field(primary_key=True)
    name: str = Field(primary_key=True)
    data: bytes = Field(sa_column=Column(LargeBinary))
    created_at: datetime = Field(default_factory=utcnow)
