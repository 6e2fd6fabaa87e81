"""What the social capabilities share: the platforms' rules, the agent's draft schema, the
deterministic check of a draft, and publishing one post with its own retries.

An agent writes a version of a post per platform; :func:`fit_post` then makes each version
valid for its platform, deterministically (the agent is never trusted with the limits):

- hashtags normalised (``#word``: letters, digits, underscores), duplicates and ones already in
  the text dropped, at most the platform's count (X 2, LinkedIn and Facebook 5, Instagram 30);
- the link: X has no link field, so it goes into the text (and counts 23 characters, as X counts
  every URL); Facebook and LinkedIn take it as the post's link (a preview card), so it is taken
  out of the text; Instagram has no clickable links, so it is dropped and the fix says so;
- the length: over the platform's limit the text is cut at a word boundary with an ellipsis,
  keeping the link and the hashtags (hashtags dropped from the end when even they do not fit).

Each fix is named in the result, so the client sees what changed and why.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Literal

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import RetryState
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    import msgspec
    from activities.mcp.tools import PublishSocialPost
    from core.names import WEB_URL_PATTERN
    from core.activity import raise_if_cancelled
    from workflows.tools import call_tool

Platform = Literal["facebook", "instagram", "linkedin", "x"]
PLATFORMS: tuple[str, ...] = ("facebook", "instagram", "linkedin", "x")
TEXT_LIMITS = {"facebook": 63206, "instagram": 2200, "linkedin": 3000, "x": 280}
HASHTAG_LIMITS = {"facebook": 5, "instagram": 30, "linkedin": 5, "x": 2}
X_URL_LENGTH = 23
# Platforms whose post takes the link as its own field (a preview card), not in the text.
LINK_FIELD = frozenset({"facebook", "linkedin"})
PAGE_PATTERN = r"^[A-Za-z0-9_.-]{1,100}$"
URL_PATTERN = WEB_URL_PATTERN
HASHTAG_PATTERN = r"^#?[A-Za-z0-9_]{1,60}$"

_URL = re.compile(r"https?://\S+")
_TAG_CHARS = re.compile(r"[^A-Za-z0-9_]")
_HASHTAG = re.compile(r"(?<!\w)#(\w+)")

# Publishing: the activity retries a rate limit or an outage a few times (the tool's delay
# honoured), then the workflow waits and tries the platform again, alone, a bounded number of
# rounds; a permanent refusal (duplicate content, invalid media) fails the platform at once.
PUBLISH_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                            maximum_interval=timedelta(seconds=30), maximum_attempts=5)
PUBLISH_ROUNDS = 3
REPUBLISH_AFTER = (timedelta(minutes=5), timedelta(minutes=15))  # before round 2, round 3


class FittedPost(msgspec.Struct, frozen=True, kw_only=True):
    platform: str
    text: str  # what is published
    link: str | None = None  # sent as the post's link field (Facebook, LinkedIn)
    hashtags: list[str] = []
    length: int = 0  # as the platform counts it
    fixes: list[str] = []  # what the check changed, and why


class PublishOutcome(msgspec.Struct, frozen=True, kw_only=True):
    platform: str
    status: Literal["published", "failed"]
    post_id: str | None = None
    url: str | None = None
    published_at: str | None = None
    error: str | None = None  # why it failed (the platform's words)
    error_type: str | None = None
    rounds: int = 1  # publishing rounds tried (each with the activity's own retries)


def draft_schema(platforms: list[str]) -> dict[str, Any]:
    """The agent's answer: one version per platform (text and hashtags)."""
    version = {"type": "object", "properties": {
        "text": {"type": "string", "minLength": 1, "maxLength": 5000},
        "hashtags": {"type": "array", "items": {"type": "string", "maxLength": 60}, "maxItems": 10},
    }, "required": ["text", "hashtags"]}
    return {"type": "object", "properties": {p: version for p in platforms}, "required": list(platforms)}


def platform_length(platform: str, text: str) -> int:
    """The length the platform counts (X: every URL is 23 characters)."""
    if platform == "x":
        return len(_URL.sub("x" * X_URL_LENGTH, text))
    return len(text)


def normal_hashtag(tag: str) -> str | None:
    word = _TAG_CHARS.sub("", tag.lstrip("#"))[:60]
    return f"#{word}" if word and not word.isdigit() else None


def _cut(text: str, room: int) -> str:
    """``text`` in ``room`` characters, cut at a word boundary with an ellipsis."""
    if len(text) <= room:
        return text
    if room <= 1:
        return ""
    head = text[: room - 1]
    if " " in head and not text[room - 1].isspace():
        head = head[: head.rfind(" ")]
    return head.rstrip(" ,;:-") + "…"


def fit_post(platform: str, text: str, *, link: str | None = None, hashtags: Sequence[str] = ()) -> FittedPost:
    """The version made valid for its platform (see the module's docstring); deterministic."""
    fixes: list[str] = []
    body = " ".join(text.split())
    if link and link in body:
        # Taken out of the text: X gets it back at the end (kept when the text is cut).
        body = " ".join(body.replace(link, " ").split())
    if platform == "instagram" and _URL.search(body):
        body = " ".join(_URL.sub(" ", body).split())
        fixes.append("links removed from the caption: instagram captions have no clickable links")
    in_text = {t.lower() for t in _HASHTAG.findall(body) if not t.isdigit()}  # "#1" is no hashtag
    tags: list[str] = []
    for raw in hashtags:
        tag = normal_hashtag(raw)
        if tag is None:
            fixes.append(f"hashtag {raw!r} dropped: not a hashtag")
        elif tag[1:].lower() not in in_text and tag.lower() not in (t.lower() for t in tags):
            tags.append(tag)
    room_for_tags = max(HASHTAG_LIMITS[platform] - len(in_text), 0)
    if len(tags) > room_for_tags:
        fixes.append(f"{len(tags) - room_for_tags} hashtag(s) dropped: {platform} posts take at most "
                     f"{HASHTAG_LIMITS[platform]}")
        tags = tags[:room_for_tags]
    field_link: str | None = None
    text_link = ""
    if link:
        if platform in LINK_FIELD:
            field_link = link
        elif platform == "instagram":
            fixes.append("link dropped: instagram captions have no clickable links (put it in the bio)")
        else:
            text_link = link
    limit = TEXT_LIMITS[platform]

    def compose(b: str, t: list[str]) -> str:
        return " ".join(p for p in (b, text_link, " ".join(t)) if p)

    final = compose(body, tags)
    while platform_length(platform, final) > limit and tags and \
            platform_length(platform, compose("", tags)) + 2 > limit // 2:
        tags = tags[:-1]  # hashtags alone would crowd out the text
    final = compose(body, tags)
    if platform_length(platform, final) > limit:
        suffix = platform_length(platform, compose("", tags))
        room = limit - suffix - (1 if suffix else 0)
        cut = _cut(body, room)
        fixes.append(f"text cut at a word boundary to fit {platform}'s {limit} characters")
        final = compose(cut, tags)
    return FittedPost(platform=platform, text=final, link=field_link, hashtags=tags,
                      length=platform_length(platform, final), fixes=fixes)


def _failure(err: ActivityError) -> tuple[str, str, bool]:
    """(why, error type, permanent) of a publish that failed."""
    cause = err.cause
    kind = cause.type if isinstance(cause, ApplicationError) and cause.type else "Error"
    why = cause.message if isinstance(cause, ApplicationError) else str(cause or err)
    permanent = err.retry_state == RetryState.NON_RETRYABLE_FAILURE or (
        isinstance(cause, ApplicationError) and cause.non_retryable)
    return why, kind, permanent


async def publish(tenant_id: str, post: FittedPost, *, step: str, media_urls: list[str],
                  page: str | None) -> PublishOutcome:
    """Publish one fitted post with its own retries (module docstring); never raises for the
    platform's refusal: the outcome says why. The idempotency key (``step``) is the same in
    every round, so a round after an unclear failure never posts twice."""
    for round_ in range(1, PUBLISH_ROUNDS + 1):
        try:
            done = await call_tool(tenant_id, PublishSocialPost(
                platform=post.platform, text=post.text, link=post.link,  # type: ignore[arg-type]
                media_urls=media_urls, page=page), step=step, retry_policy=PUBLISH_RETRY)
        except ActivityError as err:
            raise_if_cancelled(err)
            why, kind, permanent = _failure(err)
            if permanent or round_ == PUBLISH_ROUNDS:
                return PublishOutcome(platform=post.platform, status="failed", error=why, error_type=kind,
                                      rounds=round_)
            await workflow.sleep(REPUBLISH_AFTER[round_ - 1])
            continue
        return PublishOutcome(platform=post.platform, status="published", post_id=done.post_id, url=done.url,
                              published_at=done.published_at, rounds=round_)
    raise AssertionError("unreachable")
