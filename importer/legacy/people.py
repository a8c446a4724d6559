"""People: roles, members (users of the old backend) and their cards."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.hashers import make_password
from django.core.exceptions import ValidationError
from django.core.validators import validate_email

from members.models import ANONYMOUS_ROLE, CARD_UID_RE, Card, Member, Role, normalize_uid

from .run import Run
from .source import BATCH, LegacyImportError, as_int, as_text

DEFAULT_ROLE = "Fab Users"


def roles(run: Run) -> None:
    t = run.tally("Roles")
    by_legacy = {r.legacy_id: r for r in Role.objects.filter(legacy_id__isnull=False)}
    by_name = {r.name: r for r in Role.objects.all()}
    for row in run.source.rows(
        "SELECT role_id, role_name, authorize_all, reserved, maintenance, backend_admin FROM roles ORDER BY role_id"
    ):
        t.found += 1
        flags = {k: bool(row[k]) for k in ("authorize_all", "maintenance", "backend_admin")}
        name = as_text(row["role_name"], 100) or f"Role {row['role_id']}"
        role = by_legacy.get(row["role_id"]) or by_name.get(name)
        if role is None:
            role = Role.objects.create(name=name, reserved=bool(row["reserved"]), legacy_id=row["role_id"], **flags)
            by_name[name] = role
            t.created += 1
        else:
            t.existing += 1
            if role.legacy_id is None:  # matched by name: link it once and take the old flags
                changed = [f"{k}={v}" for k, v in flags.items() if getattr(role, k) != v]
                for k, v in flags.items():
                    setattr(role, k, v)
                role.reserved = role.reserved or bool(row["reserved"])
                role.legacy_id = row["role_id"]
                role.save()
                if changed:
                    run.warn(f"Role {name!r} takes its flags from the old database: {', '.join(changed)}.")
        if role.authorize_all and not role.reserved:
            # The portal shows it too (members/admin.py warn_broad_roles) until staff untick it.
            run.warn(f"Role {name!r} opens every machine to its members (authorize all); review it in the portal.")
        run.role_map[row["role_id"]] = role.pk


@dataclass(eq=False)
class _Users:
    """What ``members`` knows while it walks the old users."""

    anonymous_roles: set[int]  # old role ids named "Anonymous": their user is the placeholder
    admin_roles: set[int]  # Role.pk of the roles with backend_admin
    # lower-case e-mail -> (pk, or None when created in this run; legacy_id)
    emails: dict[str, tuple[int | None, int | None]]
    fallback_role: int | None = None  # DEFAULT_ROLE's pk, fetched when a user's role is unknown
    cards: list[tuple[int, Any]] = field(default_factory=list)  # (old user_id, card UID as stored there)
    new: list[Member] = field(default_factory=list)


def members(run: Run) -> None:
    """The old users, then their cards: an earlier import's members are found again, the old "Anonymous" user is
    ours, a user with the e-mail of a member created here before the import is merged into it."""
    t = run.tally("Members")
    by_legacy = run.legacy_map(Member)
    check_same_database(run, by_legacy)
    users = _Users(
        anonymous_roles={
            r["role_id"]
            for r in run.source.con.execute("SELECT role_id FROM roles WHERE role_name = ?", (ANONYMOUS_ROLE,))
        },
        admin_roles=set(Role.objects.filter(backend_admin=True).values_list("pk", flat=True)),
        emails={
            e.lower(): (pk, legacy)
            for pk, e, legacy in Member.objects.filter(email__isnull=False).values_list("pk", "email", "legacy_id")
            if e is not None  # never None (the filter): narrows the type
        },
    )
    sql = (
        "SELECT user_id, name, surname, role_id, card_UUID AS card, disabled, deleted, email, "
        f"{run.source.col('users', 'receive_weekly_summary', '0')} FROM users ORDER BY user_id"
    )
    for row in run.source.rows(sql):
        t.found += 1
        uid = row["user_id"]
        if uid in by_legacy:
            run.member_map[uid] = by_legacy[uid]
            t.existing += 1
        elif row["role_id"] in users.anonymous_roles:  # the old placeholder user: ours, not a copy (and no card)
            _map_anonymous(run, uid)
            t.existing += 1
            continue
        else:
            email = _valid_email(run, row)
            if (merged := _merge_by_email(run, users, uid, email)) is not None:
                run.member_map[uid] = merged
                t.existing += 1
            else:
                users.new.append(_new_member(run, users, row, _unused_email(run, users, row, email)))
        users.cards.append((uid, row["card"]))
    Member.objects.bulk_create(users.new, batch_size=BATCH)
    t.created += len(users.new)
    run.member_map.update({k: v for k, v in run.legacy_map(Member).items() if k not in run.member_map})
    run.report.staff_without_password = list(
        Member.objects.filter(legacy_id__isnull=False, is_staff=True, password__startswith="!")
        .order_by("email")
        .values_list("email", flat=True)
    )
    cards(run, users.cards)


def _map_anonymous(run: Run, uid: int) -> None:
    anonymous = Member.objects.anonymous()
    if anonymous.legacy_id is None:
        Member.objects.filter(pk=anonymous.pk).update(legacy_id=uid)
    run.member_map[uid] = anonymous.pk


def _valid_email(run: Run, row: sqlite3.Row) -> str | None:
    """The user's e-mail, normalised as create_user does (the domain in lower case); None when absent or invalid."""
    email = as_text(row["email"], 254) or None
    if not email:
        return None
    try:
        validate_email(email)
    except ValidationError:
        run.warn(f"User {row['user_id']} ({row['name']} {row['surname']}): invalid e-mail {email!r} dropped.")
        return None
    return Member.objects.normalize_email(email)


def _merge_by_email(run: Run, users: _Users, uid: int, email: str | None) -> int | None:
    """The pk of the member created here before the import (e.g. the first admin) with this e-mail, now linked to
    the old user: the same person. None when there is none."""
    if not email:
        return None
    hit = users.emails.get(email.lower())
    if not (hit and hit[0] is not None and hit[1] is None):
        return None
    Member.objects.filter(pk=hit[0]).update(legacy_id=uid)
    users.emails[email.lower()] = (hit[0], uid)
    run.warn(f"User {uid} merged into the existing member with e-mail {email}.")
    return hit[0]


def _unused_email(run: Run, users: _Users, row: sqlite3.Row, email: str | None) -> str | None:
    """The e-mail for a new member, or None when another member (here or earlier in the old file) already has it."""
    if not email:
        return None
    if email.lower() in users.emails:
        run.warn(f"User {row['user_id']} ({row['name']} {row['surname']}): e-mail {email} is already used; dropped.")
        return None
    users.emails[email.lower()] = (None, row["user_id"])
    return email


def _new_member(run: Run, users: _Users, row: sqlite3.Row, email: str | None) -> Member:
    uid = row["user_id"]
    role_pk = run.role_map.get(row["role_id"])
    if role_pk is None:
        if users.fallback_role is None:
            users.fallback_role = Role.objects.get_or_create(name=DEFAULT_ROLE)[0].pk
        role_pk = users.fallback_role
        run.warn(f"User {uid}: unknown role {row['role_id']}; given the role {DEFAULT_ROLE!r}.")
    weekly = bool(as_int(row["receive_weekly_summary"]))
    if weekly and not email:
        weekly = False
        run.warn(f"User {uid}: weekly summary opt-in dropped (no e-mail).")
    staff = role_pk in users.admin_roles and email is not None
    return Member(
        email=email,
        first_name=as_text(row["name"], 150) or "?",
        last_name=as_text(row["surname"], 150),
        role_id=role_pk,
        disabled=bool(row["disabled"]),
        deleted_at=run.now if row["deleted"] else None,
        receive_weekly_summary=weekly,
        # Old portal admins had the whole web UI; there was no finer permission model.
        is_staff=staff,
        is_superuser=staff,
        password=make_password(None),  # Werkzeug hashes are not Django's: unusable, reset by e-mail
        date_joined=run.now,
        legacy_id=uid,
    )


def check_same_database(run: Run, by_legacy: dict[int, int]) -> None:
    """Refuse a different old database on top of an earlier import: their ids would collide.

    Names may have been edited here since the first import, so only a majority of differences counts.
    """
    if not by_legacy:
        return
    here = {
        legacy: first.casefold()
        for legacy, first in Member.objects.filter(legacy_id__isnull=False, deleted_at__isnull=True).values_list(
            "legacy_id", "first_name"
        )
    }
    matched = different = 0
    for row in run.source.con.execute("SELECT user_id, name FROM users"):
        if row["user_id"] in here:
            matched += 1
            different += here[row["user_id"]] != as_text(row["name"], 150).casefold()
    if different >= 2 and different * 2 > matched:
        raise LegacyImportError(
            f"{different} of the {matched} members imported before with the same old ids have other names: "
            "this looks like a different FabOMatic database than the one imported before, and its ids would "
            "collide. Import only (newer copies of) the same database; nothing was imported."
        )


def cards(run: Run, cards: list[tuple[int, Any]]) -> None:
    """The members' cards (one per old user at most), unique per UID."""
    t = run.tally("Cards")
    owners = dict(Card.objects.values_list("uid", "member_id"))
    new: list[Card] = []
    without = 0
    for user_id, raw in cards:
        if raw is None or str(raw).strip() == "":
            without += 1
            continue
        t.found += 1
        uid = normalize_uid(raw)
        member_pk = run.member_map[user_id]
        if not CARD_UID_RE.match(uid):
            t.skipped += 1
            run.warn(f"User {user_id}: card UID {raw!r} is not 8 or 14 hex characters; skipped.")
        elif uid in owners:
            if owners[uid] == member_pk:
                t.existing += 1
            else:
                t.skipped += 1
                run.warn(f"User {user_id}: card {uid} already belongs to another member; skipped.")
        else:
            owners[uid] = member_pk
            new.append(Card(uid=uid, member_id=member_pk, created_at=run.now))
    Card.objects.bulk_create(new, batch_size=BATCH)
    t.created += len(new)
    if without:
        run.warn(f"Cards: {without} user(s) have no card UID; imported without a card.")
