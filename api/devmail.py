"""``GET /v1/dev/mail``: what the dev SMTP sink of ``bizosaas dev`` received (dev only).

The sink (workers/dev.py) keeps every mail in a Maildir (``BIZ_DEV_MAIL_DIR``); this lists
them, newest first, with their text and HTML bodies, so a newcomer sees the approval emails
and their links without a mail client. Not served outside ``BIZ_ENVIRONMENT=dev``.
"""

from __future__ import annotations

import mailbox
from email.message import EmailMessage
from email.policy import default as default_policy
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Router, get
from litestar.params import Parameter

from core.names import EMAIL_PATTERN
from core.settings import Settings

STAFF = frozenset({"super_admin", "admin", "finance", "support"})


class ReceivedMail(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    received_at: str | None
    sender: str
    to: list[str]
    subject: str
    text: str
    html: str | None = None


class MailPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[ReceivedMail]
    total: int


def mail_dir(settings: Settings) -> Path:
    return settings.dev.mail_dir or settings.dev.state_dir / "mail"


def _body(msg: EmailMessage, subtype: str) -> str | None:
    part = msg.get_body(preferencelist=(subtype,))
    if part is None:
        return None
    try:
        return part.get_content()
    except (LookupError, ValueError):
        return None


def read_mail(directory: Path, limit: int, to: str | None = None) -> MailPage:
    if not (directory / "cur").is_dir():
        return MailPage(items=[], total=0)
    box = mailbox.Maildir(directory, factory=None, create=False)
    found: list[tuple[float, ReceivedMail]] = []
    for key in box.keys():
        try:
            with box.get_file(key) as f:
                from email import message_from_binary_file

                msg: Any = message_from_binary_file(f, policy=default_policy)
        except (KeyError, OSError):  # removed meanwhile
            continue
        recipients = [a.strip() for a in str(msg.get("X-Sink-Rcpt-To", msg.get("To", ""))).split(",") if a.strip()]
        if to is not None and to.lower() not in (r.lower() for r in recipients):
            continue
        try:
            at = parsedate_to_datetime(str(msg.get("X-Sink-Received", ""))) if msg.get("X-Sink-Received") else None
        except (TypeError, ValueError):
            at = None
        found.append(((at.timestamp() if at else 0.0), ReceivedMail(
            id=key, received_at=at.isoformat() if at else None, sender=str(msg.get("From", "")), to=recipients,
            subject=" ".join(str(msg.get("Subject", "")).split()), text=_body(msg, "plain") or "", html=_body(msg, "html"))))
    found.sort(key=lambda x: (x[0], x[1].id), reverse=True)
    return MailPage(items=[m for _, m in found[:limit]], total=len(found))


class DevMailController(Controller):
    path = "/v1/dev/mail"
    tags = ["dev"]

    @get("/", operation_id="list_dev_mail", summary="Mail the dev SMTP sink received (dev only)",
         description="Newest first. `to`: only mail to this address. Served only with BIZ_ENVIRONMENT=dev.",
         opt={"roles": STAFF})
    async def list_mail(self, request: Request[Any, Any, Any],
                        limit: Annotated[int, Parameter(ge=1, le=200)] = 50,
                        to: Annotated[str | None, Parameter(max_length=254, pattern=EMAIL_PATTERN)] = None,
                        ) -> MailPage:
        import asyncio

        return await asyncio.to_thread(read_mail, mail_dir(request.app.state.settings), limit, to)


def dev_mail_router() -> Router:
    return Router(path="/", route_handlers=[DevMailController])
