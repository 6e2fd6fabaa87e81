"""The Social Media Scheduling workflow's types (workflows/social_schedule.py): its input, its
updates' requests, its settings, what its queries and result show.

Kept apart from the workflow module and imported through the sandbox's pass-through: the
workflow sandbox's ``datetime`` is a restricted proxy msgspec cannot decode into, and these
types carry times (slots, readings).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from core.names import SLUG_PATTERN
from hitl.protocol import DecisionRecord
from workflows.social_posts import HASHTAG_PATTERN, PAGE_PATTERN, URL_PATTERN, Platform

MAX_SLOTS = 30
MAX_READINGS = 12  # engagement readings per post
SLOT_PATTERN = r"^[a-z0-9][a-z0-9-]{0,40}$"

Stage = Literal["started", "checking_budget", "drafting", "checking_versions", "recording_usage",
                "reporting_usage", "loading_settings", "awaiting_approval", "running", "storing_report",
                "completed", "failed"]
SlotStatus = Literal["drafting", "awaiting_approval", "scheduled", "publishing", "published", "partial", "failed",
                     "withdrawn", "rejected"]
Approval = Literal["approved", "not_needed", "rejected", "timed_out"]


class SlotInput(msgspec.Struct, frozen=True, kw_only=True):
    slot_id: Annotated[str, msgspec.Meta(pattern=SLOT_PATTERN)]
    at: datetime  # when it is published (a time already past: as soon as it is approved)
    platforms: Annotated[list[Platform], msgspec.Meta(min_length=1, max_length=4)]
    topic: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]  # what the post says (or its text)
    link: Annotated[str, msgspec.Meta(pattern=URL_PATTERN, max_length=2000)] | None = None
    media_urls: Annotated[list[Annotated[str, msgspec.Meta(pattern=URL_PATTERN, max_length=2000)]],
                          msgspec.Meta(max_length=4)] = []
    hashtags: Annotated[list[Annotated[str, msgspec.Meta(pattern=HASHTAG_PATTERN)]], msgspec.Meta(max_length=10)] = []

    def __post_init__(self) -> None:
        if self.at.tzinfo is None:
            raise ValueError("posts[].at needs a time zone (e.g. 2026-12-01T09:00:00Z)")
        if len(set(self.platforms)) != len(self.platforms):
            raise ValueError("posts[].platforms must not repeat a platform")
        if "instagram" in self.platforms and not self.media_urls:
            raise ValueError("posts[].media_urls: instagram posts need at least one image or video")


class CalendarInput(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)]
    key: Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)]  # the business key, e.g. "2026-w49"
    posts: Annotated[list[SlotInput], msgspec.Meta(min_length=1, max_length=MAX_SLOTS)]
    # The account or page posted as, per platform (sandbox: "sandbox-rate-limit-N", "sandbox-suspended").
    pages: dict[Platform, Annotated[str, msgspec.Meta(pattern=PAGE_PATTERN)]] = {}
    engagement_every_hours: Annotated[int, msgspec.Meta(ge=1, le=168)] = 6
    engagement_for_hours: Annotated[int, msgspec.Meta(ge=0, le=720)] = 48
    requested_by: str = "system"

    def __post_init__(self) -> None:
        if len({p.slot_id for p in self.posts}) != len(self.posts):
            raise ValueError("posts[].slot_id must be unique")
        if self.engagement_for_hours > self.engagement_every_hours * MAX_READINGS:
            raise ValueError(f"engagement_for_hours: at most {MAX_READINGS} readings "
                             f"(engagement_every_hours x {MAX_READINGS})")


class SocialCalendarSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A tenant's calendar policy (``GET/PUT /v1/tenants/{tenant}/settings/social-calendar``)."""

    # "always": the client approves each calendar in Pending Actions before anything is
    # published; "never": drafts are published at their slots without asking.
    approval_mode: Literal["always", "never"] = "always"


class RescheduleRequest(msgspec.Struct, frozen=True, kw_only=True):
    slot_id: Annotated[str, msgspec.Meta(pattern=SLOT_PATTERN)]
    at: datetime
    requested_by: str = "system"


class WithdrawRequest(msgspec.Struct, frozen=True, kw_only=True):
    slot_id: Annotated[str, msgspec.Meta(pattern=SLOT_PATTERN)]
    reason: Annotated[str, msgspec.Meta(max_length=500)] = ""
    requested_by: str = "system"


class Metrics(msgspec.Struct, frozen=True, kw_only=True):
    impressions: int
    likes: int
    comments: int
    shares: int
    clicks: int
    measured_at: datetime


class PostView(msgspec.Struct, frozen=True, kw_only=True):
    platform: str
    text: str
    link: str | None = None
    hashtags: list[str] = []
    fixes: list[str] = []
    status: Literal["pending", "published", "failed", "deleted"] = "pending"
    post_id: str | None = None
    url: str | None = None
    published_at: str | None = None
    error: str | None = None
    metrics: Metrics | None = None  # the last reading
    readings: int = 0
    engagement_done: bool = False  # polling ended (its period is over, or the post is gone)


class SlotView(msgspec.Struct, frozen=True, kw_only=True):
    slot_id: str
    at: datetime
    status: SlotStatus
    topic: str
    posts: list[PostView] = []
    withdrawn_reason: str | None = None


class CalendarProgress(msgspec.Struct, frozen=True, kw_only=True):
    stage: Stage
    steps_done: list[str]
    slots: list[SlotView] = []
    refused: list[str] = []  # signals that were refused, and why
    pending_request: str | None = None
    updated_at: datetime | None = None


class CalendarReport(msgspec.Struct, frozen=True, kw_only=True):
    """The stored report's body."""

    offline: bool
    approval: Approval
    slots: list[SlotView]
    totals: dict[str, int]  # impressions, likes, ... over every post's last reading


class CalendarResult(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    key: str
    approval: Approval
    offline: bool
    slots: list[SlotView]
    totals: dict[str, int] = {}
    report_id: int | None = None
    decisions: list[DecisionRecord] = []
    llm_calls: int = 0
