"""The MTA side of the milter protocol, as Postfix speaks it: enough to drive
the relay's milter listener step by step and read every reply."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

# Replies that end a step (the others, header changes, come before them).
FINAL = frozenset(b"catryO")
ALL_ACTIONS = 0x1FF
ALL_STEPS = 0x1FFFFF & ~0x1000  # everything Postfix 3.7 offers, SMFIP_NR_* aside


@dataclass(frozen=True)
class Reply:
    code: str
    data: bytes

    @property
    def text(self) -> str:
        return self.data.rstrip(b"\0").decode("ascii")


class MilterClient:
    def __init__(self, port: int | str, host: str = "127.0.0.1", timeout: float = 30) -> None:
        """port: a TCP port on host, or the path of a Unix socket."""
        if isinstance(port, str):
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.settimeout(timeout)
            self.sock.connect(port)
        else:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        self.leading_space = False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> MilterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, command: str, data: bytes = b"") -> None:
        self.sock.sendall(struct.pack(">I", len(data) + 1) + command.encode() + data)

    def _exact(self, size: int) -> bytes:
        chunks = b""
        while len(chunks) < size:
            chunk = self.sock.recv(size - len(chunks))
            if not chunk:
                raise ConnectionError("milter closed the connection")
            chunks += chunk
        return chunks

    def read(self) -> Reply:
        (length,) = struct.unpack(">I", self._exact(4))
        packet = self._exact(length)
        return Reply(chr(packet[0]), packet[1:])

    def step(self, command: str, data: bytes = b"") -> list[Reply]:
        """Send a command; every reply up to the one that ends the step."""
        self.send(command, data)
        replies = [self.read()]
        while ord(replies[-1].code) not in FINAL:
            replies.append(self.read())
        return replies

    # The commands -------------------------------------------------------------
    def negotiate(self, actions: int = ALL_ACTIONS, steps: int = ALL_STEPS) -> tuple[int, ...]:
        (reply,) = self.step("O", struct.pack(">III", 6, actions, steps))
        assert reply.code == "O", reply
        version, actions, protocol = struct.unpack(">III", reply.data[:12])
        self.leading_space = bool(protocol & 0x100000)
        return version, actions, protocol

    def macros(self, command: str, values: dict[str, str]) -> None:
        data = b"".join(f"{k}\0{v}\0".encode() for k, v in values.items())
        self.send("D", command.encode() + data)

    def connect(self, address: str = "192.0.2.7", hostname: str = "client.test") -> Reply:
        family = b"6" if ":" in address else b"4"
        data = hostname.encode() + b"\0" + family + struct.pack(">H", 40000)
        return self.step("C", data + address.encode() + b"\0")[-1]

    def helo(self, name: str = "client.test") -> Reply:
        return self.step("H", name.encode() + b"\0")[-1]

    def mail(self, sender: str, *args: str, **macros: str) -> Reply:
        if macros:
            self.macros("M", macros)
        data = b"".join(a.encode() + b"\0" for a in (f"<{sender}>", *args))
        return self.step("M", data)[-1]

    def rcpt(self, recipient: str) -> Reply:
        return self.step("R", f"<{recipient}>".encode() + b"\0")[-1]

    def message(self, content: bytes, chunk: int = 65535) -> list[Reply]:
        """Headers one by one, then the body in chunks, then end of message:
        the replies of the last step (header changes and the final one)."""
        head, _, body = content.partition(b"\r\n\r\n")
        (data,) = self.step("T")
        if data.code != "c":
            return [data]
        fields: list[bytes] = []
        for line in head.split(b"\r\n"):
            if line[:1] in (b" ", b"\t") and fields:
                fields[-1] += b"\n" + line  # Postfix passes folded lines with LF
            else:
                fields.append(line)
        for field in fields:
            name, _, value = field.partition(b":")
            if not self.leading_space:
                value = value.removeprefix(b" ")
            (reply,) = self.step("L", name + b"\0" + value + b"\0")
            if reply.code != "c":
                return [reply]
        (reply,) = self.step("N")
        if reply.code != "c":
            return [reply]
        for i in range(0, len(body), chunk):
            (reply,) = self.step("B", body[i : i + chunk])
            if reply.code != "c":
                return [reply]
        return self.step("E")

    def abort(self) -> None:
        self.send("A")

    def quit(self) -> None:
        self.send("Q")
