"""The SEO content crew: a researcher reads what the workflow fetched (the tenant's pages and
the sources), a writer drafts the post in parts, an editor tightens it for search and for the
reader. Typed outputs are pydantic models (CrewAI demands them); the activity converts the
editor's post to msgspec at the boundary. The HTML, the internal links' check and the
technical check are the workflow's, deterministic: the crew writes words, not markup.
"""

from __future__ import annotations

import json

import msgspec
from pydantic import BaseModel, Field

from agents.llm import UsageMeter, crewai_llm
from agents.types import ContentDraft, ContentRequest
from core.settings import LlmSettings


class ResearchModel(BaseModel):
    angle: str = Field(max_length=500, description="the post's angle for this audience")
    key_points: list[str] = Field(description="facts and points the post should make")
    questions: list[str] = Field(description="questions readers search for about the topic")


class SectionModel(BaseModel):
    heading: str = Field(max_length=120, description="the section's H2 heading")
    paragraphs: list[str] = Field(description="the section's paragraphs, plain text")


class LinkModel(BaseModel):
    url: str = Field(description="the URL of one of the business's own pages listed in the task")
    anchor: str = Field(max_length=100, description="the link's anchor text")


class PostModel(BaseModel):
    title: str = Field(max_length=120, description="the post's title, with the main keyword, 10-60 characters")
    slug: str = Field(max_length=80, description="the URL slug: lower-case words joined by hyphens")
    meta_description: str = Field(max_length=300, description="the search snippet, 50-160 characters")
    outline: list[str] = Field(description="the section headings, in order")
    intro: str = Field(description="the opening paragraph")
    sections: list[SectionModel]
    conclusion: str = Field(description="the closing paragraph, with a call to action")
    internal_links: list[LinkModel] = Field(description="links to the business's own pages listed in the task")
    categories: list[str] = Field(default=[], description="one or two of the blog's existing categories listed "
                                                          "in the task, by name; none when none is listed")


class EditedPostModel(PostModel):
    editor_notes: str = Field(max_length=1000, description="what the editor changed and why")


def _pages(pages: list) -> str:
    return json.dumps([msgspec.to_builtins(p) for p in pages], indent=1)[:6000]


def run_content_crew(llm_settings: LlmSettings, req: ContentRequest, meter: UsageMeter) -> ContentDraft:
    """Run the 3-agent crew synchronously (called in a worker thread by the activity)."""
    from crewai import Agent, Crew, Process, Task

    llm = crewai_llm(llm_settings, meter)
    keywords = ", ".join(req.keywords)
    who = f" for {req.audience}" if req.audience else ""
    tone = f" in a {req.tone} tone" if req.tone else ""
    changes = "".join(f"\n- {c}" for c in req.feedback)
    revision = f"\nThe client asked for these changes to the previous draft:{changes}" if req.feedback else ""
    categories = (f"\nThe blog's existing categories (choose one or two that fit, by name): "
                  f"{json.dumps(req.site_categories)[:2000]}" if req.site_categories else "")

    def agent(role: str, goal: str) -> Agent:
        return Agent(role=role, goal=goal, backstory=f"A {role.lower()} at a content agency for small businesses.",
                     llm=llm, allow_delegation=False, verbose=False, max_iter=3)

    researcher = agent("Researcher", "Find what readers search for and what the business's site already covers.")
    writer = agent("SEO Writer", "Write blog posts that rank for their keywords and read well.")
    editor = agent("Editor", "Make the post accurate, clear and optimised for its keywords.")

    research = Task(
        description=f"Research a blog post on '{req.topic}' (keywords: {keywords}){who}. "
                    f"The business's own pages:\n{_pages(req.site_pages)}\nOther sources read:\n{_pages(req.sources)}",
        expected_output="The post's angle, its key points and the questions readers ask.",
        agent=researcher, output_pydantic=ResearchModel)
    draft = Task(
        description=f"Write the blog post on '{req.topic}' for the keywords {keywords}{who}{tone}. Link to two or "
                    f"three of the business's own pages (use their exact URLs):\n{_pages(req.site_pages)}{categories}"
                    f"{revision}",
        expected_output="The post: title, slug, meta description, outline, intro, sections, conclusion, internal links,"
                        " categories.",
        agent=writer, output_pydantic=PostModel, context=[research])
    edit = Task(
        description=f"Edit the post on '{req.topic}': the main keyword '{req.keywords[0]}' in the title, the meta "
                    f"description and the intro; a title of 10-60 characters and a meta description of 50-160; "
                    f"internal links only to the business's pages listed before; categories only among the blog's "
                    f"existing ones listed before.{revision}",
        expected_output="The edited post and the editor's notes.",
        agent=editor, output_pydantic=EditedPostModel, context=[research, draft])
    Crew(agents=[researcher, writer, editor], tasks=[research, draft, edit], process=Process.sequential,
         verbose=False).kickoff()
    notes = research.output.pydantic if research.output else None
    post = edit.output.pydantic if edit.output else None
    if not isinstance(post, EditedPostModel):
        raise ValueError("the editor did not produce a post")
    body = post.model_dump()
    body["research_notes"] = [notes.angle, *notes.key_points] if isinstance(notes, ResearchModel) else []
    return msgspec.convert(body, ContentDraft)
