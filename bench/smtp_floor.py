"""What the SMTP layer alone costs: an SMTP server that keeps nothing, on aiosmtpd as shipped
and on mxdesk's session layer (mxdesk/gateway/smtpsession.py), against Postfix's durable accept
rate.

Each sink answers 250 to every command and to DATA, stores nothing and checks nothing: no
spool, no fsync, no policy, no verdicts, no ticket. Its rate and CPU per message are the floor
under the gateway's (bench/accept_rate.py), whatever the gateway does per message on top. The
load is the same smtp-source command as accept_rate.py's; sides alternate, --repeat runs each.

    .venv/bin/python bench/smtp_floor.py [--messages 3000] [--sessions 10] [--size 4096]
        [--repeat 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from accept_rate import add_load_arguments, drive, run_postfix, smtp_source
from machine import busy_since, cpu_seconds, cpu_ticks, machine

SIDES = ("postfix", "aiosmtpd", "mxdesk")


def serve(kind: str, sock: socket.socket) -> None:
    """The sink, in a child process: aiosmtpd's SMTP, or the session the gateway's MX and
    submission socket use (SmtpSession, made by the SessionFactory)."""
    from aiosmtpd.smtp import SMTP

    from mxdesk.gateway.smtp import ConnectionLimits
    from mxdesk.gateway.smtpsession import SmtpSession
    from mxdesk.smtpfast import SessionFactory

    class Sink:
        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            return "250 2.0.0 Ok"

        def mail(self, session: Any, envelope: Any, address: str, options: list[str]) -> str:
            envelope.mail_from = address
            return "250 2.1.0 Ok"

        def rcpt(self, session: Any, envelope: Any, address: str, options: list[str]) -> str:
            envelope.rcpt_tos.append(address)
            return "250 2.1.5 Ok"

        async def data(self, session: Any, envelope: Any) -> str:
            return "250 2.0.0 Ok"

        def exception(self, error: Exception) -> str:
            return "451 4.3.0 Error"

        def log_refusal(self, client: str, envelope: Any, reply: str) -> None:
            pass

    async def main() -> None:
        loop = asyncio.get_running_loop()
        factory: Callable[[], asyncio.Protocol]
        if kind == "aiosmtpd":
            factory = lambda: SMTP(Sink(), hostname="sink.example")  # noqa: E731
        else:
            limits = ConnectionLimits(1 << 30, 1 << 30)
            options = {"data_size_limit": 10 << 20, "idle_timeout": 300, "session_timeout": 600}
            factory = SessionFactory(
                lambda: SmtpSession(
                    Sink(), limits, loop, hostname="sink.example", tls=None, **options
                )
            )
        server = await loop.create_server(factory, sock=sock)
        print("ready", flush=True)
        await server.serve_forever()

    asyncio.run(main())


def run_sink(kind: str, args: argparse.Namespace) -> tuple[float, float, float]:
    """(messages per second, CPU ms per message of the sink, CPUs busy %)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind, "--fd", str(sock.fileno())],
        pass_fds=[sock.fileno()],
        cwd=Path(__file__).resolve().parent,
        stdout=subprocess.PIPE,
        text=True,
    )
    sock.close()
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        before, ticks = cpu_seconds(child.pid), cpu_ticks()
        seconds = drive(port, args)
        busy = busy_since(ticks)
        cpu = cpu_seconds(child.pid) - before
    finally:
        child.terminate()
        child.wait(10)
    return args.messages / seconds, cpu / args.messages * 1000, busy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_load_arguments(parser, "parallel SMTP sessions")
    parser.add_argument("--serve", choices=SIDES[1:], help=argparse.SUPPRESS)
    parser.add_argument("--fd", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, socket.socket(fileno=args.fd))
        return
    if os.geteuid() != 0:
        sys.exit("run as root: Postfix is started with `postfix start`")
    rates: dict[str, list[float]] = {side: [] for side in SIDES}
    cpu: dict[str, list[float]] = {side: [] for side in SIDES[1:]}
    for i in range(args.repeat):
        for side in SIDES:
            print(f"run {i + 1}/{args.repeat}: {side} …", flush=True)
            if side == "postfix":
                run = run_postfix(args)
                rates[side].append(run.rate)
                print(f"  {run.rate:.0f} msg/s, CPUs busy {run.busy:.0f}%")
            else:
                rate, ms, busy = run_sink(side, args)
                rates[side].append(rate)
                cpu[side].append(ms)
                print(f"  {rate:.0f} msg/s, {ms:.2f} ms CPU per message, CPUs busy {busy:.0f}%")
    print()
    print(f"{args.messages} messages of {args.size} bytes, {args.sessions} sessions,")
    print("one connection per message; the sinks keep nothing, Postfix queues with fsync")
    for line in machine(args):
        print(line)
    best = {side: max(r) for side, r in rates.items()}
    print(f"Postfix (durable):           {best['postfix']:6.0f} msg/s (best of {args.repeat})")
    for side in SIDES[1:]:
        mean_cpu = sum(cpu[side]) / len(cpu[side])
        print(
            f"{side + ' sink:':<29}{best[side]:6.0f} msg/s, ratio"
            f" {best[side] / best['postfix']:.2f}, {mean_cpu:.2f} ms CPU per message"
        )
    print("smtp-source command (the same for every side, only the port differs):")
    print("  " + " ".join([*smtp_source(0, args)[:-1], "127.0.0.1:PORT"]))
    print("reproduce:")
    print(
        f"  .venv/bin/python bench/smtp_floor.py --messages {args.messages}"
        f" --sessions {args.sessions} --size {args.size} --repeat {args.repeat}"
    )


if __name__ == "__main__":
    main()
