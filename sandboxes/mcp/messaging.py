"""Messaging tools: email, WhatsApp and SMS, each recorded in the outbox.

``send_email`` also sends the mail over SMTP (aiosmtplib) when an SMTP server is configured:
the tenant's own (table ``tenant_smtp``) or the platform's (``BIZ_SMTP_*``). It is sent once per
idempotency key: inside the outbox's transaction, so a repeated key answers the stored result
without sending, and a mail the server refused leaves no record (the caller's retry sends it)."""

from __future__ import annotations

import math
from email.message import EmailMessage
from email.utils import formataddr, formatdate, parseaddr
from typing import Annotated, Any

import asyncpg
from mcp.server.fastmcp import FastMCP
from mcp.server.fastmcp.exceptions import ToolError
from pydantic import Field
from typing_extensions import TypedDict

from core.settings import SmtpSettings
from sandboxes.mcp.common import Email, IdempotencyKey, Phone, TenantId, ToolContext, WorkflowId, derive_id, now


class MessageSent(TypedDict):
    message_id: str
    status: str
    channel: str
    to: list[str]
    accepted_at: str
    segments: int | None
    sandbox: bool


def register(mcp: FastMCP, ctx: ToolContext) -> None:
    """Add the messaging tools to the sandbox server."""
    outbox = ctx.outbox

    @mcp.tool(name="send_email", description="Send an email (recorded in the outbox).", structured_output=True)
    async def send_email(
        tenant_id: TenantId,
        idempotency_key: IdempotencyKey,
        to: Annotated[list[Email], Field(min_length=1, max_length=50)],
        subject: Annotated[str, Field(min_length=1, max_length=998)],
        text: Annotated[str, Field(min_length=1, max_length=200_000)],
        html: Annotated[str | None, Field(max_length=500_000)] = None,
        cc: Annotated[list[Email], Field(max_length=50)] = [],  # noqa: B006 - copied by pydantic
        reply_to: Email | None = None,
        from_name: Annotated[str | None, Field(max_length=200)] = None,
        workflow_id: WorkflowId = None,
    ) -> MessageSent:
        args = dict(to=to, subject=subject, text=text, html=html, cc=cc, reply_to=reply_to, from_name=from_name)

        async def respond(conn: asyncpg.Connection) -> MessageSent:
            message_id = f"msg_{derive_id('email', idempotency_key)}"
            server = await smtp_server(conn, tenant_id, ctx.smtp)
            if server is not None:
                await send_smtp(server, message_id=message_id, to=to, cc=cc, subject=subject, text=text, html=html,
                                reply_to=reply_to, from_name=from_name)
            return MessageSent(
                message_id=message_id, status="sent" if server else "queued", channel="email",
                to=to, accepted_at=now(), segments=None, sandbox=server is None,
            )

        return await outbox.record(tool="send_email", tenant_id=tenant_id, idempotency_key=idempotency_key,
                                   workflow_id=workflow_id, arguments=args, respond=respond)

    @mcp.tool(
        name="send_whatsapp",
        description="Send a WhatsApp message: free text, or an approved template with parameters.",
        structured_output=True,
    )
    async def send_whatsapp(
        tenant_id: TenantId,
        idempotency_key: IdempotencyKey,
        to: Phone,
        text: Annotated[str | None, Field(min_length=1, max_length=4096)] = None,
        template: Annotated[str | None, Field(pattern=r"^[a-z0-9_]{1,512}$")] = None,
        template_params: Annotated[list[str], Field(max_length=20)] = [],  # noqa: B006
        workflow_id: WorkflowId = None,
    ) -> MessageSent:
        if (text is None) == (template is None):
            raise ToolError("give exactly one of text or template")
        args = dict(to=to, text=text, template=template, template_params=template_params)

        async def respond(conn: asyncpg.Connection) -> MessageSent:
            return MessageSent(
                message_id=f"wamid.{derive_id('whatsapp', idempotency_key, length=32)}", status="accepted",
                channel="whatsapp", to=[to], accepted_at=now(), segments=None, sandbox=True,
            )

        return await outbox.record(tool="send_whatsapp", tenant_id=tenant_id, idempotency_key=idempotency_key,
                                   workflow_id=workflow_id, arguments=args, respond=respond)

    @mcp.tool(name="send_sms", description="Send an SMS (long texts are split into segments).", structured_output=True)
    async def send_sms(
        tenant_id: TenantId,
        idempotency_key: IdempotencyKey,
        to: Phone,
        text: Annotated[str, Field(min_length=1, max_length=1600)],
        sender_id: Annotated[str | None, Field(pattern=r"^[A-Za-z0-9 ]{1,11}$")] = None,
        workflow_id: WorkflowId = None,
    ) -> MessageSent:
        args = dict(to=to, text=text, sender_id=sender_id)

        async def respond(conn: asyncpg.Connection) -> MessageSent:
            # GSM-7: 160 characters, or 153 per part when split; UCS-2: 70, or 67.
            single, part = (160, 153) if text.isascii() else (70, 67)
            segments = 1 if len(text) <= single else math.ceil(len(text) / part)
            return MessageSent(
                message_id=f"SM{derive_id('sms', idempotency_key, length=32)}", status="queued", channel="sms",
                to=[to], accepted_at=now(), segments=segments, sandbox=True,
            )

        return await outbox.record(tool="send_sms", tenant_id=tenant_id, idempotency_key=idempotency_key,
                                   workflow_id=workflow_id, arguments=args, respond=respond)


async def smtp_server(conn: asyncpg.Connection, tenant_id: str, platform: SmtpSettings | None) -> dict[str, Any] | None:
    """The SMTP server that sends the tenant's mail: its own (``tenant_smtp``), else the platform's."""
    row = await conn.fetchrow(
        "SELECT host, port, username, password, security, from_address FROM tenant_smtp WHERE tenant_id = $1",
        tenant_id)
    if row is not None:
        return {**dict(row), "timeout": platform.timeout_seconds if platform else 15.0}
    if platform is None or not platform.host:
        return None
    return {"host": platform.host, "port": platform.port, "username": platform.username,
            "password": platform.password.get_secret_value() if platform.password else None,
            "security": platform.security, "from_address": platform.from_address, "timeout": platform.timeout_seconds}


async def send_smtp(server: dict[str, Any], *, message_id: str, to: list[str], cc: list[str], subject: str, text: str,
                    html: str | None, reply_to: str | None, from_name: str | None) -> None:
    """One mail over SMTP; a refusal or an unreachable server is a tool error (nothing recorded)."""
    import aiosmtplib

    name, address = parseaddr(server["from_address"])
    msg = EmailMessage()
    msg["From"] = formataddr((from_name or name, address))
    msg["To"] = ", ".join(to)
    if cc:
        msg["Cc"] = ", ".join(cc)
    if reply_to:
        msg["Reply-To"] = reply_to
    msg["Subject"] = subject
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = f"<{message_id}@{address.partition('@')[2] or 'bizosaas'}>"
    msg.set_content(text)
    if html:
        msg.add_alternative(html, subtype="html")
    security = server.get("security") or "none"
    try:
        await aiosmtplib.send(
            msg, hostname=server["host"], port=server["port"], username=server.get("username") or None,
            password=server.get("password") or None, use_tls=security == "tls", start_tls=security == "starttls",
            timeout=server.get("timeout") or 15.0)
    except (aiosmtplib.SMTPException, OSError) as exc:
        # The server's answer names the problem; the credentials never appear in it.
        raise ToolError(f"SMTP {server['host']}:{server['port']} did not take the mail: {exc.__class__.__name__}: "
                        f"{str(exc)[:300]}") from None
