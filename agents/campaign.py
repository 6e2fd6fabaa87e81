"""The campaign creative crew: a copywriter writes one ad per channel, a creative director
reviews the set. Typed outputs are pydantic models (CrewAI demands them); the activity
converts them to msgspec at the boundary. The channel of each ad is set by the code, one task
per channel, never left to the model.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field

from agents.llm import UsageMeter, crewai_llm
from core.settings import LlmSettings


class AdCopyModel(BaseModel):
    headline: str = Field(max_length=90, description="the ad's headline, at most 90 characters")
    body: str = Field(max_length=500, description="the ad's primary text")
    call_to_action: str = Field(max_length=40)
    asset_brief: str = Field(max_length=1000, description="what the image or video should show")


class CreativeReviewModel(BaseModel):
    summary: str = Field(max_length=2000, description="one paragraph the client reads before approving")


def run_creative_crew(
    llm_settings: LlmSettings, *, goal: str, objective: str, channels: list[str], strategy: dict[str, Any],
    feedback: list[str], meter: UsageMeter,
) -> tuple[dict[str, AdCopyModel], str]:
    """Run the crew synchronously (in the agents worker's executor): ads by channel, review."""
    from crewai import Agent, Crew, Process, Task

    llm = crewai_llm(llm_settings, meter)
    brief = json.dumps(strategy)[:6000]
    changes = "".join(f"\n- {c}" for c in feedback)
    revision = f"\nThe client asked for these changes to the previous version:{changes}" if feedback else ""

    copywriter = Agent(role="Copywriter", goal="Write ads that make the target audience act.",
                       backstory="A direct-response copywriter at an agency for small businesses.",
                       llm=llm, allow_delegation=False, verbose=False, max_iter=3)
    director = Agent(role="Creative Director", goal="Make sure the ads follow the strategy and read well.",
                     backstory="The agency's creative director; signs off every campaign.",
                     llm=llm, allow_delegation=False, verbose=False, max_iter=3)
    ad_tasks = {
        channel: Task(
            description=f"Write the {channel} ad of a campaign. Goal: {goal}. Objective: {objective}. "
                        f"Strategy: {brief}{revision}",
            expected_output=f"One {channel} ad: headline, body, call to action and a brief for its visual asset.",
            agent=copywriter, output_pydantic=AdCopyModel)
        for channel in channels
    }
    review = Task(description=f"Review the ads for the goal '{goal}' and summarise the creative for the client.{revision}",
                  expected_output="A short summary of the creative the client will approve.",
                  agent=director, output_pydantic=CreativeReviewModel, context=list(ad_tasks.values()))
    Crew(agents=[copywriter, director], tasks=[*ad_tasks.values(), review], process=Process.sequential,
         verbose=False).kickoff()
    ads = {}
    for channel, task in ad_tasks.items():
        out = task.output.pydantic if task.output else None
        if not isinstance(out, AdCopyModel):
            raise ValueError(f"the copywriter did not produce an ad for {channel}")
        ads[channel] = out
    summary = review.output.pydantic if review.output else None
    if not isinstance(summary, CreativeReviewModel):
        raise ValueError("the creative director did not produce a review")
    return ads, summary.summary
