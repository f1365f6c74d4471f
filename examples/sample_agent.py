#!/usr/bin/env python3
"""A sample Agent for daemon.pyz: sends heartbeats on the daemon's Unix socket (docs/agent-protocol.md).

Python standard library only. The fault flags make it misbehave on purpose, for tests and drills:
  --crash-after N        exit with code 3 after N seconds
  --no-heartbeat         run but never send a heartbeat
  --burn-cpu             spin one core (for --burn-for seconds, 0 = forever)
  --grow-memory MB_PER_S allocate and touch this many MiB every second
  --exit-at-start CODE   exit at once with CODE
  --config FILE          read "key: value" lines from FILE at start (a missing file is fine):
                         exit-at-start: CODE, no-heartbeat: true, crash-after: N override the flags,
                         so a pushed config can make it crash or go silent (remote config tests);
                         crash-once: PATH exits with code 5 at start unless PATH exists (creating it);
                         SIGHUP re-reads FILE (exit-at-start then exits at once with CODE; a key
                         the file no longer has goes back to its flag's value);
                         heartbeat-before-reread: true sends one heartbeat on SIGHUP before
                         re-reading, as an Agent whose heartbeat races the signal would
SIGTERM exits cleanly (code 0). When the socket goes away it reconnects.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
from datetime import datetime, timezone

VERSION = "1.0.0"  # updates replace this file with a copy whose VERSION differs (sed-friendly)

PAGE = os.sysconf("SC_PAGE_SIZE")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--socket", default=os.environ.get("AGENT_SOCKET", ""),
                   help="heartbeat socket (default: $AGENT_SOCKET)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between heartbeats (default 5)")
    p.add_argument("--version", default=VERSION, help=f"version to report (default {VERSION})")
    p.add_argument("--crash-after", type=float, default=0.0, metavar="N", help="exit 3 after N seconds")
    p.add_argument("--no-heartbeat", action="store_true", help="never send a heartbeat")
    p.add_argument("--burn-cpu", action="store_true", help="spin one core")
    p.add_argument("--burn-for", type=float, default=0.0, metavar="S", help="stop burning after S seconds")
    p.add_argument("--grow-memory", type=float, default=0.0, metavar="MB_PER_S",
                   help="allocate this many MiB per second")
    p.add_argument("--exit-at-start", type=int, default=None, metavar="CODE", help="exit at once with CODE")
    p.add_argument("--config", default="", metavar="FILE", help="settings file read at start")
    args = p.parse_args(argv)
    args.heartbeat_before_reread = False
    args.flags = {key: getattr(args, key) for key in CONFIG_KEYS.values()}
    if args.config:
        apply_config(args, args.config)
    return args


CONFIG_KEYS = {"exit-at-start": "exit_at_start", "no-heartbeat": "no_heartbeat", "crash-after": "crash_after",
               "heartbeat-before-reread": "heartbeat_before_reread"}


def apply_config(args: argparse.Namespace, path: str) -> None:
    """The fault settings a config file may carry, over the flags; anything else in it is ignored."""
    for attr, value in args.flags.items():
        setattr(args, attr, value)
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = fh.read(65536).splitlines()
    except FileNotFoundError:
        return
    for line in lines:
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "exit-at-start":
            args.exit_at_start = int(value)
        elif key == "no-heartbeat":
            args.no_heartbeat = value.lower() == "true"
        elif key == "crash-after":
            args.crash_after = float(value)
        elif key == "heartbeat-before-reread":
            args.heartbeat_before_reread = value.lower() == "true"
        elif key == "crash-once" and value and not os.path.exists(value):
            open(value, "w").close()
            args.exit_at_start = 5


def log(message: str) -> None:
    print(f"sample-agent[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


def rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * PAGE


class Heartbeats:
    """One connection to the daemon, re-made whenever it breaks."""

    def __init__(self, path: str, version: str) -> None:
        self.path = path
        self.version = version
        self.sock: socket.socket | None = None
        self._cpu_mark = (time.monotonic(), sum(os.times()[:2]))

    def send(self) -> bool:
        now, cpu = time.monotonic(), sum(os.times()[:2])
        then, cpu_then = self._cpu_mark
        self._cpu_mark = (now, cpu)
        beat = {
            "pid": os.getpid(),
            "timestamp": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),  # noqa: UP017
            "version": self.version,
            "status": "running",
            "cpu": round((cpu - cpu_then) / max(now - then, 1e-6) * 100.0, 2),
            "memory": rss_bytes(),
        }
        line = (json.dumps(beat) + "\n").encode()
        for _ in range(2):  # a stale connection fails once; the second try uses a fresh one
            try:
                if self.sock is None:
                    self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    self.sock.settimeout(2.0)
                    self.sock.connect(self.path)
                self.sock.sendall(line)
                return True
            except OSError:
                self.close()
        return False

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def burn(stop: threading.Event, seconds: float) -> None:
    until = time.monotonic() + seconds if seconds > 0 else float("inf")
    while not stop.is_set() and time.monotonic() < until:
        sum(range(10_000))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.exit_at_start is not None:
        log(f"exiting at start with code {args.exit_at_start} as asked")
        return args.exit_at_start
    if not args.socket and not args.no_heartbeat:
        log("no socket: pass --socket or set AGENT_SOCKET")
        return 2
    stop = threading.Event()
    reread = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if args.config:
        signal.signal(signal.SIGHUP, lambda *_: (reread.set(), stop.set()))
    log(f"version {args.version} started, socket {args.socket or '-'}")
    if args.burn_cpu:
        threading.Thread(target=burn, args=(stop, args.burn_for), daemon=True).start()
    hb = Heartbeats(args.socket, args.version)
    hoard: list[bytes] = []
    started = time.monotonic()
    next_beat = started
    next_grow = started + 1.0
    connected: bool | None = None
    while not stop.is_set() or reread.is_set():
        if reread.is_set():
            reread.clear()
            stop.clear()
            if args.heartbeat_before_reread and not args.no_heartbeat:
                hb.send()  # made under the old config, after the signal
            apply_config(args, args.config)
            log(f"SIGHUP: re-read {args.config}")
            if args.exit_at_start is not None:
                log(f"exiting with code {args.exit_at_start} as the new config asks")
                return args.exit_at_start
        now = time.monotonic()
        if args.crash_after and now - started >= args.crash_after:
            log(f"crashing after {args.crash_after:g}s as asked")
            os._exit(3)
        if args.grow_memory and now >= next_grow:
            hoard.append(b"\x01" * int(args.grow_memory * 1024 * 1024))  # touched, so it counts in RSS
            next_grow += 1.0
        if not args.no_heartbeat and now >= next_beat:
            sent = hb.send()
            if sent != connected:  # log transitions only: a daemon restart must not flood stderr
                connected = sent
                log(f"heartbeat socket {args.socket} {'connected' if sent else 'unavailable; retrying'}")
            next_beat = now + (args.interval if hb.sock is not None else min(args.interval, 1.0))
        wakes = [next_grow if args.grow_memory else None, None if args.no_heartbeat else next_beat,
                 started + args.crash_after if args.crash_after else None]
        due = min((w for w in wakes if w is not None), default=now + 3600.0)
        stop.wait(max(0.0, due - time.monotonic()))
    hb.close()
    log("SIGTERM received, exiting")
    return 0


if __name__ == "__main__":
    sys.exit(main())
