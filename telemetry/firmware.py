"""Firmware versions and images: what a board's ``alive`` version means, and what an uploaded image must be.

A board reports ``"version": "<PlatformIO environment>,<git describe>"`` (docs/protocol.md §2.7), for example
``hardware-rev0-it_IT,1.0.1-3-g0ab6099``: release 1.0.1 plus 3 commits. Fab-O-matic's releases publish one zip per
environment, ``FW-<env>-<version>.zip``, holding ``firmware.bin``. Everything here is parsed from untrusted text.
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.utils.translation import gettext as _

ENV_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
# v1.0.1, 1.0, 1.0.1-3-g0ab6099, 1.0.1-3-g0ab6099-dirty: numbers with at least one dot, then git describe's tail.
VERSION_RE = re.compile(
    r"v?(?P<numbers>\d{1,6}(?:\.\d{1,6}){1,3})(?:-(?P<ahead>\d{1,6})-g(?P<hash>[0-9a-f]{4,40}))?(?P<dirty>-dirty)?"
)
ZIP_NAME_RE = re.compile(rf"FW-(?P<env>{ENV_RE.pattern})-(?P<version>{VERSION_RE.pattern})\.zip", re.IGNORECASE)

ESP_IMAGE_MAGIC = 0xE9  # the first byte of an ESP32 application image (esp_image_header_t.magic)
MIN_IMAGE_BYTES = 4 * 1024
MAX_IMAGE_BYTES = 4 * 1024 * 1024  # larger than any application partition of a 4 MB ESP32
ZIP_MEMBER = "firmware.bin"


@dataclass(frozen=True)
class FirmwareVersion:
    """A board's firmware as reported: its environment ("" when absent) and version text; ``key`` orders versions,
    None when the text is no release version (a bare commit hash, garbage)."""

    environment: str
    version: str
    key: tuple[int, ...] | None

    def newer_than(self, other: FirmwareVersion) -> bool:
        return self.key is not None and (other.key is None or self.key > other.key)

    def same_release(self, other: FirmwareVersion) -> bool:
        """The same build: same environment and same version (compared as versions, ``v1.0`` = ``1.0``)."""
        if self.environment != other.environment:
            return False
        if self.key is not None and other.key is not None:
            return self.key == other.key
        return self.version == other.version


def version_key(text: str) -> tuple[int, ...] | None:
    """``1.0.1-3-g0ab6099`` → (1, 0, 1, 0, 3): numbers padded to four, then the commits after the tag."""
    match = VERSION_RE.fullmatch(text.strip())
    if match is None:
        return None
    numbers = [int(n) for n in match["numbers"].split(".")]
    return (*numbers, *[0] * (4 - len(numbers)), int(match["ahead"] or 0))


def parse_reported(text: str) -> FirmwareVersion:
    """The ``version`` of ``alive``: ``<env>,<version>``, or a bare version; never raises."""
    text = (text or "").strip()[:100]
    environment, comma, version = text.partition(",")
    if not comma:
        environment, version = "", text
    environment, version = environment.strip(), version.strip()
    if environment and not ENV_RE.fullmatch(environment):
        return FirmwareVersion("", text, None)
    return FirmwareVersion(environment, version, version_key(version))


@dataclass(frozen=True)
class Image:
    """A validated upload: the raw application image and what the portal records of it."""

    data: bytes
    environment: str
    version: str
    md5: str

    @property
    def size(self) -> int:
        return len(self.data)


def check_image(data: bytes) -> None:
    if len(data) < MIN_IMAGE_BYTES:
        raise ValidationError(
            _("The image is too small to be an ESP32 firmware (%(size)s bytes)."), params={"size": len(data)}
        )
    if len(data) > MAX_IMAGE_BYTES:
        raise ValidationError(_("The image is larger than 4 MB: it cannot be an ESP32 application."))
    if data[0] != ESP_IMAGE_MAGIC:
        raise ValidationError(_("This is not an ESP32 application image (its first byte is not 0xE9)."))


def read_upload(name: str, content: bytes, environment: str = "", version: str = "") -> Image:
    """A ``.bin`` (environment and version given by staff) or a release zip ``FW-<env>-<version>.zip`` holding only
    ``firmware.bin`` (environment and version from its name). Raises ValidationError with a reason to show."""
    base = name.rsplit("/", 1)[-1].rsplit("\\", 1)[-1]
    if base.lower().endswith(".zip"):
        match = ZIP_NAME_RE.fullmatch(base)
        if match is None:
            raise ValidationError(
                _("A release zip is named FW-<environment>-<version>.zip, e.g. FW-hardware-rev0-it_IT-1.0.4.zip.")
            )
        environment, version = match["env"], match["version"]
        data = _zip_member(content)
    elif base.lower().endswith(".bin"):
        data = content
        environment, version = environment.strip(), version.strip()
        if not ENV_RE.fullmatch(environment):
            raise ValidationError(_("Give the board environment of this image, e.g. hardware-rev0-it_IT."))
        if version_key(version) is None:
            raise ValidationError(_("Give the version of this image, e.g. 1.0.4 or 1.0.1-3-g0ab6099."))
    else:
        raise ValidationError(_("Upload a .bin firmware image or a release zip."))
    check_image(data)
    return Image(data, environment, version, hashlib.md5(data, usedforsecurity=False).hexdigest())


def _zip_member(content: bytes) -> bytes:
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            members = [info for info in archive.infolist() if not info.is_dir()]
            if len(members) != 1 or members[0].filename != ZIP_MEMBER:
                raise ValidationError(_("The zip must hold exactly one file, firmware.bin."))
            if members[0].file_size > MAX_IMAGE_BYTES:
                raise ValidationError(_("The image is larger than 4 MB: it cannot be an ESP32 application."))
            with archive.open(members[0]) as member:
                data = member.read(MAX_IMAGE_BYTES + 1)  # never more, whatever the header claims
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError) as exc:
        raise ValidationError(_("This is not a readable zip file.")) from exc
    if len(data) > MAX_IMAGE_BYTES:
        raise ValidationError(_("The image is larger than 4 MB: it cannot be an ESP32 application."))
    return data
