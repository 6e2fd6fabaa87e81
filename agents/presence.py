"""The Digital Presence Audit crew: technical, SEO and social auditors and a report writer.

Typed outputs are pydantic models (CrewAI demands them); :func:`run_presence_crew` converts
the writer's report to the msgspec types of ``workflows.presence_audit`` at the boundary.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

import msgspec
from pydantic import BaseModel, Field

from agents.llm import UsageMeter, crewai_llm
from core.settings import LlmSettings
from agents.types import CrewReport, PageSnapshot

Severity = Literal["low", "medium", "high"]


class Finding(BaseModel):
    area: str = Field(description="what part of the presence this is about")
    severity: Severity
    detail: str


class AreaAudit(BaseModel):
    score: Annotated[int, Field(ge=0, le=100)]
    findings: list[Finding]
    recommendations: list[str]


class PresenceReportModel(BaseModel):
    summary: str
    overall_score: Annotated[int, Field(ge=0, le=100)]
    technical: AreaAudit
    seo: AreaAudit
    social: AreaAudit
    top_recommendations: list[str]


def _pages_brief(pages: list[PageSnapshot]) -> str:
    return json.dumps([msgspec.to_builtins(p) for p in pages], indent=1)[:12000]


def run_presence_crew(
    llm_settings: LlmSettings, website_url: str, social_handles: dict[str, str], pages: list[PageSnapshot],
    meter: UsageMeter,
) -> CrewReport:
    """Run the 4-agent crew synchronously (called in a worker thread by the activity)."""
    from crewai import Agent, Crew, Process, Task

    llm = crewai_llm(llm_settings, meter)
    brief = _pages_brief(pages)

    def agent(role: str, goal: str) -> Agent:
        return Agent(role=role, goal=goal, backstory=f"A {role.lower()} at a digital agency for small businesses.",
                     llm=llm, allow_delegation=False, verbose=False, max_iter=3)

    technical = agent("Technical Auditor", "Find technical problems of the website: status, speed, structure.")
    seo = agent("SEO Auditor", "Judge titles, descriptions, headings and content for search visibility.")
    social = agent("Social Media Auditor", "Judge the social presence and how the site links to it.")
    writer = agent("Report Writer", "Write a clear audit report a business owner can act on.")

    t_tech = Task(description=f"Audit the technical health of {website_url}. Pages fetched:\n{brief}",
                  expected_output="A technical audit with a 0-100 score, findings and recommendations.",
                  agent=technical, output_pydantic=AreaAudit)
    t_seo = Task(description=f"Audit the SEO of {website_url}. Pages fetched:\n{brief}",
                 expected_output="An SEO audit with a 0-100 score, findings and recommendations.",
                 agent=seo, output_pydantic=AreaAudit)
    t_social = Task(description=f"Audit the social presence {json.dumps(social_handles)} of {website_url}; "
                                f"links found on the site:\n{brief}",
                    expected_output="A social audit with a 0-100 score, findings and recommendations.",
                    agent=social, output_pydantic=AreaAudit)
    t_report = Task(description=f"Write the digital presence report of {website_url} from the three audits.",
                    expected_output="The full report with an overall score and top recommendations.",
                    agent=writer, output_pydantic=PresenceReportModel, context=[t_tech, t_seo, t_social])

    crew = Crew(agents=[technical, seo, social, writer], tasks=[t_tech, t_seo, t_social, t_report],
                process=Process.sequential, verbose=False)
    output = crew.kickoff()
    report = output.pydantic
    if not isinstance(report, PresenceReportModel):
        raise ValueError("the report writer did not produce a PresenceReportModel")
    return msgspec.convert(report.model_dump(), CrewReport)
