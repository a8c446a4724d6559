"""Firmware rollouts: staff choose an image and boards of its environment; the runner pushes it with espota.

Rules:

- A push happens only to an online, idle machine (no open use); a busy one waits ("waiting: in use") and is tried
  again at the next round.
- One board first, the canary; the others only after it came back with the new version; then one at a time, so a
  bad image stops at the first board it breaks.
- Success is the board's next ``alive`` reporting the image's version within ``OTA_CONFIRM_SECONDS`` (180 s). An
  ``alive`` with the old version in the first ``REBOOT_GRACE`` seconds is ignored (the firmware reboots at its next
  30 s check, once the machine is off); after it, the old version fails the push. Any failure stops the rollout.
- Every push is recorded in the audit trail, in the name of the member who started the rollout.

Where it runs: ``manage.py ota_rollout``, a short-lived process that exits when no rollout runs. Installed with
systemd, ``fabomatic-ota.path`` starts it (as ``fabomatic-ota.service``) while the request file the portal creates
exists, also at boot; elsewhere the portal starts it in its own session. The Firmware page asks again whenever it sees
a rollout running. It holds a lock file, so only one runs. It is not a thread of the web process (a restart of
daphne would cut a transfer) nor part of the bridge (a 60 s transfer must never share the bridge's 2 s deadline). A
push left "pushing" by a crashed runner is marked failed ("interrupted") when the next runner starts.
"""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import close_old_connections, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop

from machines.models import Machine, Use
from operations import audit

from . import espota
from .firmware import parse_reported
from .models import Board, FirmwareImage, OtaPush, Rollout

if TYPE_CHECKING:
    from django.http import HttpRequest


logger = logging.getLogger(__name__)

REBOOT_GRACE = timedelta(seconds=60)
POLL_SECONDS = 2.0
Pusher = Callable[..., espota.PushResult]
State, Reason = OtaPush.State, OtaPush.Reason
IN_FLIGHT = (State.PUSHING, State.CONFIRMING)


def lock_path() -> Path:
    return Path(settings.DATA_DIR) / "ota-runner.lock"


@contextmanager
def runner_lock() -> Iterator[bool]:
    """True when this process is the one runner (the lock goes with the process, even when it is killed)."""
    with lock_path().open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def runner_running() -> bool:
    with runner_lock() as free:
        return not free


def request_path() -> Path:
    """Exists while rollouts are pending: deploy/systemd/fabomatic-ota.path starts the runner on it."""
    return Path(settings.DATA_DIR) / "ota-rollout.request"


def active() -> QuerySet[Rollout]:
    """Rollouts the runner still has work in: running ones, and cancelled ones whose transfer is being confirmed."""
    in_flight = Q(state=Rollout.State.CANCELLED, pushes__state__in=IN_FLIGHT)
    return Rollout.objects.filter(Q(state=Rollout.State.RUNNING) | in_flight).distinct()


def launch_runner() -> bool:
    """Have a runner run the pending rollouts; True when this call started one as a child process.

    Under systemd (the portal's unit sets INVOCATION_ID) the request file is enough: fabomatic-ota.path starts
    ``fabomatic-ota.service``, outside the portal's unit, so a restart of the portal never cuts a transfer. Elsewhere
    (``make run``, a shell) the runner is started in its own session.
    """
    if not active().exists():
        return False
    request_path().touch()
    if os.environ.get("INVOCATION_ID") or runner_running():
        return False
    manage = Path(settings.BASE_DIR) / "manage.py"
    subprocess.Popen(
        [sys.executable, str(manage), "ota_rollout"],
        cwd=settings.BASE_DIR,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # survives the request and a restart of the web process
    )
    return True


def eligible_boards(image: FirmwareImage) -> list[Board]:
    """The boards whose reported environment is the image's."""
    boards = Board.objects.select_related("machine").order_by("machine_id")
    return [b for b in boards if parse_reported(b.firmware).environment == image.environment]


def start(image: FirmwareImage, machine_ids: Sequence[int], *, request: HttpRequest | None = None) -> Rollout:
    """A new rollout of ``image`` to these machines' boards, the first chosen being the canary."""
    by_machine = {b.machine_id: b for b in eligible_boards(image)}
    chosen = list(dict.fromkeys(machine_ids))
    if not chosen:
        raise ValidationError(_("Choose at least one board."))
    if any(pk not in by_machine for pk in chosen):
        raise ValidationError(
            _("Every board must report the image's environment %(env)s."), params={"env": image.environment}
        )
    busy = OtaPush.objects.filter(
        machine_id__in=chosen, rollout__state=Rollout.State.RUNNING, state__in=[State.WAITING, *IN_FLIGHT]
    )
    if busy.exists():
        raise ValidationError(_("A board chosen is already part of a running rollout."))
    actor = getattr(request, "user", None)
    with transaction.atomic():
        rollout = Rollout.objects.create(image=image, started_by=actor if getattr(actor, "pk", None) else None)
        OtaPush.objects.bulk_create(
            OtaPush(rollout=rollout, machine_id=pk, position=i, from_version=by_machine[pk].firmware)
            for i, pk in enumerate(chosen)
        )
    audit.record(
        rollout,
        message=gettext_noop(
            "Firmware rollout of %(image)s to %(count)s board(s) started, canary machine #%(canary)s."
        ),
        params={"image": str(image), "count": len(chosen), "canary": chosen[0]},
        request=request,
    )
    return rollout


def cancel(rollout: Rollout, *, request: HttpRequest | None = None) -> None:
    """Stop a rollout: pushes not started are not made (a transfer under way finishes and is still confirmed)."""
    with transaction.atomic():
        if Rollout.objects.filter(pk=rollout.pk, state=Rollout.State.RUNNING).update(
            state=Rollout.State.CANCELLED, finished_at=timezone.now()
        ):
            rollout.pushes.filter(state=State.WAITING).update(
                state=State.SKIPPED, reason=Reason.CANCELLED, finished_at=timezone.now()
            )
    audit.record(
        rollout,
        message=gettext_noop("Firmware rollout of %(image)s cancelled."),
        params={"image": str(rollout.image)},
        request=request,
    )


def recover() -> int:
    """Pushes a dead runner left "pushing" failed (the transfer's outcome is unknown), and their rollouts stopped."""
    count = 0
    for push in OtaPush.objects.filter(state=State.PUSHING).select_related("rollout__image", "rollout__started_by"):
        _fail(push, Reason.INTERRUPTED, "", timezone.now())
        count += 1
    return count


def run(
    *,
    push: Pusher = espota.push,
    poll: float = POLL_SECONDS,
    until: float | None = None,
    between_rounds: Callable[[], None] = close_old_connections,
) -> bool:
    """The runner's loop: every ``poll`` seconds one step of each running rollout, until none runs (or ``until``, a
    monotonic deadline, for tests). False when another runner holds the lock."""
    with runner_lock() as mine:
        if not mine:
            return False
        recover()
        while until is None or time.monotonic() < until:
            between_rounds()  # a database restart must not end the runner
            running = list(active().select_related("image", "started_by"))
            if not running:
                request_path().unlink(missing_ok=True)
                if not active().exists():  # none started meanwhile
                    break
                continue
            for rollout in running:
                try:
                    step(rollout, push=push)
                except Exception:  # one broken rollout must not stop the others; the next round tries again
                    logger.exception("firmware rollout %s: step failed", rollout.pk)
            time.sleep(poll)
    return True


def step(rollout: Rollout, *, push: Pusher = espota.push, now: datetime | None = None) -> None:
    """One round: confirm the push in flight, or stop, or finish, or push the next idle board."""
    now = now or timezone.now()
    pushes = list(rollout.pushes.select_related("machine").order_by("position"))
    for item in pushes:
        if item.state == State.CONFIRMING:
            _confirm(item, now)
    if any(item.state == State.FAILED for item in pushes):
        _stop(rollout, now)
        return
    if any(item.state in IN_FLIGHT for item in pushes):
        return
    waiting = [item for item in pushes if item.state == State.WAITING]
    if not waiting:
        _finish(rollout, Rollout.State.DONE, now)
        return
    canary = pushes[0]
    for item in [canary] if canary.state == State.WAITING else waiting:
        board = Board.objects.filter(machine_id=item.machine_id).first()
        blocker = _blocker(item.machine, board, now)
        if blocker is not None:
            if item.reason != blocker:
                OtaPush.objects.filter(pk=item.pk).update(reason=blocker)
            continue
        assert board is not None and board.ip_address  # _blocker said so
        _push(item, rollout, board, push, now)
        return


def _blocker(machine: Machine, board: Board | None, now: datetime) -> str | None:
    if board is None or not machine.is_online(now):
        return Reason.OFFLINE
    if not usable_address(board.ip_address):
        return Reason.NO_ADDRESS
    if Use.objects.filter(machine_id=machine.pk, ended_at__isnull=True).exists():
        return Reason.IN_USE
    return None


def usable_address(address: str | None) -> bool:
    """An IPv4 address a board may have: reported by the board itself, so never trusted to be one. A multicast or
    the broadcast address would invite every board of the network at once."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    return ip.version == 4 and not (ip.is_multicast or ip.is_unspecified or ip.is_reserved)


def _push(item: OtaPush, rollout: Rollout, board: Board, push: Pusher, now: datetime) -> None:
    OtaPush.objects.filter(pk=item.pk).update(
        state=State.PUSHING, reason="", detail="", started_at=now, from_version=board.firmware
    )
    image = rollout.image
    data = bytes(FirmwareImage.objects.values_list("data", flat=True).get(pk=image.pk))
    logger.info("firmware %s: pushing to machine #%s at %s", image, item.machine_id, board.ip_address)
    result = push(
        str(board.ip_address), data, port=settings.OTA_PORT, bind=settings.OTA_BIND, host_port=settings.OTA_HOST_PORT
    )
    item.refresh_from_db()
    finished = timezone.now()
    if result.ok:
        OtaPush.objects.filter(pk=item.pk).update(state=State.CONFIRMING, pushed_at=finished)
        _record(item, gettext_noop("Firmware %(image)s sent to machine #%(machine)s, waiting for the board."), {})
    else:
        reason = Reason(result.failure.value) if result.failure else Reason.BROKEN_TRANSFER
        _fail(item, reason, result.detail, finished)


def _confirm(item: OtaPush, now: datetime) -> None:
    """Done when the board's ``alive`` since the push reports the image's version; failed when it reports the old
    one after the reboot grace, or nothing in time."""
    board = Board.objects.filter(machine_id=item.machine_id).first()
    pushed = item.pushed_at or now
    image = item.rollout.image
    # Since the transfer began: the board reboots 0.1 s after its OK, before the runner has noted the end.
    if board is not None and board.last_seen > (item.started_at or pushed):
        reported = parse_reported(board.firmware)
        if reported.same_release(parse_reported(f"{image.environment},{image.version}")):
            OtaPush.objects.filter(pk=item.pk).update(state=State.DONE, finished_at=now)
            item.state = State.DONE
            _record(item, gettext_noop("Firmware %(image)s installed on machine #%(machine)s."), {})
            return
        if board.last_seen > pushed + REBOOT_GRACE:
            _fail(item, Reason.OLD_VERSION, f"reported {board.firmware[:100]}", now)
            return
    if now > pushed + timedelta(seconds=settings.OTA_CONFIRM_SECONDS):
        _fail(item, Reason.NOT_BACK, f"no alive with {image.version} in {settings.OTA_CONFIRM_SECONDS} s", now)


def _fail(item: OtaPush, reason: str, detail: str, now: datetime) -> None:
    OtaPush.objects.filter(pk=item.pk).update(state=State.FAILED, reason=reason, detail=detail[:300], finished_at=now)
    item.state = State.FAILED
    logger.warning("firmware %s on machine #%s failed: %s %s", item.rollout.image, item.machine_id, reason, detail)
    _record(
        item,
        gettext_noop("Firmware %(image)s on machine #%(machine)s failed: %(reason)s %(detail)s"),
        {"reason": Reason(reason).label, "detail": detail},
    )
    _stop(item.rollout, now)


def _stop(rollout: Rollout, now: datetime) -> None:
    if Rollout.objects.filter(pk=rollout.pk, state=Rollout.State.RUNNING).update(
        state=Rollout.State.FAILED, finished_at=now
    ):
        rollout.pushes.filter(state=State.WAITING).update(state=State.SKIPPED, reason=Reason.STOPPED, finished_at=now)
        audit.record(
            rollout,
            message=gettext_noop("Firmware rollout of %(image)s stopped after a failure."),
            params={"image": str(rollout.image)},
            actor=rollout.started_by,
        )


def _finish(rollout: Rollout, state: str, now: datetime) -> None:
    if Rollout.objects.filter(pk=rollout.pk, state=Rollout.State.RUNNING).update(state=state, finished_at=now):
        audit.record(
            rollout,
            message=gettext_noop("Firmware rollout of %(image)s finished."),
            params={"image": str(rollout.image)},
            actor=rollout.started_by,
        )


def _record(item: OtaPush, message: str, params: dict[str, Any]) -> None:
    """Every push in the audit trail, in the name of whoever started the rollout."""
    audit.record(
        item,
        message=message,
        params={"image": str(item.rollout.image), "machine": item.machine_id, **params},
        actor=item.rollout.started_by,
    )
