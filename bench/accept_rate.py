"""The gateway's durable accept rate against Postfix's on one machine; accept→ticket latency.

One run measures both sides with the same load generator, Postfix's own smtp-source:

  a) a private Postfix (its smtpd on a loopback port, mail for the hosted domain queued — with
     Postfix's fsync — and then delivered to ``discard:``): the accept rate of a real MTA;
  b) ``mxdesk store`` and ``mxdesk gateway`` as two processes from one config file: the gateway's
     accept rate (250 only after the spool commit is fsynced), then the time from acceptance to
     the message being filed on a ticket, per message.

Each side runs ``--repeat`` times on a fresh instance; the best and every run are printed.
``--verdicts off`` runs the gateway without its SPF/DKIM/DMARC/ARC verdicts
(``[gateway.inbound_auth] enabled = false``); with ``on`` (the default) its resolver asks a DNS
server in this process that serves the sender's SPF and DMARC records, so that the two runs
give what the verdicts cost.

    .venv/bin/python bench/accept_rate.py [--messages N] [--sessions 10] [--size 4096]
        [--verdicts on|off]
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from daemons import Daemon, mx_port, provision, store_and_gateway, write_config
from dns_server import DnsServer
from machine import (
    busy_since,
    cpu_ticks,
    machine,
    main_thread_seconds,
    percentile,
    tree_seconds,
    wait_until,
)
from postfix_harness import PostfixInstance, postfix_binary
from ticketsdb import filed

DOMAIN = "helpdesk.example"
MAILBOX = f"suporte@marca.{DOMAIN}"
SENDER = "bench@cliente.example"
HELO = "cliente.example"


@dataclass
class Run:
    side: str
    messages: int
    seconds: float
    latencies: list[float]  # accept → ticket, seconds; empty for Postfix
    filing_rate: float = 0.0  # messages filed per second, first accept to last ticket
    problems: int = 0  # warnings and errors in the daemons' logs, deferred deliveries
    cpu_ms: tuple[float, float] = (0.0, 0.0)  # gateway and store CPU time per message
    busy: float = 0.0  # share of both CPUs in use during the load (anyone's work), %
    loop_busy: float = 0.0  # the gateway's event loop thread on a CPU during the load, %

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


def smtp_source(port: int, args: argparse.Namespace) -> list[str]:
    """The load: -s parallel sessions, a new connection per message (no -d), -l bytes each."""
    binary = postfix_binary("smtp-source")
    if binary is None:
        sys.exit("smtp-source is not installed (Debian package postfix)")
    return [
        binary,
        "-c",
        "-s",
        str(args.sessions),
        "-l",
        str(args.size),
        "-m",
        str(args.messages),
        "-f",
        SENDER,
        "-t",
        MAILBOX,
        "-M",
        HELO,
        f"127.0.0.1:{port}",
    ]


def drive(port: int, args: argparse.Namespace, rate: float = 0.0) -> float:
    """Runs smtp-source against port; returns the wall-clock seconds it took. With a rate
    (messages per second), paced: every tenth of a second one smtp-source run sends a tenth of
    the rate's messages (smtp-source has no pacing of its own)."""
    start = time.perf_counter()
    if not rate:
        _smtp_source(smtp_source(port, args))
        return time.perf_counter() - start
    per_tick = max(1, round(rate / 10))
    sent = ticks = 0
    while sent < args.messages:
        batch = min(per_tick, args.messages - sent)
        part = argparse.Namespace(**{**vars(args), "messages": batch})
        part.sessions = min(args.sessions, batch)
        _smtp_source(smtp_source(port, part))
        sent, ticks = sent + batch, ticks + 1
        time.sleep(max(0.0, start + ticks / 10 - time.perf_counter()))
    return time.perf_counter() - start


def _smtp_source(command: list[str]) -> None:
    proc = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} exited {proc.returncode}: {proc.stderr[-500:]}")


def run_postfix(args: argparse.Namespace) -> Run:
    instance = PostfixInstance.discarding(DOMAIN, [MAILBOX], root=new_dir(args, "pf"))
    try:
        instance.start()
        ticks = cpu_ticks()
        seconds = drive(instance.port, args)
        busy = busy_since(ticks)
        # Every accepted message was queued and then discarded: nothing was lost or refused.
        wait_until(
            lambda: len(instance.deliveries()) >= args.messages,
            args.timeout,
            "Postfix to discard every message",
        )
        problems = sum(len(instance.deliveries(s)) for s in ("deferred", "bounced"))
    finally:
        instance.stop()
        instance.cleanup()
    return Run("postfix", args.messages, seconds, [], problems=problems, busy=busy)


def accept_time(queue_id: str) -> float:
    """The spool id starts with the accept time in milliseconds since the epoch, 11 hex digits."""
    return int(queue_id[:11], 16) / 1000


def sender_dns() -> DnsServer:
    """The records of the load's sender: SPF passes for 127.0.0.1, DMARC p=none aligns with it
    (smtp-source does not sign, so dkim=none)."""
    domain = SENDER.split("@")[1]
    server = DnsServer()
    server.add(domain, "TXT", '"v=spf1 ip4:127.0.0.1 -all"')
    server.add(f"_dmarc.{domain}", "TXT", '"v=DMARC1; p=none"')
    return server


def run_gateway(args: argparse.Namespace, rate: float = 0.0) -> Run:
    root = new_dir(args, "mx")
    dns = sender_dns() if args.verdicts == "on" else None
    if dns is None:
        auth = "inbound_auth = { enabled = false }"
    else:
        auth = f'inbound_auth = {{ nameservers = ["{dns.host}:{dns.port}"] }}'
    processes = f"listener_processes = {args.listener_processes}"
    config = write_config(root, gateway_extra=f"{auth}\n{processes}")
    provision(config)
    port = mx_port(config)
    database = root / "state" / "tickets.db"
    try:
        with store_and_gateway(config, root) as (store, gateway):
            assert gateway.proc is not None and store.proc is not None
            pids = (gateway.proc.pid, store.proc.pid)
            cpu_before = [tree_seconds(p) for p in pids]
            ticks, loop_before = cpu_ticks(), main_thread_seconds(pids[0])
            seconds = drive(port, args, rate)
            busy = busy_since(ticks)
            loop_busy = 100 * (main_thread_seconds(pids[0]) - loop_before) / seconds
            wait_until(
                lambda: len(filed(database)) >= args.messages,
                args.timeout,
                "every message to be filed on a ticket",
            )
            cpu_ms = tuple(
                1000 * (tree_seconds(p) - b) / args.messages
                for p, b in zip(pids, cpu_before, strict=True)
            )
            rows, problems = stop_checked(gateway, store, database, args.messages, root)
    finally:
        if dns is not None:
            dns.close()
    shutil.rmtree(root, ignore_errors=True)
    accepted = [accept_time(q) for q, _ in rows]
    created = [c for _, c in rows]
    return Run(
        "gateway",
        args.messages,
        seconds,
        [c - a for a, c in zip(accepted, created, strict=True)],
        filing_rate=len(rows) / (max(created) - min(accepted)),
        problems=problems,
        cpu_ms=(cpu_ms[0], cpu_ms[1]),
        busy=busy,
        loop_busy=loop_busy,
    )


def stop_checked(
    gateway: Daemon, store: Daemon, database: Path, messages: int, root: Path
) -> tuple[list[tuple[str, float]], int]:
    """Once every message is filed: checks each was filed once, stops both daemons (they
    must exit 0) and returns the filed rows and the warnings and errors in their logs."""
    rows = filed(database)
    if len({q for q, _ in rows}) != messages:
        raise RuntimeError(f"{len(rows)} messages filed for {messages} sent")
    codes = (gateway.terminate(), store.terminate())
    if codes != (0, 0):
        raise RuntimeError(f"gateway and store exited {codes}; logs in {root}")
    problems = sum(
        1
        for log in (gateway.log, store.log)
        for line in log.read_text(errors="replace").splitlines()
        if " WARNING " in line or " ERROR " in line
    )
    return rows, problems


def new_dir(args: argparse.Namespace, prefix: str) -> Path:
    # Short, so the store's Unix socket path fits; 0755 so Postfix's daemons can reach the queue.
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=args.workdir))
    path.chmod(0o755)
    return path


def add_load_arguments(parser: argparse.ArgumentParser, sessions_help: str) -> None:
    """The options every benchmark here takes: the load, the repeats, where and how long."""
    parser.add_argument("--messages", type=int, default=2000, help="messages per run")
    parser.add_argument("--sessions", type=int, default=10, help=sessions_help)
    parser.add_argument("--size", type=int, default=4096, help="message body bytes")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each side")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for delivery after the load"
    )
    parser.add_argument(
        "--listener-processes",
        type=int,
        default=0,
        help="the gateway's [gateway] listener_processes (0: it serves the sessions itself)",
    )
    parser.add_argument(
        "--workdir",
        default="/tmp",
        help="where the instances live (keep the path short: Unix sockets)",
    )


R = TypeVar("R")


def run_interleaved(
    args: argparse.Namespace,
    postfix: Callable[[argparse.Namespace], R],
    gateway: Callable[[argparse.Namespace], R],
) -> list[R]:
    """--repeat runs of each side, interleaved, so that a drift of the machine's speed during
    the run hits both sides alike."""
    if os.geteuid() != 0:
        sys.exit("run as root: Postfix is started with `postfix start`")
    runs: list[R] = []
    for i in range(args.repeat):
        for side, run in (("postfix", postfix), ("gateway", gateway)):
            print(f"run {i + 1}/{args.repeat}: {side} …", flush=True)
            runs.append(run(args))
    return runs


def print_reproduce(script: str, args: argparse.Namespace) -> None:
    """The command line that repeats this run."""
    command = [".venv/bin/python", script]
    for name in ("messages", "sessions", "size", "repeat", "verdicts", "listener_processes"):
        if hasattr(args, name):  # --verdicts is this script's own
            command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    if getattr(args, "half_load", False):
        command.append("--half-load")
    print("reproduce:")
    print("  " + shlex.join(command))


def report(args: argparse.Namespace, runs: list[Run]) -> None:
    postfix = [r for r in runs if r.side == "postfix"]
    gateway = [r for r in runs if r.side == "gateway"]
    best_p = max(postfix, key=lambda r: r.rate)
    best_g = max(gateway, key=lambda r: r.rate)
    latencies = [x for r in gateway for x in r.latencies]
    print()
    print(
        f"{args.messages} messages of {args.size} bytes, {args.sessions} sessions,"
        " one connection per message"
    )
    for line in machine(args):
        print(line)
    print()
    print(
        f"{'run':<5}{'side':<9}{'seconds':>8}{'accepted/s':>12}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'filed/s':>9}{'CPUs busy':>11}{'loop busy':>11}{'problems':>10}"
    )
    for i, r in enumerate(runs, start=1):
        p50 = f"{percentile(r.latencies, 50) * 1000:.0f}" if r.latencies else "-"
        p99 = f"{percentile(r.latencies, 99) * 1000:.0f}" if r.latencies else "-"
        filing = f"{r.filing_rate:.0f}" if r.filing_rate else "-"
        loop = f"{r.loop_busy:.0f}%" if r.loop_busy else "-"
        print(
            f"{i:<5}{r.side:<9}{r.seconds:>8.2f}{r.rate:>12.0f}{p50:>8}{p99:>8}{filing:>9}"
            f"{r.busy:>10.0f}%{loop:>11}{r.problems:>10}"
        )
    print()
    print(f"Postfix accept rate (best of {len(postfix)}):  {best_p.rate:8.0f} msg/s")
    print(f"gateway accept rate (best of {len(gateway)}):  {best_g.rate:8.0f} msg/s")
    print(f"ratio gateway/Postfix:         {best_g.rate / best_p.rate:8.2f}")
    print(
        f"accept→ticket latency, all gateway runs ({len(latencies)} messages):"
        f" p50 {percentile(latencies, 50) * 1000:.0f} ms,"
        f" p99 {percentile(latencies, 99) * 1000:.0f} ms"
    )
    gateway_cpu = sum(r.cpu_ms[0] for r in gateway) / len(gateway)
    store_cpu = sum(r.cpu_ms[1] for r in gateway) / len(gateway)
    print(
        f"CPU per message, mean of gateway runs: gateway {gateway_cpu:.2f} ms,"
        f" store {store_cpu:.2f} ms (accept to ticket, delivery over LMTP included)"
    )
    print(f"inbound verdicts: {args.verdicts}")
    print()
    print("problems: warnings/errors in the daemons' logs (gateway), deferred or bounced")
    print("deliveries (Postfix); filed/s: messages filed per second, first accept to last ticket;")
    print("CPUs busy: share of both CPUs in use during the load; loop busy: the gateway's event")
    print("loop thread on a CPU during the load (100% = the loop is the limit)")
    print("smtp-source command (same for both sides, only the port differs):")
    print("  " + shlex.join([*smtp_source(0, args)[:-1], "127.0.0.1:PORT"]))
    print_reproduce("bench/accept_rate.py", args)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_load_arguments(parser, "parallel SMTP sessions")
    parser.add_argument(
        "--verdicts",
        choices=("on", "off"),
        default="on",
        help="the gateway's inbound SPF/DKIM/DMARC/ARC verdicts",
    )
    parser.add_argument(
        "--half-load",
        action="store_true",
        help="pace the gateway's load at half of Postfix's best accept rate so far (the"
        " latency of a steady load, not of a burst)",
    )
    args = parser.parse_args()
    if not args.half_load:
        report(args, run_interleaved(args, run_postfix, run_gateway))
        return
    postfix_runs: list[Run] = []

    def postfix(a: argparse.Namespace) -> Run:
        postfix_runs.append(run_postfix(a))
        return postfix_runs[-1]

    def paced(a: argparse.Namespace) -> Run:
        rate = max(r.rate for r in postfix_runs) / 2
        print(f"  paced at {rate:.0f} msg/s", flush=True)
        return run_gateway(a, rate)

    report(args, run_interleaved(args, postfix, paced))
    print("half load: each gateway run was paced at half of Postfix's best rate before it;")
    print("its accepted/s is that pace, the ratio above is not a comparison of speed")


if __name__ == "__main__":
    main()
