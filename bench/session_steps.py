"""Where a session's time goes under the accept load: each step of one more client's sessions,
timed beside smtp-source, on Postfix and on the gateway.

The load is bench/accept_rate.py's (smtp-source, --sessions parallel sessions, a connection per
message, --size bytes). Half a second after it starts, a probe client in this process runs
--probes sessions one after the other, each like one of smtp-source's (connect, HELO, MAIL,
RCPT, DATA, the message of --size bytes and the final dot, QUIT), and times every step from
its command sent to its reply read. Every probe message must be accepted. The sides alternate,
--repeat runs each, a fresh instance for each run; the gateway runs as in accept_rate.py
(`mxdesk store` and `mxdesk gateway`, verdicts on).

    .venv/bin/python bench/session_steps.py [--messages 8000] [--probes 300] [--repeat 1]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from accept_rate import (
    DOMAIN,
    HELO,
    MAILBOX,
    SENDER,
    add_load_arguments,
    new_dir,
    run_interleaved,
    sender_dns,
    smtp_source,
)
from daemons import mx_port, provision, store_and_gateway, write_config
from machine import machine
from postfix_harness import PostfixInstance

STEPS = ("connect, 220", "HELO", "MAIL", "RCPT", "DATA", "message, dot", "QUIT")
START_AFTER = 0.5  # seconds of load before the probe's first session


def probe(port: int, sessions: int, size: int) -> dict[str, list[float]]:
    """Times each step of sessions sessions, one after the other; seconds per step."""
    body = b"Subject: probe\r\n\r\n" + b"x" * max(0, size - 20) + b"\r\n.\r\n"
    commands = [
        ("HELO", f"HELO {HELO}\r\n".encode()),
        ("MAIL", f"MAIL FROM:<{SENDER}>\r\n".encode()),
        ("RCPT", f"RCPT TO:<{MAILBOX}>\r\n".encode()),
        ("DATA", b"DATA\r\n"),
        ("message, dot", body),
        ("QUIT", b"QUIT\r\n"),
    ]
    times: dict[str, list[float]] = {step: [] for step in STEPS}
    for _ in range(sessions):
        start = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            replies = sock.makefile("rb")
            _expect(replies, "220", "greeting")
            times["connect, 220"].append(time.perf_counter() - start)
            for step, command in commands:
                start = time.perf_counter()
                sock.sendall(command)
                _expect(replies, "354" if step == "DATA" else "2", step)
                times[step].append(time.perf_counter() - start)
    return times


def _expect(replies: BinaryIO, code: str, step: str) -> None:
    """Reads one reply (all its lines); it must start with code."""
    while True:
        line = replies.readline()
        if not line.startswith(code.encode()):
            raise RuntimeError(f"{step}: unexpected reply {line[:200]!r}")
        if line[3:4] != b"-":
            return


@contextmanager
def loaded(port: int, args: argparse.Namespace) -> Iterator[None]:
    """smtp-source's load against port while the block runs; it must finish without error."""
    load = subprocess.Popen(smtp_source(port, args), stdout=subprocess.DEVNULL)
    try:
        time.sleep(START_AFTER)
        yield
        if load.poll() is not None:
            raise RuntimeError("the load ended before the probe did: raise --messages")
    finally:
        code = load.wait(timeout=3600)
    if code != 0:
        raise RuntimeError(f"smtp-source exited {code}: the load was not all accepted")


def on_postfix(args: argparse.Namespace) -> dict[str, list[float]]:
    instance = PostfixInstance.discarding(DOMAIN, [MAILBOX], root=new_dir(args, "pf"))
    try:
        instance.start()
        with loaded(instance.port, args):
            return probe(instance.port, args.probes, args.size)
    finally:
        instance.stop()
        instance.cleanup()


def on_gateway(args: argparse.Namespace) -> dict[str, list[float]]:
    root = new_dir(args, "mx")
    dns = sender_dns()
    auth = f'inbound_auth = {{ nameservers = ["{dns.host}:{dns.port}"] }}'
    config = write_config(root, gateway_extra=auth)
    provision(config)
    try:
        with store_and_gateway(config, root), loaded(mx_port(config), args):
            return probe(mx_port(config), args.probes, args.size)
    finally:
        dns.close()
        shutil.rmtree(root, ignore_errors=True)


def report(side: str, runs: list[dict[str, list[float]]]) -> None:
    pooled = {step: [t * 1000 for run in runs for t in run[step]] for step in STEPS}
    totals = [sum(values) for values in zip(*pooled.values(), strict=True)]
    print(f"\n{side}: {len(totals)} probe sessions beside the load, ms")
    print(f"  {'step':<14}{'p50':>7}{'p90':>7}{'mean':>7}  share of the mean session")
    mean_total = statistics.fmean(totals)
    for step in STEPS:
        values = sorted(pooled[step])
        mean = statistics.fmean(values)
        p50, p90 = values[len(values) // 2], values[int(len(values) * 0.9)]
        print(f"  {step:<14}{p50:7.2f}{p90:7.2f}{mean:7.2f}  {100 * mean / mean_total:4.0f}%")
    totals.sort()
    p50, p90 = totals[len(totals) // 2], totals[int(len(totals) * 0.9)]
    print(f"  {'session':<14}{p50:7.2f}{p90:7.2f}{mean_total:7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_load_arguments(parser, "parallel SMTP sessions of the load")
    parser.set_defaults(messages=8000, repeat=1)
    parser.add_argument("--probes", type=int, default=300, help="probe sessions per run")
    args = parser.parse_args()
    if args.listener_processes:
        sys.exit("session_steps.py runs the gateway with listener_processes = 0")
    runs = run_interleaved(args, on_postfix, on_gateway)  # postfix, gateway, postfix, …
    print("\n" + "\n".join(machine(args)))
    print(
        f"load: {args.messages} messages of {args.size} bytes, {args.sessions} sessions,"
        f" a connection per message; probe: {args.probes} sessions a run, one at a time"
    )
    report("postfix", runs[0::2])
    report("gateway", runs[1::2])
    print(
        "\nreproduce:\n  .venv/bin/python bench/session_steps.py"
        f" --messages {args.messages} --sessions {args.sessions} --size {args.size}"
        f" --probes {args.probes} --repeat {args.repeat}"
    )


if __name__ == "__main__":
    main()
