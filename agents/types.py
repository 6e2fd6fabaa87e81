"""The payloads of the agents: what workflows send to agent activities and get back.

Agents (crews, the tool agent) and the activities that run them both speak these types, and
workflow code imports them without CrewAI or LangChain: they depend on msgspec alone.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

Severity = Literal["low", "medium", "high"]


class PageSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    status: int
    title: str | None = None
    description: str | None = None
    headings: list[str] = []
    links: list[str] = []
    word_count: int = 0
    load_ms: float = 0.0


class Finding(msgspec.Struct, frozen=True, kw_only=True):
    area: str
    severity: Severity
    detail: str


class AreaAudit(msgspec.Struct, frozen=True, kw_only=True):
    score: Annotated[int, msgspec.Meta(ge=0, le=100)]
    findings: list[Finding]
    recommendations: list[str]


class CrewReport(msgspec.Struct, frozen=True, kw_only=True):
    summary: str
    overall_score: Annotated[int, msgspec.Meta(ge=0, le=100)]
    technical: AreaAudit
    seo: AreaAudit
    social: AreaAudit
    top_recommendations: list[str]


class CrewRequest(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    workflow_id: str
    website_url: str
    social_handles: dict[str, str]
    pages: list[PageSnapshot]


class LlmCall(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    tokens_in: int
    tokens_out: int


class CrewOutcome(msgspec.Struct, frozen=True, kw_only=True):
    report: CrewReport
    offline: bool
    provider: str
    calls: list[LlmCall]
    # True: the activity recorded each call as it returned (``usage_ids``); the workflow only
    # reports them. False (results of older agent workers): the workflow records ``calls``.
    usage_per_call: bool = False
    usage_ids: list[int] = []



class AdCopy(msgspec.Struct, frozen=True, kw_only=True):
    headline: str
    body: str
    call_to_action: str
    asset_brief: str


class CreativeRequest(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    workflow_id: str
    goal: str
    objective: str
    channels: list[str]
    strategy: dict[str, Any]
    feedback: list[str] = []  # the client's change requests so far, oldest first


class CreativeOutcome(msgspec.Struct, frozen=True, kw_only=True):
    ads: dict[str, AdCopy]  # by channel
    summary: str
    offline: bool
    provider: str
    calls: list[LlmCall]
    usage_per_call: bool = False  # as CrewOutcome
    usage_ids: list[int] = []


INVALID_OUTPUT = "InvalidLLMOutput"
INVALID_REQUEST = "InvalidAgentStep"


# --- the tool agent's step ------------------------------------------------------------------
# No msgspec.Meta constraints on activity inputs: the activity checks them and fails
# non-retryably instead of failing to decode (which Temporal would retry).

class ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str  # the function name the model used
    server: str  # "" when the name matches no tool the agent was given
    tool: str
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)


class Message(msgspec.Struct, frozen=True, kw_only=True):
    role: str  # user | assistant | tool
    content: str = ""
    tool_calls: list[ToolCall] = msgspec.field(default_factory=list)
    tool_call_id: str | None = None
    is_error: bool = False  # a tool message reporting an error to the model


class AgentTool(msgspec.Struct, frozen=True, kw_only=True):
    server: str
    name: str
    description: str = ""
    input_schema: dict[str, Any] = msgspec.field(default_factory=dict)


class LlmStepRequest(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    agent: str
    task: str
    system_prompt: str = ""
    transcript: list[Message] = msgspec.field(default_factory=list)
    tools: list[AgentTool] = msgspec.field(default_factory=list)
    output_schema: dict[str, Any] | None = None


class LlmStepResult(msgspec.Struct, frozen=True, kw_only=True):
    tool_calls: list[ToolCall] = msgspec.field(default_factory=list)
    final: dict[str, Any] | None = None  # the answer, valid against the output schema
    text: str = ""  # what the model said alongside
    calls: list[LlmCall] = msgspec.field(default_factory=list)  # one per request to the model
    provider: str = "offline"
    offline: bool = True
    # True: each call was recorded as it returned (``usage_ids``), the loop only passes them on.
    usage_per_call: bool = False
    usage_ids: list[int] = msgspec.field(default_factory=list)


# --- the SEO content crew -------------------------------------------------------------------

class SourcePage(msgspec.Struct, frozen=True, kw_only=True):
    """A page the researcher read (the tenant's own, or a source), as the fetch tool saw it."""

    url: str
    title: str | None = None
    description: str | None = None
    headings: list[str] = []


class ContentRequest(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    workflow_id: str
    topic: str
    keywords: list[str]
    audience: str | None = None
    tone: str | None = None
    site_pages: list[SourcePage] = []  # the tenant's pages: candidates for internal links
    sources: list[SourcePage] = []  # other pages the researcher reads
    feedback: list[str] = []  # the client's change requests so far, oldest first
    round: int = 1
    site_categories: list[str] = []  # the categories of the tenant's WordPress, to choose from


class PostSection(msgspec.Struct, frozen=True, kw_only=True):
    heading: str
    paragraphs: list[str]


class PostLink(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    anchor: str


class ContentDraft(msgspec.Struct, frozen=True, kw_only=True):
    """The editor's post, in parts: the workflow assembles the HTML and checks the links."""

    title: str
    slug: str
    meta_description: str
    outline: list[str]
    intro: str
    sections: list[PostSection]
    conclusion: str
    internal_links: list[PostLink] = []
    research_notes: list[str] = []
    editor_notes: str = ""
    categories: list[str] = []  # chosen among the site's categories (the workflow keeps only those)


class ContentOutcome(msgspec.Struct, frozen=True, kw_only=True):
    draft: ContentDraft
    offline: bool
    provider: str
    calls: list[LlmCall]
    usage_per_call: bool = False  # as CrewOutcome
    usage_ids: list[int] = []
