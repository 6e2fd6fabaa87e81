"""Social Cross-Poster: one piece of content, reformatted per platform and published on each.

Seed §10A: "one post, every network". Stages: AI budget check → an agent (the durable agent
loop, ``run_agent``; offline provider by default) writes one version per platform → each
version checked and fixed deterministically here (``workflows.social_posts.fit_post``: length
limits, hashtags, link handling; every fix named) → published on every platform at once through
the ``publish_social_post`` tool; a platform that fails does not stop the others, and is retried
on its own (the activity's retries for a rate limit or an outage, then up to three rounds with a
timer between them; a permanent refusal such as duplicate content or invalid media fails it at
once) → usage rows and their Lago events. The result lists each platform: published (post id,
URL) or failed and why.

Workflow id: ``{tenant}:social-cross-post:{key}`` (default key: the day and a digest of the text,
so the same content is not cross-posted twice in a day).
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import date, datetime
from typing import Annotated, Literal

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    import msgspec
    from core.names import SLUG_PATTERN
    from workflows.agent_loop import AgentLoopInput, run_agent
    from workflows.capability import TENANT_PEOPLE, Capability
    from workflows.social_posts import (
        HASHTAG_PATTERN, PAGE_PATTERN, URL_PATTERN, FittedPost, Platform, PublishOutcome, draft_schema, fit_post,
        publish,
    )
    from workflows.stages import Stages
    from workflows.usage import account, check_ai_budget, report_usage

NAME = "social-cross-post"
AGENT = "social-writer"

Stage = Literal["started", "checking_budget", "writing", "checking_versions", "publishing", "recording_usage",
                "reporting_usage", "completed", "failed"]


class CrossPostInput(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)]
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=5000)]
    platforms: Annotated[list[Platform], msgspec.Meta(min_length=1, max_length=4)]
    link: Annotated[str, msgspec.Meta(pattern=URL_PATTERN, max_length=2000)] | None = None
    media_urls: Annotated[list[Annotated[str, msgspec.Meta(pattern=URL_PATTERN, max_length=2000)]],
                          msgspec.Meta(max_length=4)] = []
    hashtags: Annotated[list[Annotated[str, msgspec.Meta(pattern=HASHTAG_PATTERN)]], msgspec.Meta(max_length=10)] = []
    # The account or page posted as, per platform (default: the tenant's). In the sandbox,
    # "sandbox-rate-limit-N" and "sandbox-suspended" make a platform fail on purpose.
    pages: dict[Platform, Annotated[str, msgspec.Meta(pattern=PAGE_PATTERN)]] = {}
    # The business key of the workflow id (default: the day and a digest of the text).
    key: Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)] | None = None
    requested_by: str = "system"

    def __post_init__(self) -> None:
        if len(set(self.platforms)) != len(self.platforms):
            raise ValueError("platforms must not repeat a platform")
        if "instagram" in self.platforms and not self.media_urls:
            raise ValueError("media_urls: instagram posts need at least one image or video")
        extra = set(self.pages) - set(self.platforms)
        if extra:
            raise ValueError(f"pages names platforms not in platforms: {sorted(extra)}")


class PlatformPost(msgspec.Struct, frozen=True, kw_only=True):
    platform: str
    status: Literal["published", "failed"]
    text: str  # as checked and published
    link: str | None = None
    hashtags: list[str] = []
    fixes: list[str] = []  # what the deterministic check changed
    post_id: str | None = None
    url: str | None = None
    published_at: str | None = None
    error: str | None = None
    error_type: str | None = None
    rounds: int = 1


class CrossPostResult(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    status: Literal["published", "partial", "failed"]
    offline: bool
    posts: list[PlatformPost]
    published: list[str] = []
    failed: list[str] = []
    llm_calls: int = 0


class CrossPostProgress(msgspec.Struct, frozen=True, kw_only=True):
    stage: Stage
    steps_done: list[str]
    platforms: dict[str, str] = {}  # platform -> pending | published | failed
    updated_at: datetime | None = None


def default_key(inp: CrossPostInput) -> str:
    digest = hashlib.sha256(inp.text.encode()).hexdigest()[:10]
    return f"{date.today():%Y%m%d}-{digest}"


def writing_task(text: str, link: str | None, hashtags: list[str], platforms: list[str]) -> str:
    return (f"Rewrite this post for each of these social platforms: {', '.join(platforms)}. Keep its meaning; "
            "match each platform's tone (LinkedIn professional, X short and direct, Instagram visual, Facebook "
            "friendly). Suggest a few hashtags per platform. Limits: X 280 characters (a link counts 23), "
            "Instagram 2200 (no clickable links), LinkedIn 3000. "
            f"The post: {text}" + (f" The link: {link}" if link else "")
            + (f" Hashtags to use: {' '.join(hashtags)}" if hashtags else ""))[:19000]


class DraftVersion(msgspec.Struct, frozen=True, kw_only=True):
    text: Annotated[str, msgspec.Meta(min_length=1)]
    hashtags: list[str] = []


def versions_of(final: object, platforms: list[str]) -> dict[str, tuple[str, list[str]]]:
    """The agent's versions (text, hashtags) by platform; InvalidLLMOutput when it did not answer each."""
    try:
        got = msgspec.convert(final, dict[str, DraftVersion])
        return {p: (got[p].text, got[p].hashtags) for p in platforms}
    except (msgspec.ValidationError, KeyError) as exc:
        raise ApplicationError(f"the agent's versions do not match their schema: {exc}", type="InvalidLLMOutput",
                               non_retryable=True) from None


@workflow.defn(name="SocialCrossPost")
class SocialCrossPostWorkflow(Stages):
    def __init__(self) -> None:
        Stages.__init__(self)
        self._platforms: dict[str, str] = {}

    @workflow.run
    async def run(self, inp: CrossPostInput) -> CrossPostResult:
        return await self.failed_on_error(self._run(inp))

    async def _run(self, inp: CrossPostInput) -> CrossPostResult:
        platforms = list(inp.platforms)
        self._platforms = {p: "pending" for p in platforms}
        await self.stage("checking_budget")
        await check_ai_budget(inp.tenant_id)

        await self.stage("writing", "budget_checked")
        agent = await run_agent(AgentLoopInput(
            tenant_id=inp.tenant_id, agent=AGENT, output_schema=draft_schema(platforms), max_turns=3,
            system_prompt="You are a social media editor for small businesses.",
            task=writing_task(inp.text, inp.link, inp.hashtags, platforms),
        ))
        drafts = versions_of(agent.final, platforms)

        await self.stage("checking_versions", "written")
        fitted = {p: fit_post(p, drafts[p][0], link=inp.link, hashtags=[*inp.hashtags, *drafts[p][1]])
                  for p in platforms}

        await self.stage("publishing", "versions_checked")
        outcomes = await asyncio.gather(*(self._publish(inp, fitted[p]) for p in platforms))

        await self.stage("recording_usage", "published")
        usage_ids = await account(inp.tenant_id, AGENT, agent, "writing")
        await self.stage("reporting_usage", "usage_recorded")
        await report_usage(inp.tenant_id, usage_ids)
        posts = [_post(fitted[o.platform], o) for o in outcomes]
        published = [p.platform for p in posts if p.status == "published"]
        failed = [p.platform for p in posts if p.status == "failed"]
        self._enter("completed", "usage_reported")
        return CrossPostResult(
            tenant_id=inp.tenant_id, status="published" if not failed else "partial" if published else "failed",
            offline=agent.offline, posts=posts, published=published, failed=failed, llm_calls=len(agent.calls))

    async def _publish(self, inp: CrossPostInput, post: FittedPost) -> PublishOutcome:
        outcome = await publish(inp.tenant_id, post, step=f"publish:{post.platform}", media_urls=list(inp.media_urls),
                                page=inp.pages.get(post.platform))  # type: ignore[call-overload]
        self._platforms[post.platform] = outcome.status
        return outcome

    @workflow.query(name="progress")
    def progress(self) -> CrossPostProgress:
        return CrossPostProgress(stage=self._stage, steps_done=list(self._steps),  # type: ignore[arg-type]
                                 platforms=dict(self._platforms), updated_at=self._updated_at)


def _post(fitted: FittedPost, outcome: PublishOutcome) -> PlatformPost:
    return PlatformPost(platform=fitted.platform, status=outcome.status, text=fitted.text, link=fitted.link,
                        hashtags=fitted.hashtags, fixes=fitted.fixes, post_id=outcome.post_id, url=outcome.url,
                        published_at=outcome.published_at, error=outcome.error, error_type=outcome.error_type,
                        rounds=outcome.rounds)


CAPABILITY = Capability(
    name=NAME,
    workflow=SocialCrossPostWorkflow,
    input_type=CrossPostInput,
    business_key=lambda inp: inp.key or default_key(inp),
    tenant_in_input=lambda inp: inp.tenant_id,
    start_roles=TENANT_PEOPLE,
    cancel_roles=TENANT_PEOPLE,
    summary="Social Cross-Poster: one post rewritten per platform by an agent (Facebook, Instagram, LinkedIn, X), "
            "checked against each platform's rules, published everywhere at once; a platform that fails is "
            "retried on its own and the result says which failed and why.",
)
