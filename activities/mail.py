"""Email templates: files in ``activities/templates/email/``, rendered with Jinja2.

A template ``NAME`` is three files: ``NAME.subject.txt`` (one line), ``NAME.txt`` (the text
body) and ``NAME.html`` (the HTML body, autoescaped). Workflows never build mail text: they
pass a template name and its data to the ``mail.render`` activity (or the notifier renders),
so wording changes are file changes and running workflows replay unchanged.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import jinja2
import msgspec
from temporalio import activity
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

from core.activity import Activities, ActivityPolicy
from core.names import WORKFLOWS_QUEUE

TEMPLATES_DIR = Path(__file__).with_name("templates") / "email"
TEMPLATE_NAME = r"^[a-z][a-z0-9_]{0,62}$"
UNKNOWN_TEMPLATE = "UnknownEmailTemplate"
# Rendering is CPU only: a bad template or data does not get better by retrying.
RENDER = ActivityPolicy(start_to_close=timedelta(seconds=10),
                        retry=RetryPolicy(maximum_attempts=3, non_retryable_error_types=[UNKNOWN_TEMPLATE]))


class RenderEmail(msgspec.Struct, frozen=True, kw_only=True):
    template: str
    data: dict[str, Any] = {}


class RenderedEmail(msgspec.Struct, frozen=True, kw_only=True):
    subject: str
    text: str
    html: str | None = None


def _environment(directory: Path, html: bool) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(directory), autoescape=html, undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False, trim_blocks=False, lstrip_blocks=False)


class Templates:
    """The email templates of a directory (the shipped ones by default)."""

    def __init__(self, directory: Path = TEMPLATES_DIR) -> None:
        self._text = _environment(directory, html=False)
        self._html = _environment(directory, html=True)
        self._dir = directory

    def render(self, name: str, data: dict[str, Any]) -> RenderedEmail:
        if not (self._dir / f"{name}.subject.txt").is_file() or not (self._dir / f"{name}.txt").is_file():
            raise LookupError(f"no email template {name!r} in {self._dir}")
        try:
            subject = " ".join(self._text.get_template(f"{name}.subject.txt").render(data).split())
            text = self._text.get_template(f"{name}.txt").render(data).strip() + "\n"
            html = None
            if (self._dir / f"{name}.html").is_file():
                html = self._html.get_template(f"{name}.html").render({**data, "subject": subject})
        except jinja2.UndefinedError as exc:
            raise LookupError(f"email template {name!r}: {exc}") from None
        return RenderedEmail(subject=subject[:998], text=text, html=html)


class MailActivities(Activities):
    task_queue = WORKFLOWS_QUEUE
    default_policy = RENDER

    def __init__(self, templates: Templates | None = None) -> None:
        self._templates = templates or Templates()

    @activity.defn(name="mail.render")
    async def render(self, req: RenderEmail) -> RenderedEmail:
        try:
            return self._templates.render(req.template, req.data)
        except LookupError as exc:
            raise ApplicationError(str(exc), type=UNKNOWN_TEMPLATE, non_retryable=True) from None
