"""Firmware versions reported in ``alive`` and the validation of uploaded images (telemetry/firmware.py)."""

from __future__ import annotations

import io
import os
import zipfile

import pytest
from django.core.exceptions import ValidationError

from telemetry.firmware import FirmwareVersion, parse_reported, read_upload, version_key

BIN = b"\xe9" + os.urandom(8000)


@pytest.mark.parametrize(
    ("reported", "environment", "version", "key"),
    [
        ("hardware-rev0-it_IT,1.0.1-3-g0ab6099", "hardware-rev0-it_IT", "1.0.1-3-g0ab6099", (1, 0, 1, 0, 3)),
        ("hardware-rev0-it_IT,v1.0.4", "hardware-rev0-it_IT", "v1.0.4", (1, 0, 4, 0, 0)),
        ("wokwi,1.0.1-3-g0ab6099-dirty", "wokwi", "1.0.1-3-g0ab6099-dirty", (1, 0, 1, 0, 3)),
        ("1.0.4", "", "1.0.4", (1, 0, 4, 0, 0)),
        ("esp32-s3-devkitc-1-en_US,0ab6099", "esp32-s3-devkitc-1-en_US", "0ab6099", None),  # no tag: a bare hash
        ("", "", "", None),
        ("garbage with spaces,1.0", "", "garbage with spaces,1.0", None),
        ("env,1.0.4; DROP TABLE", "env", "1.0.4; DROP TABLE", None),
        ("hardware-rev0-it_IT,", "hardware-rev0-it_IT", "", None),
    ],
)
def test_parse_reported(reported: str, environment: str, version: str, key: tuple[int, ...] | None) -> None:
    parsed = parse_reported(reported)
    assert (parsed.environment, parsed.version, parsed.key) == (environment, version, key)


def test_versions_order_like_releases() -> None:
    ordered = ["0.9", "1.0", "v1.0.1", "1.0.1-3-g0ab6099", "1.0.1-12-gdeadbee", "1.0.4", "1.0.10", "2.0.0"]
    keys = [version_key(v) for v in ordered]
    assert keys == sorted(keys)  # type: ignore[type-var]
    assert len(set(keys)) == len(keys)
    newer, older = parse_reported("e,1.0.4"), parse_reported("e,1.0.1-3-g0ab6099")
    assert newer.newer_than(older) and not older.newer_than(newer)
    assert newer.newer_than(FirmwareVersion("e", "0ab6099", None))
    assert parse_reported("e,v1.0.4").same_release(parse_reported("e,1.0.4"))
    assert not parse_reported("e,1.0.4").same_release(parse_reported("f,1.0.4"))


def zipped(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_release_zip_gives_environment_and_version() -> None:
    image = read_upload("FW-hardware-rev0-it_IT-1.0.1-3-g0ab6099.zip", zipped({"firmware.bin": BIN}))
    assert (image.environment, image.version, image.data, image.size) == (
        "hardware-rev0-it_IT",
        "1.0.1-3-g0ab6099",
        BIN,
        len(BIN),
    )
    assert read_upload("FW-wokwi-v1.0.4.zip", zipped({"firmware.bin": BIN})).version == "v1.0.4"


def test_bin_takes_environment_and_version_from_the_form() -> None:
    image = read_upload("firmware.bin", BIN, "hardware-rev0-it_IT", "1.0.4")
    assert (image.environment, image.version) == ("hardware-rev0-it_IT", "1.0.4")
    assert len(image.md5) == 32


@pytest.mark.parametrize(
    ("name", "content", "env", "version"),
    [
        ("firmware.bin", b"\x00" + BIN[1:], "e", "1.0"),  # not an ESP32 image (magic byte)
        ("firmware.bin", BIN[:1000], "e", "1.0"),  # too small
        ("firmware.bin", b"\xe9" + bytes(4 * 1024 * 1024), "e", "1.0"),  # too large
        ("firmware.bin", BIN, "", "1.0"),  # no environment
        ("firmware.bin", BIN, "e", "latest"),  # no version
        ("firmware.elf", BIN, "e", "1.0"),
        ("release.zip", zipped({"firmware.bin": BIN}), "", ""),  # not named FW-<env>-<version>.zip
        ("FW-e-1.0.zip", zipped({"firmware.bin": BIN, "README": b"x"}), "", ""),  # more than firmware.bin
        ("FW-e-1.0.zip", zipped({"app.bin": BIN}), "", ""),
        ("FW-e-1.0.zip", b"PK\x03\x04 not a zip", "", ""),
        ("FW-e-1.0.zip", zipped({"firmware.bin": bytes(8 * 1024 * 1024)}), "", ""),  # a zip bomb's small cousin
    ],
)
def test_invalid_uploads_are_refused(name: str, content: bytes, env: str, version: str) -> None:
    with pytest.raises(ValidationError):
        read_upload(name, content, env, version)
