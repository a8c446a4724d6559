"""The portal in Italian and English: language switch, complete Italian catalogue, compiled catalogues up to date."""

from __future__ import annotations

import ast
import gettext
import html
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from .conftest import Lab

LOCALE = Path(settings.BASE_DIR) / "locale"
# What `makemessages` must not scan (the README's command): no UI strings there.
NOT_SCANNED = {".git", ".venv", "var", "tests", "bench", "locale", "node_modules", "__pycache__"}


pytestmark = pytest.mark.usefixtures("fast_passwords")


# --- a minimal .po reader (polib is not a dependency; msgfmt may not be installed) -----------------------


@dataclass
class Entry:
    msgid: str = ""
    msgid_plural: str | None = None
    msgctxt: str | None = None
    msgstr: str = ""
    msgstr_plural: dict[int, str] = field(default_factory=dict)
    flags: set[str] = field(default_factory=set)
    line: int = 0

    @property
    def translated(self) -> bool:
        if self.msgid_plural is not None:
            return bool(self.msgstr_plural) and all(self.msgstr_plural.values())
        return bool(self.msgstr)


def read_po(path: Path) -> list[Entry]:
    """Entries of a .po file, the header (msgid "") and obsolete (#~) ones excluded."""
    entries: list[Entry] = []
    entry = Entry()
    target: tuple[str, int | None] | None = None

    def flush() -> None:
        nonlocal entry, target
        if target is not None and entry.msgid:
            entries.append(entry)
        entry, target = Entry(), None

    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line:
            flush()
        elif line.startswith("#,"):
            if target is not None:  # a comment after a complete entry starts the next one
                flush()
            entry.flags.update(flag.strip() for flag in line[2:].split(","))
        elif line.startswith("#"):
            if target is not None:
                flush()
        else:
            keyword, _, rest = line.partition(" ")
            if line.startswith('"'):
                value = ast.literal_eval(line)
            else:
                value = ast.literal_eval(rest)
                if target is None or keyword in ("msgctxt", "msgid"):
                    entry.line = entry.line or number
                if keyword.startswith("msgstr["):
                    target = ("msgstr_plural", int(keyword[7:-1]))
                    entry.msgstr_plural[target[1]] = ""
                else:
                    target = (keyword, None)
                    setattr(entry, keyword, "")
            assert target is not None  # set above for the entry's first keyword
            name, index = target
            if index is None:
                setattr(entry, name, getattr(entry, name) + value)
            else:
                entry.msgstr_plural[index] += value
    flush()
    return entries


def catalogue(entries: list[Entry]) -> dict[object, str]:
    """What msgfmt puts in the .mo, keyed as gettext.GNUTranslations keys its catalogue."""
    out: dict[object, str] = {}
    for e in entries:
        if "fuzzy" in e.flags or not e.translated:
            continue
        msgid = f"{e.msgctxt}\x04{e.msgid}" if e.msgctxt is not None else e.msgid
        if e.msgid_plural is None:
            out[msgid] = e.msgstr
        else:
            out.update({(msgid, n): text for n, text in e.msgstr_plural.items()})
    return out


# --- the catalogues ---------------------------------------------------------------------------------------


def test_it_translates_every_italian_entry_with_no_fuzzy_left() -> None:
    entries = read_po(LOCALE / "it" / "LC_MESSAGES" / "django.po")
    assert len(entries) > 300  # the reader really read the file
    untranslated = [f"line {e.line}: {e.msgid!r}" for e in entries if not e.translated]
    fuzzy = [f"line {e.line}: {e.msgid!r}" for e in entries if "fuzzy" in e.flags]
    assert not untranslated, "untranslated Italian strings:\n" + "\n".join(untranslated)
    assert not fuzzy, "fuzzy Italian strings (check and remove the flag):\n" + "\n".join(fuzzy)
    plurals = [e for e in entries if e.msgid_plural is not None]
    assert plurals and all(sorted(e.msgstr_plural) == [0, 1] for e in plurals)


def test_it_declares_italian_and_its_plural_forms_in_the_header() -> None:
    header = (LOCALE / "it" / "LC_MESSAGES" / "django.po").read_text(encoding="utf-8").split("\n\n", 1)[0]
    assert '"Language: it\\n"' in header
    assert '"Plural-Forms: nplurals=2; plural=(n != 1);\\n"' in header
    assert "#, fuzzy" not in header


@pytest.mark.parametrize("language", ["it", "en"])
def test_it_ships_a_compiled_catalogue_identical_to_the_po(language: str) -> None:
    folder = LOCALE / language / "LC_MESSAGES"
    with (folder / "django.mo").open("rb") as mo:
        compiled = gettext.GNUTranslations(mo)
    # "" is the header. The parsed messages are only in GNUTranslations._catalog, which typeshed leaves out.
    compiled_entries = {k: v for k, v in compiled._catalog.items() if k != ""}  # type: ignore[attr-defined]
    expected = catalogue(read_po(folder / "django.po"))
    stale = {k: v for k, v in expected.items() if compiled_entries.get(k) != v}
    extra = set(compiled_entries) - set(expected)
    assert not stale and not extra, (
        f"{language}: django.mo is out of date with django.po ({len(stale)} changed or missing, {len(extra)} extra): "
        "run manage.py compilemessages and commit the .mo"
    )
    assert compiled.info().get("language") == language


@pytest.mark.skipif(shutil.which("xgettext") is None, reason="makemessages needs GNU gettext (scripts/setup.sh test)")
def test_it_has_every_translatable_string_of_the_code_in_the_italian_catalogue(
    tmp_path: Path, settings, monkeypatch
) -> None:
    """makemessages run on a copy of the sources finds no string missing from the committed Italian .po."""
    root = Path(settings.BASE_DIR)
    for item in root.iterdir():
        if item.is_dir() and item.name not in NOT_SCANNED and not item.name.startswith("."):
            shutil.copytree(item, tmp_path / item.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (tmp_path / "locale").mkdir()
    settings.LOCALE_PATHS = [tmp_path / "locale"]
    monkeypatch.chdir(tmp_path)
    call_command("makemessages", locale=["it"], verbosity=0)
    assert os.getcwd() == str(tmp_path)

    def keys(path: Path) -> set[tuple[str | None, str, str | None]]:
        return {(e.msgctxt, e.msgid, e.msgid_plural) for e in read_po(path)}

    in_code = keys(tmp_path / "locale" / "it" / "LC_MESSAGES" / "django.po")
    assert len(in_code) > 300
    missing = sorted(in_code - keys(LOCALE / "it" / "LC_MESSAGES" / "django.po"), key=str)
    assert not missing, (
        "strings in the code but not in locale/it/LC_MESSAGES/django.po: run `make messages`, translate them, "
        "compile and commit:\n" + "\n".join(repr(m[1]) for m in missing)
    )


def test_it_reads_po_entries_as_msgfmt_would(tmp_path: Path) -> None:
    """The reader above copes with wrapped lines, plurals, contexts, flags and obsolete entries."""
    po = tmp_path / "django.po"
    po.write_text(
        'msgid ""\nmsgstr ""\n"Language: it\\n"\n\n'
        '#: a.py:1\n#, python-format\nmsgid ""\n"Long %(n)s "\n"text"\nmsgstr "Testo %(n)s lungo"\n\n'
        'msgctxt "door"\nmsgid "Open"\nmsgstr "Aperta"\n\n'
        'msgid "%(n)d use"\nmsgid_plural "%(n)d uses"\nmsgstr[0] "%(n)d utilizzo"\nmsgstr[1] ""\n\n'
        '#, fuzzy\nmsgid "Free"\nmsgstr "Libera"\n\n'
        '#~ msgid "Old"\n#~ msgstr "Vecchio"\n',
        encoding="utf-8",
    )
    entries = read_po(po)
    assert [(e.msgctxt, e.msgid, e.translated, "fuzzy" in e.flags) for e in entries] == [
        (None, "Long %(n)s text", True, False),
        ("door", "Open", True, False),
        (None, "%(n)d use", False, False),
        (None, "Free", True, True),
    ]
    assert catalogue(entries) == {"Long %(n)s text": "Testo %(n)s lungo", "door\x04Open": "Aperta"}


# --- the portal in each language --------------------------------------------------------------------------


def page(client: Client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200
    return html.unescape(response.content.decode())


def switch(client: Client, language: str) -> None:
    response = client.post("/i18n/setlang/", {"language": language, "next": reverse("admin:index")})
    assert response.status_code == 302
    assert response.cookies[settings.LANGUAGE_COOKIE_NAME].value == language


@pytest.mark.django_db
def test_it_shows_the_portal_in_italian_after_switching_language(admin_client: Client, lab: Lab) -> None:
    switch(admin_client, "it")

    index = page(admin_client, reverse("admin:index"))
    assert '<html lang="it"' in index
    for text in ("Stato delle macchine", "Macchine per stato", "Libera", "Soci", "Tessere non riconosciute"):
        assert text in index, text
    assert "Machines status" not in index

    members = page(admin_client, reverse("admin:members_member_changelist"))
    for text in ("Soci attuali", "Ha una tessera attiva", "Nome, cognome, e-mail o UID della tessera", "disabilitato"):
        assert text in members, text
    assert "Current members" not in members

    machine = page(admin_client, reverse("admin:machines_machine_change", args=[lab.laser.pk]))
    for text in (
        "Stato e controllo remoto",
        "Contaore",
        "Avvio remoto",
        "Storico della manutenzione",
        "Ore di utilizzo per settimana",
        "Ancora nessun utilizzo",
    ):
        assert text in machine, text
    assert "Status and remote control" not in machine


@pytest.mark.django_db
def test_it_shows_the_portal_in_english_when_english_is_chosen(admin_client: Client, lab: Lab) -> None:
    switch(admin_client, "it")
    switch(admin_client, "en")

    index = page(admin_client, reverse("admin:index"))
    assert '<html lang="en"' in index
    assert "Machines status" in index and "Stato delle macchine" not in index
    members = page(admin_client, reverse("admin:members_member_changelist"))
    assert "Current members" in members and "Soci attuali" not in members
    machine = page(admin_client, reverse("admin:machines_machine_change", args=[lab.laser.pk]))
    assert "Status and remote control" in machine and "Stato e controllo remoto" not in machine
