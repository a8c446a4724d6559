"""Password reset over real HTTP: daphne serving the portal, mail through a real SMTP server (aiosmtpd).

The link in the mail comes from PUBLIC_URL, never from the request's Host header, and the answer does not wait
for the mail server, so an existing address cannot be told from an unknown one by the time the answer takes.
"""

from __future__ import annotations

import asyncio
import http.client
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_string
from email.message import Message
from urllib.parse import urlencode

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from django.db import connection

from members.models import Member

from .browser import Daphne, daphne, server_env
from .services import first_group, free_port

pytestmark = pytest.mark.django_db(transaction=True)  # daphne, another process, reads the committed rows
PUBLIC_URL = "https://fablab.example.org"


@dataclass
class Handler:
    """Receives every message; ``hold`` keeps the server blocked inside DATA until it is set."""

    messages: list[str] = field(default_factory=list)
    entered: threading.Event = field(default_factory=threading.Event)
    hold: threading.Event = field(default_factory=threading.Event)
    received: threading.Event = field(default_factory=threading.Event)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # aiosmtpd's hook name
        self.entered.set()
        await asyncio.get_running_loop().run_in_executor(None, self.hold.wait, 60)
        assert isinstance(envelope.content, bytes)  # the server is not told to decode_data
        self.messages.append(envelope.content.decode("utf-8", "replace"))
        self.received.set()
        return "250 Message accepted"

    def bodies(self) -> list[str]:
        out = []
        for raw in self.messages:
            message = message_from_string(raw)
            parts = message.walk() if message.is_multipart() else [message]
            out.append("".join(_decoded(p) for p in parts if not p.is_multipart()))
        return out


def _decoded(part: Message) -> str:
    """The text of a non-multipart part, its transfer encoding undone."""
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()


@contextmanager
def smtp_server(*, blocked: bool = False) -> Iterator[tuple[Handler, int]]:
    handler = Handler()
    if not blocked:
        handler.hold.set()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        handler.hold.set()
        controller.stop()


@pytest.fixture
def staff(db: None) -> Member:
    return Member.objects.create_user(
        email="zoe@lab.test", first_name="Zoe", password="an-old-password-9", is_staff=True
    )


def _env(smtp_port: int, **extra: str) -> dict[str, str]:
    env = server_env(connection.settings_dict["NAME"], redis_url="")
    env.update(EMAIL_URL=f"smtp://127.0.0.1:{smtp_port}", PUBLIC_URL=PUBLIC_URL, **extra)
    return env


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    text: str


def request(server: Daphne, method: str, path: str, *, host: str, body: str = "", cookie: str = "") -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    headers = {"Host": host, "Cookie": cookie}
    if body:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    conn.request(method, path, body=body or None, headers=headers)
    response = conn.getresponse()
    answer = Answer(response.status, response.headers, response.read().decode("utf-8", "replace"))
    conn.close()
    return answer


def ask_reset(server: Daphne, email: str, *, host: str) -> Answer:
    """As a browser does: the form first (CSRF cookie and token), then the POST."""
    form = request(server, "GET", "/admin/password_reset/", host=host)
    if form.status != 200:
        return form
    cookie = first_group(r"csrftoken=([^;]+)", form.headers["Set-Cookie"])
    token = first_group(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
    body = urlencode({"csrfmiddlewaretoken": token, "email": email})
    return request(server, "POST", "/admin/password_reset/", host=host, body=body, cookie=f"csrftoken={cookie}")


def test_it_refuses_a_forged_host_by_default_and_links_to_the_public_url(staff: Member) -> None:
    with smtp_server() as (smtp, smtp_port):
        env = _env(smtp_port)
        env.pop("ALLOWED_HOSTS")  # the default, as a .env without the line has it
        with daphne(env) as server:
            forged = ask_reset(server, "zoe@lab.test", host="evil.example")
            assert forged.status == 400
            answer = ask_reset(server, "zoe@lab.test", host=f"127.0.0.1:{server.port}")
            assert (answer.status, answer.headers["Location"]) == (302, "/admin/password_reset/done/")
            assert smtp.received.wait(30), server.output()
    [body] = smtp.bodies()
    assert f"{PUBLIC_URL}/reset/" in body
    assert "evil.example" not in body and "127.0.0.1" not in body


def test_the_link_never_comes_from_the_request_even_for_an_allowed_host(staff: Member) -> None:
    with smtp_server() as (smtp, smtp_port):
        with daphne(_env(smtp_port, ALLOWED_HOSTS="127.0.0.1,intranet.lab")) as server:
            answer = ask_reset(server, "zoe@lab.test", host="intranet.lab")
            assert answer.status == 302
            assert smtp.received.wait(30), server.output()
    [body] = smtp.bodies()
    assert re.search(rf"{re.escape(PUBLIC_URL)}/reset/[^/\s]+/[^/\s]+/", body)
    assert "intranet.lab" not in body


def test_the_answer_does_not_wait_for_the_mail_server(staff: Member) -> None:
    """With the SMTP server stuck inside DATA, the answer for an existing address must come back anyway: had it
    waited for the mail, it would take longer than the one for an unknown address."""
    with smtp_server(blocked=True) as (smtp, smtp_port):
        with daphne(_env(smtp_port)) as server:
            host = f"127.0.0.1:{server.port}"
            unknown = ask_reset(server, "nobody@lab.test", host=host)
            answers: list[Answer] = []
            asking = threading.Thread(target=lambda: answers.append(ask_reset(server, "zoe@lab.test", host=host)))
            asking.start()
            try:
                assert smtp.entered.wait(30), server.output()  # the mail is on its way, the server holds it
                asking.join(30)
                assert answers, "the answer waited for the SMTP server"
                assert not smtp.hold.is_set() and not smtp.messages  # still blocked when the answer came
            finally:
                smtp.hold.set()
                asking.join(60)
            assert smtp.received.wait(30), server.output()
    [known] = answers
    assert (
        (known.status, known.headers["Location"])
        == (unknown.status, unknown.headers["Location"])
        == (
            302,
            "/admin/password_reset/done/",
        )
    )
    assert len(smtp.messages) == 1 and "zoe@lab.test" in smtp.messages[0]
