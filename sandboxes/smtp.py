"""An SMTP sink (aiosmtpd): accepts every mail on loopback and keeps it, in memory and, when
given a directory, in a Maildir there (what ``GET /v1/dev/mail`` lists). ``bizosaas dev``
runs one (``BIZ_DEV_SMTP_PORT``) and points the sandbox's ``send_email`` at it; tests run one
to assert on mail really received over SMTP.

``refuse``: recipient addresses refused (550) as many times as given, then accepted; tests use
it to make a delivery fail once.
"""

from __future__ import annotations

import mailbox
import threading
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from email.utils import formatdate
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope, Session


@dataclass(frozen=True)
class Received:
    sender: str
    rcpt_to: list[str]
    message: EmailMessage

    @property
    def subject(self) -> str:
        return " ".join(str(self.message.get("Subject", "")).split())  # unfolded, as mail clients show it

    def body(self, subtype: str = "plain") -> str:
        part = self.message.get_body(preferencelist=(subtype,))
        return part.get_content() if part is not None else ""


@dataclass
class _Handler:
    directory: Path | None
    refuse: dict[str, int] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(self, server: Any, session: Session, envelope: Envelope, address: str,  # noqa: N802
                          rcpt_options: list[str]) -> str:
        with self.lock:
            left = self.refuse.get(address.lower(), 0)
            if left > 0:
                self.refuse[address.lower()] = left - 1
                return "550 5.1.1 mailbox unavailable (refused by the sink)"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:  # noqa: N802
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode()
        msg: Any = message_from_bytes(raw, policy=default_policy)
        msg["X-Sink-Rcpt-To"] = ", ".join(envelope.rcpt_tos)
        msg["X-Sink-Received"] = formatdate(usegmt=True)
        with self.lock:
            self.received.append(Received(sender=envelope.mail_from or "", rcpt_to=list(envelope.rcpt_tos),
                                          message=msg))
            if self.directory is not None:
                mailbox.Maildir(self.directory, create=True).add(msg.as_bytes())
        return "250 Message accepted"


class SmtpSink:
    """``with SmtpSink(port=0) as sink: ... sink.port, sink.received``"""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, directory: Path | None = None,
                 refuse: dict[str, int] | None = None) -> None:
        self._handler = _Handler(directory, {k.lower(): v for k, v in (refuse or {}).items()})
        if port == 0:
            import socket

            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.host, self.port = host, port
        self._controller = Controller(self._handler, hostname=host, port=port)

    @property
    def received(self) -> list[Received]:
        with self._handler.lock:
            return list(self._handler.received)

    def to(self, address: str) -> list[Received]:
        return [m for m in self.received if address.lower() in (r.lower() for r in m.rcpt_to)]

    def refuse(self, address: str, times: int = 1) -> None:
        with self._handler.lock:
            self._handler.refuse[address.lower()] = times

    def start(self) -> SmtpSink:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
