"""What the content capabilities read from Postgres: a tenant's SEO content policy (its settings
of ``seo-content``), and the blog engine's topic plan (its settings of ``blog-engine``) with
the topics the tenant's posts already took (the ``seo-content`` reports, whose subject is the
topic's key).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Any

import asyncpg
import msgspec
from temporalio import activity

from activities.tenants import SettingsOf
from core.activity import Activities
from core.names import WORKFLOWS_QUEUE
from core.policies import DB

# The kind of the pipeline's reports (one per post: what was written, decided and published).
CONTENT_REPORT = "seo-content"
# A post that ended before writing because the tenant has no WordPress site: its topic is not taken.
NOT_CONNECTED_STATUS = "wordpress_not_connected"

Keyword = Annotated[str, msgspec.Meta(min_length=2, max_length=80)]


def topic_key(topic: str) -> str:
    """A topic as a slug (at most 63 characters): the subject of its report, so a topic is
    recognised again whatever its letter case, accents or punctuation."""
    text = unicodedata.normalize("NFKD", topic).encode("ascii", "ignore").decode().lower()
    slug = re.sub(r"[^a-z0-9]+", "-", text).strip("-")[:63].strip("-")
    return slug or "post"


class PlannedTopic(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One topic of a tenant's plan: what the post is about and the keywords it targets."""

    topic: Annotated[str, msgspec.Meta(min_length=3, max_length=200)]
    keywords: Annotated[list[Keyword], msgspec.Meta(min_length=1, max_length=10)]


class TenantRef(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str


class ContentPolicy(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    publish_delay_minutes: int  # an approved post without a chosen time publishes this long after
    categories: list[str] = []


class TopicPlan(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    topics: list[PlannedTopic]
    autopilot: bool = False
    audience: str | None = None
    tone: str | None = None
    used: list[str] = []  # topic keys of the tenant's earlier posts (their reports; not-connected ones aside)


class ContentActivities(Activities):
    task_queue = WORKFLOWS_QUEUE
    default_policy = DB

    def __init__(self, pool: asyncpg.Pool, pipeline: SettingsOf[Any], engine: SettingsOf[Any]) -> None:
        """``pipeline``, ``engine``: the settings of ``seo-content`` and ``blog-engine``
        (``CAPABILITY.settings_of`` of workflows/content_pipeline.py and workflows/blog_engine.py)."""
        self._pool = pool
        self._pipeline = pipeline
        self._engine = engine

    @activity.defn(name="content.policy")
    async def policy(self, req: TenantRef) -> ContentPolicy:
        s = await self._pipeline.read(self._pool, req.tenant_id)
        return ContentPolicy(tenant_id=req.tenant_id, publish_delay_minutes=int(s.publish_delay_minutes),
                             categories=list(s.categories))

    @activity.defn(name="content.topic_plan")
    async def topic_plan(self, req: TenantRef) -> TopicPlan:
        s = await self._engine.read(self._pool, req.tenant_id)
        used = await self._pool.fetch(
            """SELECT DISTINCT subject FROM reports WHERE tenant_id = $1 AND kind = $2
                 AND body ->> 'status' IS DISTINCT FROM $3 ORDER BY subject""",
            req.tenant_id, CONTENT_REPORT, NOT_CONNECTED_STATUS)
        return TopicPlan(tenant_id=req.tenant_id, topics=list(s.topics), autopilot=bool(s.autopilot),
                         audience=s.audience, tone=s.tone, used=[r["subject"] for r in used])
