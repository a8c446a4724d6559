"""A minimal asyncio MQTT 3.1.1 client for the load generator: QoS 0 only, no keep-alive pings.

paho runs a thread per client; a thousand simulated boards in one process need something lighter, or the
generator, not the bridge, would be measured.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def connect_packet(client_id: str, keepalive: int = 0) -> bytes:
    body = _str("MQTT") + bytes([4, 0x02]) + struct.pack("!H", keepalive) + _str(client_id)
    return b"\x10" + _varint(len(body)) + body


def subscribe_packet(topics: list[str], packet_id: int = 1) -> bytes:
    body = struct.pack("!H", packet_id) + b"".join(_str(t) + b"\x00" for t in topics)
    return b"\x82" + _varint(len(body)) + body


def publish_packet(topic: str, payload: bytes) -> bytes:
    body = _str(topic) + payload
    return b"\x30" + _varint(len(body)) + body


class LiteClient(asyncio.Protocol):
    def __init__(self, on_message: Callable[[str, bytes], None]) -> None:
        self.on_message = on_message
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.connack = asyncio.get_running_loop().create_future()
        self.suback = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        while len(buf) >= 2:
            mult, length, i = 1, 0, 1
            while True:
                if i >= len(buf):
                    return
                byte = buf[i]
                length += (byte & 0x7F) * mult
                mult *= 128
                i += 1
                if not byte & 0x80:
                    break
            if len(buf) < i + length:
                return
            kind = buf[0] & 0xF0
            body = bytes(buf[i : i + length])
            del buf[: i + length]
            if kind == 0x30:
                tlen = struct.unpack("!H", body[:2])[0]
                self.on_message(body[2 : 2 + tlen].decode(), body[2 + tlen :])
            elif kind == 0x20 and not self.connack.done():
                self.connack.set_result(body[1])
            elif kind == 0x90 and not self.suback.done():
                self.suback.set_result(True)

    def connection_lost(self, exc: Exception | None) -> None:
        for fut in (self.connack, self.suback):
            if not fut.done():
                fut.set_exception(ConnectionError("connection lost"))

    def publish(self, topic: str, payload: bytes) -> None:
        assert self.transport is not None
        self.transport.write(publish_packet(topic, payload))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.write(b"\xe0\x00")  # DISCONNECT
            self.transport.close()


async def connect(
    host: str, port: int, client_id: str, subscribe: list[str], on_message: Callable[[str, bytes], None]
) -> LiteClient:
    loop = asyncio.get_running_loop()
    _transport, client = await loop.create_connection(lambda: LiteClient(on_message), host, port)
    client.transport.write(connect_packet(client_id))  # type: ignore[union-attr]
    if await asyncio.wait_for(client.connack, 10) != 0:
        raise ConnectionError("CONNECT refused")
    if subscribe:
        client.transport.write(subscribe_packet(subscribe))  # type: ignore[union-attr]
        await asyncio.wait_for(client.suback, 10)
    return client
