"""Scale, not only speed: the gateway's accept rate and memory with 1,000 idle SMTP connections
held open, and with 100,000 entries already in its spool; `mxdesk queue list` on that spool.

Two parts, each on fresh instances of `mxdesk store` + `mxdesk gateway` (verdicts on, as in
bench/accept_rate.py), the load from Postfix's smtp-source as there:

  idle:  the load without idle connections, then with --idle connections open (each greeted,
         EHLO sent, then silent: a client that connected and stalls, from 50 loopback
         addresses so that the per-client cap does not refuse them), alternating --repeat
         times; the gateway's RSS before and with them; at the end every idle connection must
         still answer NOOP with 250 (none was dropped to make room).
  spool: one instance with an empty spool and one whose spool holds --spool entries (inbound
         entries deferred for an hour as after a long outage of the store, every 10th held,
         every 50th outbound), the load alternating between them --repeat times; the seeded
         gateway's start-up time; `mxdesk queue list` (first page, page 500 and --all
         --json) and `mxdesk status` on the seeded spool, wall clock.

    .venv/bin/python bench/scale.py [--idle 1000] [--spool 100000] [--messages 2000]
        [--sessions 10] [--repeat 2] [--part idle|spool|both]
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accept_rate import MAILBOX, add_load_arguments, drive, new_dir, sender_dns, smtp_source
from daemons import MXDESK, Daemon, mx_port, provision, write_config
from dns_server import DnsServer
from machine import cpu_seconds, machine, wait_until
from spoolseed import seed_spool
from ticketsdb import filed

RSS_TARGET_MB = 150.0
RATE_TARGET = 0.9
LIST_TARGET = 1.0  # seconds


def rss_mb(pid: int) -> tuple[float, float]:
    """Resident memory now and at its peak (VmRSS, VmHWM), MB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return tuple(int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM"))  # type: ignore[return-value]


class Instance:
    """A store and a gateway from one config file; start() and stop() keep the state."""

    def __init__(self, args: argparse.Namespace, dns: DnsServer, extra: str = "") -> None:
        self.root = new_dir(args, "mx")
        auth = f'inbound_auth = {{ nameservers = ["{dns.host}:{dns.port}"] }}'
        self.config = write_config(self.root, gateway_extra=f"{auth}\n{extra}")
        provision(self.config)
        self.port = mx_port(self.config)
        self.store = Daemon(self.config, "store", self.root / "store.log")
        self.gateway = Daemon(self.config, "gateway", self.root / "gateway.log")
        self.database = self.root / "state" / "tickets.db"
        self.spool = self.root / "state" / "spool.db"

    def start(self) -> float:
        """Starts both daemons; returns the seconds the gateway took to be ready."""
        self.store.start()
        began = time.perf_counter()
        self.gateway.start(timeout=600)
        return time.perf_counter() - began

    def stop(self) -> None:
        codes = (self.gateway.terminate(), self.store.terminate())
        if codes != (0, 0):
            raise RuntimeError(f"gateway and store exited {codes}; logs in {self.root}")

    def load(self, args: argparse.Namespace) -> tuple[float, float]:
        """The smtp-source load; (accepted/s, gateway CPU ms per message) once all are filed."""
        assert self.gateway.proc is not None
        before, cpu = len(filed(self.database)), cpu_seconds(self.gateway.proc.pid)
        seconds = drive(self.port, args)
        wait_until(
            lambda: len(filed(self.database)) >= before + args.messages,
            args.timeout,
            "every message to be filed",
        )
        cpu_ms = 1000 * (cpu_seconds(self.gateway.proc.pid) - cpu) / args.messages
        return args.messages / seconds, cpu_ms

    def problems(self) -> int:
        return sum(
            1
            for log in (self.gateway.log, self.store.log)
            for line in log.read_text(errors="replace").splitlines()
            if " WARNING " in line or " ERROR " in line
        )

    def close(self) -> None:
        self.gateway.close()
        self.store.close()
        shutil.rmtree(self.root, ignore_errors=True)


# -- idle connections ------------------------------------------------------------------------


class IdleClients:
    """count connections from 127.0.0.2, .3 …, per_address each, greeted and EHLO'd, then
    silent, on an event loop in this process (run between the loads)."""

    def __init__(self, port: int, count: int, per_address: int) -> None:
        self.port, self.count, self.per_address = port, count, per_address
        self.loop = asyncio.new_event_loop()
        self.conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def _one(self, n: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        address = f"127.0.0.{2 + n // self.per_address}"
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", self.port, local_addr=(address, 0)
        )
        greeting = await reader.readline()
        if not greeting.startswith(b"220"):
            raise RuntimeError(f"idle connection {n} from {address}: {greeting!r}")
        writer.write(b"EHLO idle.example\r\n")
        while (line := await reader.readline())[3:4] != b" ":
            if not line:
                raise RuntimeError(f"idle connection {n}: closed after EHLO")
        return reader, writer

    def open(self) -> None:
        async def all_of_them() -> None:
            for start in range(0, self.count, 100):  # not all at once: a listen backlog
                batch = range(start, min(start + 100, self.count))
                self.conns += await asyncio.gather(*(self._one(n) for n in batch))

        self.loop.run_until_complete(all_of_them())

    def close(self) -> int:
        """Sends NOOP on each, then QUIT; returns how many answered 250 to the NOOP."""

        async def check(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
            try:
                writer.write(b"NOOP\r\n")
                answer = await asyncio.wait_for(reader.readline(), 30)
                writer.write(b"QUIT\r\n")
                await asyncio.wait_for(reader.readline(), 30)
                return answer.startswith(b"250")
            except (OSError, TimeoutError):
                return False
            finally:
                writer.close()

        async def every_one() -> list[bool]:
            return await asyncio.gather(*(check(r, w) for r, w in self.conns))

        alive = self.loop.run_until_complete(every_one())
        self.conns = []
        return sum(alive)


def part_idle(args: argparse.Namespace, dns: DnsServer) -> list[str]:
    per_address = 20
    extra = f"max_connections = {args.idle + 100}\nmax_connections_per_client = {per_address}"
    instance = Instance(args, dns, extra)
    lines: list[str] = []
    try:
        instance.start()
        assert instance.gateway.proc is not None
        pid = instance.gateway.proc.pid
        without, with_idle, rss, answered = [], [], [], []
        for i in range(args.repeat):
            print(f"idle {i + 1}/{args.repeat}: the load alone …", flush=True)
            without.append(instance.load(args))
            clients = IdleClients(instance.port, args.idle, per_address)
            rss_before = rss_mb(pid)[0]
            clients.open()
            time.sleep(1)
            rss_with = rss_mb(pid)[0]
            print(f"idle {i + 1}/{args.repeat}: the load with {args.idle} idle …", flush=True)
            with_idle.append(instance.load(args))
            rss.append((rss_before, rss_with, rss_mb(pid)[0]))
            answered.append(clients.close())
            clients.loop.close()
        peak = rss_mb(pid)[1]
        problems = instance.problems()
        instance.stop()
    finally:
        instance.close()
    lines.append(f"{'run':<5}{'idle':>6}{'accepted/s':>12}{'gw CPU ms/msg':>15}")
    for i in range(args.repeat):
        lines.append(f"{i + 1:<5}{0:>6}{without[i][0]:>12.0f}{without[i][1]:>15.2f}")
        lines.append(f"{i + 1:<5}{args.idle:>6}{with_idle[i][0]:>12.0f}{with_idle[i][1]:>15.2f}")
    best0 = max(r for r, _ in without)
    best1 = max(r for r, _ in with_idle)
    ratio = best1 / best0
    worst_rss = max(r[2] for r in rss)
    lines += [
        "",
        "gateway RSS, MB, per repeat (before opening, with them open, after the load with"
        " them): " + "; ".join(f"{a:.1f} → {b:.1f} → {c:.1f}" for a, b, c in rss),
        f"peak RSS of the gateway (VmHWM) over the whole part: {peak:.1f} MB",
        f"idle connections still answering NOOP at the end, per repeat: {answered} of {args.idle}",
        f"accept rate with {args.idle} idle / without (best of {args.repeat} each):"
        f" {best1:.0f} / {best0:.0f} = {ratio:.2f}"
        f"  [target ≥ {RATE_TARGET}: {'ok' if ratio >= RATE_TARGET else 'NOT MET'}]",
        f"gateway RSS with {args.idle} idle connections and the load: {worst_rss:.1f} MB"
        f"  [target < {RSS_TARGET_MB:.0f} MB: {'ok' if worst_rss < RSS_TARGET_MB else 'NOT MET'}]",
        f"problems (warnings/errors in the daemons' logs): {problems}",
    ]
    return lines


# -- a large spool ---------------------------------------------------------------------------


def timed_cli(config: Path, *words: str) -> tuple[float, str]:
    began = time.perf_counter()
    done = subprocess.run(
        [*MXDESK, "--config", str(config), *words], capture_output=True, text=True, timeout=600
    )
    seconds = time.perf_counter() - began
    if done.returncode not in (0, 1):  # status exits 1 when something needs a look
        raise RuntimeError(f"mxdesk {' '.join(words)}: {done.stderr}")
    return seconds, done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""


def part_spool(args: argparse.Namespace, dns: DnsServer) -> list[str]:
    empty, full = Instance(args, dns), Instance(args, dns)
    lines: list[str] = []
    try:
        began = time.perf_counter()
        seed_spool(full.spool, args.spool, MAILBOX)
        seeded_in = time.perf_counter() - began
        rates: dict[str, list[tuple[float, float]]] = {"empty": [], "seeded": []}
        starts: list[float] = []
        for i in range(args.repeat):
            for name, instance in (("empty", empty), ("seeded", full)):
                print(f"spool {i + 1}/{args.repeat}: {name} …", flush=True)
                started = instance.start()
                if instance is full:
                    starts.append(started)
                rates[name].append(instance.load(args))
                instance.stop()
        listings = [
            ("queue list", timed_cli(full.config, "queue", "list")),
            ("queue list --page 500", timed_cli(full.config, "queue", "list", "--page", "500")),
            (
                "queue list --state held --dir in",
                timed_cli(full.config, "queue", "list", "--state", "held", "--dir", "in"),
            ),
            ("queue list --all --json", timed_cli(full.config, "queue", "list", "--all", "--json")),
            ("status", timed_cli(full.config, "status")),
        ]
        problems = full.problems()
    finally:
        empty.close()
        full.close()
    best_empty = max(r for r, _ in rates["empty"])
    best_full = max(r for r, _ in rates["seeded"])
    ratio = best_full / best_empty
    lines.append(f"{'run':<5}{'spool':>8}{'accepted/s':>12}{'gw CPU ms/msg':>15}")
    for i in range(args.repeat):
        for name in ("empty", "seeded"):
            rate, cpu = rates[name][i]
            held = 0 if name == "empty" else args.spool
            lines.append(f"{i + 1:<5}{held:>8}{rate:>12.0f}{cpu:>15.2f}")
    lines += [
        "",
        f"seeding {args.spool} entries took {seeded_in:.1f} s; the seeded gateway was ready"
        f" after {', '.join(f'{s:.2f}' for s in starts)} s",
        f"accept rate with {args.spool} entries / empty (best of {args.repeat} each):"
        f" {best_full:.0f} / {best_empty:.0f} = {ratio:.2f}"
        f"  [target ≥ {RATE_TARGET}: {'ok' if ratio >= RATE_TARGET else 'NOT MET'}]",
        f"on the seeded spool ({args.spool} entries + the loads'), wall clock, one run each:",
    ]
    for what, (seconds, said) in listings:
        verdict = ""
        if what == "queue list":
            verdict = (
                f"  [target < {LIST_TARGET:.0f} s: {'ok' if seconds < LIST_TARGET else 'NOT MET'}]"
            )
        lines.append(f"  mxdesk {what:<34}{seconds * 1000:>8.0f} ms  ({said}){verdict}")
    lines.append(f"problems (warnings/errors in the seeded instance's logs): {problems}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_load_arguments(parser, "parallel SMTP sessions of the load")
    parser.add_argument("--idle", type=int, default=1000, help="idle connections held open")
    parser.add_argument("--spool", type=int, default=100_000, help="entries seeded in the spool")
    parser.add_argument("--part", choices=("idle", "spool", "both"), default="both")
    args = parser.parse_args()
    dns = sender_dns()
    out: list[str] = []
    try:
        if args.part in ("idle", "both"):
            out += ["", f"== {args.idle} idle connections", *part_idle(args, dns)]
        if args.part in ("spool", "both"):
            out += ["", f"== {args.spool} entries in the spool", *part_spool(args, dns)]
    finally:
        dns.close()
    print()
    print(
        f"load: {args.messages} messages of {args.size} bytes, {args.sessions} sessions, one"
        " connection per message, inbound verdicts on"
    )
    for line in machine(args):
        print(line)
    for line in out:
        print(line)
    print("smtp-source command:")
    print("  " + shlex.join([*smtp_source(0, args)[:-1], "127.0.0.1:PORT"]))
    command = [".venv/bin/python", "bench/scale.py", "--part", args.part]
    for name in ("idle", "spool", "messages", "sessions", "size", "repeat"):
        command += [f"--{name}", str(getattr(args, name))]
    print("reproduce:")
    print("  " + shlex.join(command))


if __name__ == "__main__":
    main()
