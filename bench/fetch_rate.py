"""Reading a company mailbox into tickets: the gateway's channel against fetchmail, one machine.

One run measures both sides on the same mailbox content (N messages in a private Dovecot, see
tests/dovecot_mail.py) and the same kind of ticket store (``mxdesk store``, a fresh one per run):

  a) fetchmail (Debian's) reads the mailbox over IMAPS or POP3S and hands each message over LMTP
     to the store's Unix socket: timed from its start until the last message is filed;
  b) ``mxdesk gateway`` with a channel on the same Dovecot user: after the channel's first look
     (an empty mailbox) the messages appear in the mailbox, and the time runs from then until
     the last one is filed. The gateway commits what it fetches to its spool (fsync) and its
     inbound runner hands it to the store over the same socket.

Both end at the same point, read from tickets.db (the store's ``created`` of the last message),
and each run checks that every message was filed exactly once. Each side runs ``--repeat`` times
on fresh instances, interleaved; the best and every run are printed.

    .venv/bin/python bench/fetch_rate.py [--messages N] [--size 4096] [--protocol imap|pop3]
        [--after keep|delete] [--repeat 2] [--batch N] [--poll-interval 0.5] [--profile PREFIX]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from accept_rate import accept_time
from daemons import Daemon, cli
from dovecot_mail import REQUIRED_PROGRAMS
from fetch_common import (
    PASSWORD,
    ROOT_WARNING,
    SERVER_NAME,
    STORE_MAILBOX,
    USER,
    Mailbox,
    Run,
    check_once,
    filed,
    log_problems,
    mxdesk_instance,
    pid_of,
    stop,
)
from machine import busy_since, cpu_seconds, cpu_ticks, cpus, filesystem, interpreter, wait_until

from mxdesk.gateway.fetch.ledger import read_statuses

# -- a) fetchmail ----------------------------------------------------------------------------


def fetchmail_command(
    args: argparse.Namespace, port: int, ca_file: Path, socket: Path
) -> list[str]:
    """What a sysadmin would type (the password is in the rcfile, fetchmail has no option for
    it): one pass, every message, kept or deleted as the channel's --after, handed over LMTP."""
    return [
        "fetchmail",
        "-N",  # --nodetach
        "-d0",  # no daemon: one pass, then exit
        "--ssl",
        "--sslcertck",
        "--sslcertfile",
        str(ca_file),
        "--fetchall",
        "--keep" if args.after == "keep" else "--nokeep",
        "--lmtp",
        "--smtphost",
        str(socket),  # a path: LMTP over that Unix socket
        "--smtpname",
        STORE_MAILBOX,  # RCPT TO
        "--protocol",
        args.protocol.upper(),
        "--service",
        str(port),
    ]


def rcfile_text(password: str = PASSWORD) -> str:
    return f'poll {SERVER_NAME} user "{USER}" password "{password}"\n'


def run_fetchmail(args: argparse.Namespace) -> Run:
    box = Mailbox()
    home = Path(tempfile.mkdtemp(prefix="fm", dir=args.workdir))  # mkdtemp: mode 0700
    try:
        box.start()
        box.stage(args.messages, args.size)
        box.publish()
        with mxdesk_instance(args) as (root, store):
            port = box.server.imaps_port if args.protocol == "imap" else box.server.pop3s_port
            socket = root / "run" / "store" / "lmtp.sock"
            rcfile = home / "fetchmailrc"
            rcfile.write_text(rcfile_text())
            rcfile.chmod(0o600)  # fetchmail refuses an rcfile others may read
            command = [
                *fetchmail_command(args, port, box.server.ca_file, socket),
                *("--fetchmailrc", str(rcfile), "--idfile", str(home / "fetchids")),
                *("--pidfile", str(home / "fetchmail.pid")),
            ]
            env = dict(os.environ, FETCHMAILHOME=str(home), LC_ALL="C")
            database = root / "state" / "tickets.db"
            store_before = cpu_seconds(pid_of(store))
            machine_before = cpu_ticks()
            output = home / "fetchmail.out"
            with open(output, "wb") as out:
                start = time.time()
                proc = subprocess.Popen(command, stdout=out, stderr=out, env=env)
                # Waits without reaping: the exited process's /proc entry still has its times.
                os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
                fetchmail_cpu = cpu_seconds(proc.pid)
                code = proc.wait()
            wait_until(lambda: len(filed(database)) >= args.messages, 5, "the last ticket")
            store_cpu = cpu_seconds(pid_of(store)) - store_before
            busy = busy_since(machine_before)
            rows = filed(database)
            check_once(rows, args.messages)
            seconds = max(c for _, _, c in rows) - start
            left = box.count()
            if left != (args.messages if args.after == "keep" else 0):
                raise RuntimeError(f"{left} messages left in the mailbox after fetchmail")
            stop(store)
            said = [
                line
                for line in output.read_text(errors="replace").splitlines()
                if line.startswith("fetchmail:") and ROOT_WARNING not in line
            ]
            problems = said + log_problems(store.log) + box.problems()
            if code != 0:
                problems.append(f"fetchmail exited {code}")
    finally:
        box.close()
        shutil.rmtree(home, ignore_errors=True)
    return Run(
        "fetchmail",
        args.messages,
        seconds,
        1000 * fetchmail_cpu / args.messages,
        1000 * store_cpu / args.messages,
        len(problems),
        busy,
        notes=problems[:5],
    )


# -- b) the mxdesk gateway -------------------------------------------------------------------


def add_channel(config: Path, args: argparse.Namespace, box: Mailbox) -> str:
    server = box.server
    port = server.imaps_port if args.protocol == "imap" else server.pop3s_port
    out = cli(
        config,
        *("channel", "add", "--tenant", "marca", "--address", USER, "--host", "127.0.0.1"),
        *("--port", str(port), "--protocol", args.protocol, "--after", args.after),
        *("--ca-file", str(server.ca_file), "--password-stdin", "--json"),
        input=PASSWORD + "\n",
    )
    return str(json.loads(out.stdout)["name"])


def looked(spool: Path, name: str) -> bool:
    return bool(read_statuses(spool).get(name, {}).get("last_success"))


@contextmanager
def profiled(pids: dict[str, int], prefix: str | None) -> Iterator[None]:
    """With a prefix, py-spy samples each process's threads on the CPU while the block runs,
    into PREFIX-NAME.txt: collapsed stacks, which flamegraph.pl and speedscope read."""
    if not prefix:
        yield
        return
    spy = str(Path(sys.executable).parent / "py-spy")
    options = ["--rate", "100", "--nonblocking", "--format", "raw"]
    spies = [
        subprocess.Popen(
            [spy, "record", "--pid", str(pid), *options, "--output", f"{prefix}-{name}.txt"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in pids.items()
    ]
    try:
        time.sleep(1.0)  # attached before the load
        yield
    finally:
        for spy_proc in spies:
            spy_proc.send_signal(signal.SIGINT)
        for spy_proc in spies:
            spy_proc.wait(60)


def run_mxdesk(args: argparse.Namespace, number: int) -> Run:
    box = Mailbox()
    try:
        box.start()
        with mxdesk_instance(args) as (root, store):
            config = root / "mxdesk.toml"
            name = add_channel(config, args, box)
            gateway = Daemon(config, "gateway", root / "gateway.log")
            try:
                gateway.start()
                spool, database = root / "state" / "spool.db", root / "state" / "tickets.db"
                wait_until(lambda: looked(spool, name), 30, "the channel's first look")
                box.stage(args.messages, args.size)
                pids = (pid_of(gateway), pid_of(store))
                profile = f"{args.profile}-{number}" if args.profile else None
                with profiled({"gateway": pids[0], "store": pids[1]}, profile):
                    before = [cpu_seconds(p) for p in pids]
                    machine_before = cpu_ticks()
                    start = time.time()
                    box.publish()
                    wait_until(
                        lambda: len(filed(database)) >= args.messages,
                        args.timeout,
                        "every message to be filed on a ticket",
                    )
                    cpu = [cpu_seconds(p) - b for p, b in zip(pids, before, strict=True)]
                    busy = busy_since(machine_before)
                rows = filed(database)
                check_once(rows, args.messages)
                if args.after == "delete":
                    wait_until(lambda: box.count() == 0, 30, "the fetched messages deleted")
                elif (left := box.count()) != args.messages:
                    raise RuntimeError(f"{left} messages in the mailbox, {args.messages} kept")
                stop(gateway, store)
            finally:
                gateway.close()
            problems = log_problems(gateway.log, store.log) + box.problems()
    finally:
        box.close()
    read = [accept_time(str(q)) for q, _, _ in rows]  # the spool id starts with the time
    return Run(
        "mxdesk",
        args.messages,
        max(c for _, _, c in rows) - start,
        1000 * cpu[0] / args.messages,
        1000 * cpu[1] / args.messages,
        len(problems),
        busy,
        first_s=min(read) - start,
        fetched_s=max(read) - start,
        notes=problems[:5],
    )


# -- the report ------------------------------------------------------------------------------


def versions() -> str:
    fetchmail = subprocess.run(["fetchmail", "--version"], capture_output=True, text=True)
    release = next(
        (w for w in fetchmail.stdout.split() if w[:1].isdigit() and "." in w), "?"
    ).split("+")[0]
    dovecot = subprocess.run(["dovecot", "--version"], capture_output=True, text=True)
    return f"fetchmail {release}, Dovecot {dovecot.stdout.split()[0] if dovecot.stdout else '?'}"


def reproduce(args: argparse.Namespace) -> str:
    command = [".venv/bin/python", "bench/fetch_rate.py"]
    for name in ("messages", "size", "protocol", "after", "repeat", "poll_interval"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    if args.batch:
        command += ["--batch", str(args.batch)]
    return shlex.join(command)


def report(args: argparse.Namespace, runs: list[Run]) -> None:
    theirs = [r for r in runs if r.side == "fetchmail"]
    ours = [r for r in runs if r.side == "mxdesk"]
    best_f = max(theirs, key=lambda r: r.rate)
    best_m = max(ours, key=lambda r: r.rate)
    print()
    print(
        f"{args.messages} messages of about {args.size} bytes, {args.protocol.upper()} over TLS,"
        f" --after {args.after}, [channels] batch = {args.batch or 'default (50)'},"
        f" poll_interval = {args.poll_interval:g} s (POP3)"
    )
    print(cpus())
    print(f"kernel: {platform.release()}, {interpreter()}, {versions()}")
    print(f"work directory: {args.workdir}, {filesystem(Path(args.workdir).resolve())}")
    print()
    print(
        f"{'run':<5}{'side':<11}{'seconds':>8}{'msg/s':>8}{'first s':>9}{'fetched s':>11}"
        f"{'fetcher ms/msg':>16}{'store ms/msg':>14}{'CPUs busy':>11}{'problems':>10}"
    )
    for i, r in enumerate(runs, start=1):
        first = f"{r.first_s:.2f}" if r.fetched_s else "-"
        fetched = f"{r.fetched_s:.2f}" if r.fetched_s else "-"
        print(
            f"{i:<5}{r.side:<11}{r.seconds:>8.2f}{r.rate:>8.0f}{first:>9}{fetched:>11}"
            f"{r.fetcher_cpu_ms:>16.2f}{r.store_cpu_ms:>14.2f}{r.busy:>10.0f}%{r.problems:>10}"
        )
        for note in r.notes:
            print(f"       {note[:150]}")
    print()
    print(f"fetchmail (best of {len(theirs)}):  {best_f.rate:8.0f} msg/s")
    print(f"mxdesk    (best of {len(ours)}):  {best_m.rate:8.0f} msg/s")
    print(f"ratio mxdesk/fetchmail:  {best_m.rate / best_f.rate:8.2f}")

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    print(
        f"CPU per message, means: fetchmail {mean([r.fetcher_cpu_ms for r in theirs]):.2f} ms"
        f" (store {mean([r.store_cpu_ms for r in theirs]):.2f} ms);"
        f" gateway {mean([r.fetcher_cpu_ms for r in ours]):.2f} ms"
        f" (store {mean([r.store_cpu_ms for r in ours]):.2f} ms)"
    )
    print()
    print("seconds: start → the last message filed (tickets.db); first s, fetched s: start → the")
    print("gateway read the first, the last message (its spool id); problems: warnings and errors")
    print("in the logs (mxdesk, Dovecot, fetchmail's output) and fetchmail's exit code; CPUs busy:")
    print("the machine's CPUs during the run, whoever used them (other jobs show up here)")
    print("fetchmail command (rcfile: FETCHMAILHOME, mode 0700, and --fetchmailrc, mode 0600):")
    shown = fetchmail_command(args, 0, Path("CA"), Path("RUNTIME/store/lmtp.sock"))
    print("  " + shlex.join(shown).replace("--service 0", "--service PORT"))
    print("  --fetchmailrc RC --idfile DIR/fetchids --pidfile DIR/fetchmail.pid")
    print(f"  RC: {rcfile_text('PASSWORD').strip()}")
    print("reproduce:")
    print("  " + reproduce(args))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--messages", type=int, default=2000, help="messages in the mailbox")
    parser.add_argument("--size", type=int, default=4096, help="bytes of each message, about")
    parser.add_argument("--protocol", choices=("imap", "pop3"), default="imap")
    parser.add_argument(
        "--after",
        choices=("keep", "delete"),
        default="keep",
        help="the channel's --after; fetchmail gets --keep or --nokeep",
    )
    parser.add_argument("--repeat", type=int, default=2, help="runs of each side")
    parser.add_argument(
        "--batch", type=int, default=0, help="[channels] batch for the gateway (0: its default)"
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=0.5,
        help="[channels] poll_interval: how often the gateway looks at a POP3 mailbox",
    )
    parser.add_argument(
        "--profile",
        metavar="PREFIX",
        help="py-spy gateway and store during mxdesk runs into PREFIX-N-{gateway,store}.txt"
        " (the sampling costs CPU: not for the figures)",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for the last ticket"
    )
    parser.add_argument(
        "--workdir", default="/tmp", help="where the instances live (short path: Unix sockets)"
    )
    parser.add_argument(
        "--keep-dirs", action="store_true", help="leave the mxdesk directories (logs) behind"
    )
    args = parser.parse_args()
    for program in (*REQUIRED_PROGRAMS, "fetchmail"):
        if shutil.which(program) is None and not Path("/usr/sbin", program).exists():
            sys.exit(
                f"{program} is not installed (Debian packages dovecot-imapd, -pop3d, fetchmail)"
            )
    if args.profile and not (Path(sys.executable).parent / "py-spy").exists():
        sys.exit("--profile needs py-spy beside this Python: .venv/bin/pip install py-spy")
    runs: list[Run] = []
    for i in range(args.repeat):
        for side in ("fetchmail", "mxdesk"):
            print(f"run {i + 1}/{args.repeat}: {side} …", flush=True)
            runs.append(run_fetchmail(args) if side == "fetchmail" else run_mxdesk(args, i + 1))
    report(args, runs)


if __name__ == "__main__":
    main()
