"""The running servers, each with the way to start it again, stopped by PID when the run ends.

A server that the previous scenario left busy (it never became idle within the settle timeout)
is restarted before its next measurement, and the restart is noted in the report: one broken
instance must not turn every later figure into a timeout. A cache target is also restarted,
without a note, when a scenario needs its cache cold (a new, empty cache directory).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from servers import Server

RELAYED = "@relay"  # key suffix: an S3 proxy that reaches SeaweedFS through relay.py


@dataclass
class Fleet:
    stack: contextlib.ExitStack
    servers: dict[str, Server] = field(default_factory=dict)
    launchers: dict[str, Callable[[], Server]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warm: set[str] = field(default_factory=set)  # keys whose cache holds the big object

    def launch(self, key: str, launcher: Callable[[], Server]) -> Server:
        print(f"starting {key}", flush=True)
        server = launcher()
        self.stack.callback(server.stop)
        self.servers[key], self.launchers[key] = server, launcher
        self.warm.discard(key)
        return server

    def relaunch(self, key: str, reason: str) -> Server:
        self.notes.append(f"{key}: {reason}; restarted")
        print(f"  ({key}: {reason}; restarting it)", flush=True)
        return self.restart(key)

    def restart(self, key: str) -> Server:
        """Stop the server and start it the same way (a cache target: with an empty cache)."""
        self.servers[key].stop()
        return self.launch(key, self.launchers[key])

    def keys(self, relayed: bool) -> list[str]:
        """The servers to measure: with relayed, S3 proxies are their relayed instances."""
        plain = [key for key in self.servers if not key.endswith(RELAYED)]
        if not relayed:
            return plain
        return [key + RELAYED if key + RELAYED in self.servers else key for key in plain]
