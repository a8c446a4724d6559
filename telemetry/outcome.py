"""What processing one board request produced: the reply to publish and what the dashboard must learn."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from . import protocol as p


@dataclass
class Outcome:
    reply: p.Reply | None
    changed: bool = False  # the machine's dashboard tile changed: broadcast it after the reply
    seen: datetime | None = None  # the machine was heard from at this time
    failed: bool = False  # the database was unavailable: the reply says request_ok false
    note: str = ""  # "copy" (a replayed duplicate recognised) or "flagged" (an implausible duration recorded)
