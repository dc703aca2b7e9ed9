"""Outbound delivery rate: the gateway against Postfix, both relaying one load to smtp-sink.

One run measures both sides with the same load generator (Postfix's smtp-source) and the same
receiver (Postfix's smtp-sink on a loopback port):

  a) a private Postfix: smtp-source → its smtpd on a loopback port → queue (fsync) → its smtp
     client relays every message to the sink (transport map to [127.0.0.1]:SINK);
  b) ``mxdesk gateway`` from a config file: smtp-source → the submission socket (Unix) → DKIM
     signature (RSA-2048) → spool (fsync) → the outbound runner looks up the recipient domain's
     MX with a local DNS server (MX → 127.0.0.1) and delivers to the sink on its port.

The figure is end to end: messages ÷ (last delivery − start of the load), with the last delivery
read from each side's own records (Postfix's log says status=sent; the gateway's spool is empty
and its log has one "delivered" line per message).

    .venv/bin/python bench/outbound_rate.py [--messages N] [--sessions 10] [--size 4096]
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from accept_rate import add_load_arguments, print_reproduce, run_interleaved
from daemons import Daemon, cli, provision, write_config
from dns_server import DnsServer
from machine import busy_since, cpu_ticks, machine, main_thread_seconds, tree_seconds, wait_until
from postfix_harness import PostfixInstance, port_open, postfix_binary
from sink import Sink

DEST = "destino.example"
RECIPIENT = f"cliente@{DEST}"
SENDER = "suporte@marca.helpdesk.example"


@dataclass
class Run:
    side: str
    messages: int
    seconds: float
    problems: int = 0
    cpu_ms: float = 0.0
    load_seconds: float = 0.0  # until smtp-source had every message accepted
    busy: float = 0.0  # share of both CPUs in use until the last delivery (anyone's work), %
    loop_busy: float = 0.0  # the gateway's event loop thread on a CPU until then, %

    @property
    def submit_rate(self) -> float:
        return self.messages / self.load_seconds

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


def binary(name: str) -> str:
    path = postfix_binary(name)
    if path is None:
        sys.exit(f"{name} is not installed (Debian package postfix)")
    return path


def smtp_source(target: str, args: argparse.Namespace) -> list[str]:
    return [
        binary("smtp-source"),
        "-s",
        str(args.sessions),
        "-l",
        str(args.size),
        "-m",
        str(args.messages),
        "-f",
        SENDER,
        "-t",
        RECIPIENT,
        "-M",
        "helpdesk.example",
        target,
    ]


def start_sink(root: Path) -> Sink:
    """smtp-sink that keeps nothing (`-8`: it offers 8BITMIME, as a real MX does)."""
    sink = Sink(root, ("-8",), dump=False, backlog=256)
    wait_until(lambda: port_open(sink.port), 10, "smtp-sink to listen")
    return sink


def run_postfix(args: argparse.Namespace) -> Run:
    root = new_dir(args, "pf")
    sink = start_sink(root)
    instance = PostfixInstance.relaying(DEST, sink.port, root=root / "postfix")
    try:
        instance.start()
        ticks, start = cpu_ticks(), time.perf_counter()
        load = subprocess.run(smtp_source(f"127.0.0.1:{instance.port}", args), capture_output=True)
        if load.returncode != 0:
            raise RuntimeError(f"smtp-source: {load.stderr.decode()[-300:]}")
        load_seconds = time.perf_counter() - start
        wait_until(
            lambda: len(instance.deliveries()) >= args.messages, args.timeout, "Postfix to relay"
        )
        seconds = time.perf_counter() - start
        busy = busy_since(ticks)
        problems = sum(len(instance.deliveries(s)) for s in ("deferred", "bounced"))
    finally:
        instance.stop()
        instance.cleanup()
        sink.close()
        shutil.rmtree(root, ignore_errors=True)
    return Run(
        "postfix",
        args.messages,
        seconds,
        problems=problems,
        load_seconds=load_seconds,
        busy=busy,
    )


def outbound_entries(spool: Path) -> int:
    if not spool.exists():
        return 0
    with sqlite3.connect(f"file:{spool}?mode=ro", uri=True, timeout=10) as conn:
        return int(conn.execute("SELECT count(*) FROM entries WHERE kind='out'").fetchone()[0])


def run_gateway(args: argparse.Namespace) -> Run:
    root = new_dir(args, "mx")
    sink = start_sink(root)
    dns = DnsServer([(DEST, "MX", f"10 mx.{DEST}."), (f"mx.{DEST}", "A", "127.0.0.1")])
    extra = (
        "\n[gateway.outbound]\nsend_delay = 0.0\n"
        f'smtp_port = {sink.port}\nnameservers = ["127.0.0.1:{dns.port}"]\n'
        f"per_destination = {args.connections}\n"
        f"\n[gateway.outbound_retry]\nconcurrency = {args.concurrency}\n"
    )
    config = write_config(root, gateway_extra=f"listener_processes = {args.listener_processes}")
    config.write_text(config.read_text() + extra)
    provision(config)
    cli(config, "check-config")
    gateway = Daemon(config, "gateway", root / "gateway.log")
    spool = root / "state" / "spool.db"
    socket_path = root / "run" / "gateway" / "submit.sock"
    try:
        gateway.start()
        assert gateway.proc is not None
        pid = gateway.proc.pid
        cpu_before, loop_before = tree_seconds(pid), main_thread_seconds(pid)
        ticks, start = cpu_ticks(), time.perf_counter()
        load = subprocess.run(smtp_source(f"unix:{socket_path}", args), capture_output=True)
        if load.returncode != 0:
            raise RuntimeError(f"smtp-source: {load.stderr.decode()[-300:]}")
        load_seconds = time.perf_counter() - start
        wait_until(lambda: outbound_entries(spool) == 0, args.timeout, "the gateway to deliver")
        seconds = time.perf_counter() - start
        busy = busy_since(ticks)
        loop_busy = 100 * (main_thread_seconds(pid) - loop_before) / seconds
        cpu_ms = 1000 * (tree_seconds(pid) - cpu_before) / args.messages
        if gateway.terminate() != 0:
            raise RuntimeError(f"the gateway did not exit cleanly; log in {root}")
        text = gateway.log.read_text(errors="replace")
        delivered = text.count("delivered to all recipients")
        problems = sum(1 for line in text.splitlines() if " WARNING " in line or " ERROR " in line)
        if delivered != args.messages:
            raise RuntimeError(f"{delivered} delivered for {args.messages} sent; log in {root}")
    finally:
        gateway.close()
        dns.close()
        sink.close()
    shutil.rmtree(root, ignore_errors=True)
    return Run(
        "gateway",
        args.messages,
        seconds,
        problems=problems,
        cpu_ms=cpu_ms,
        load_seconds=load_seconds,
        busy=busy,
        loop_busy=loop_busy,
    )


def new_dir(args: argparse.Namespace, prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=args.workdir))
    path.chmod(0o755)
    return path


def report(args: argparse.Namespace, runs: list[Run]) -> None:
    postfix = [r for r in runs if r.side == "postfix"]
    gateway = [r for r in runs if r.side == "gateway"]
    best_p = max(postfix, key=lambda r: r.rate)
    best_g = max(gateway, key=lambda r: r.rate)
    print()
    print(f"{args.messages} messages of {args.size} bytes, {args.sessions} submitting sessions")
    for line in machine(args):
        print(line)
    print()
    print(
        f"{'run':<5}{'side':<9}{'seconds':>8}{'delivered/s':>13}{'submitted/s':>13}"
        f"{'CPUs busy':>11}{'loop busy':>11}{'problems':>10}"
    )
    for i, r in enumerate(runs, start=1):
        loop = f"{r.loop_busy:.0f}%" if r.loop_busy else "-"
        print(
            f"{i:<5}{r.side:<9}{r.seconds:>8.2f}{r.rate:>13.0f}{r.submit_rate:>13.0f}"
            f"{r.busy:>10.0f}%{loop:>11}{r.problems:>10}"
        )
    print()
    print(f"Postfix relay rate (best of {len(postfix)}):   {best_p.rate:8.0f} msg/s")
    print(f"gateway delivery rate (best of {len(gateway)}): {best_g.rate:8.0f} msg/s")
    print(f"ratio gateway/Postfix:           {best_g.rate / best_p.rate:8.2f}")
    cpu = sum(r.cpu_ms for r in gateway) / len(gateway)
    print(f"gateway CPU per message (mean): {cpu:.2f} ms (submission, DKIM, spool, SMTP out)")
    print("submitted/s: until smtp-source had every message accepted; CPUs busy: share of both")
    print("CPUs in use until the last delivery; loop busy: the gateway's event loop thread on a")
    print("CPU until then (100% = the loop is the limit)")
    print()
    print("load (only the target differs):")
    print("  " + shlex.join(smtp_source("TARGET", args)))
    print_reproduce("bench/outbound_rate.py", args)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_load_arguments(parser, "parallel submitting sessions")
    parser.add_argument(
        "--connections", type=int, default=20, help="gateway: connections to the sink at once"
    )
    parser.add_argument(
        "--concurrency", type=int, default=40, help="gateway: deliveries in flight at once"
    )
    args = parser.parse_args()
    report(args, run_interleaved(args, run_postfix, run_gateway))


if __name__ == "__main__":
    main()
