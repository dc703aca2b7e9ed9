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
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from accept_rate import (
    accept_time,
    busy_since,
    cpu_seconds,
    cpu_ticks,
    cpus,
    filesystem,
    interpreter,
    new_dir,
    wait_until,
)
from daemons import Daemon, cli, provision, write_config
from dovecot_mail import REQUIRED_PROGRAMS, MailServer

from mxdesk.gateway.fetch.ledger import read_statuses

USER = "caixa@empresa.example"  # the company mailbox, a Dovecot login
PASSWORD = "s3nha-caixa"
# Where fetchmail delivers: a mailbox provision() creates (the store answers 550 for others).
STORE_MAILBOX = "suporte@marca.helpdesk.example"
# The certificate of tests/dovecot_mail.py is for this name; fetchmail checks only DNS names.
SERVER_NAME = "localhost"
# The [channels] section of the gateway; poll_interval matters for POP3 only (IMAP: IDLE).
CHANNELS = """
[channels]
poll_interval = {poll}
timeout = 30
retry_initial = 0.1
retry_max = 1
"""
ROOT_WARNING = "Running as root is discouraged"


@dataclass
class Run:
    side: str  # "fetchmail" or "mxdesk"
    messages: int
    seconds: float  # start → the last message filed
    fetcher_cpu_ms: float  # fetchmail's or the gateway's CPU time per message
    store_cpu_ms: float
    problems: int
    busy: float  # share of all the machine's CPUs busy (anyone's work) during the run, %
    first_s: float = 0.0  # mxdesk: start → the first message read from the mailbox
    fetched_s: float = 0.0  # mxdesk: start → the last message read (then committed)
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


# -- the mailbox -----------------------------------------------------------------------------


def message(i: int, size: int) -> bytes:
    """Message i of every run: distinct Message-ID, sender and subject (a ticket each), LF line
    ends as a local delivery agent stores them in a Maildir, padded to about size bytes."""
    head = (
        f"Return-Path: <cliente{i}@cliente.example>\n"
        f"From: Cliente {i} <cliente{i}@cliente.example>\n"
        f"To: Empresa <{USER}>\n"
        f"Subject: Pedido {i:05d}: a impressora nao imprime\n"
        f"Date: Wed, 02 Dec 2026 10:{i // 60 % 60:02d}:{i % 60:02d} +0000\n"
        f"Message-ID: <pedido{i}@cliente.example>\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=us-ascii\n"
        "\n"
    )
    line = f"Linha do pedido {i:05d}: a impressora do andar 3 nao imprime desde ontem.\n"
    body = line * max(1, (size - len(head)) // len(line))
    return (head + body).encode()


def expected_ids(count: int) -> set[str]:
    return {f"<pedido{i}@cliente.example>" for i in range(count)}


class Mailbox:
    """The company mailbox: one user of a fresh private Dovecot, whose Maildir the bench fills
    itself the way a delivery agent does (write into tmp/, rename into new/). doveadm save
    takes 30-50 ms a message, minutes for thousands; 2000 renames take about 80 ms."""

    def __init__(self) -> None:
        self.server = MailServer({USER: PASSWORD})
        self.maildir = self.server.root / "home" / USER / "Maildir"
        self._staged: list[tuple[Path, Path]] = []

    def start(self) -> None:
        self.server.start()
        owner = self.server.owner
        for path in (self.maildir.parent, self.maildir, *self._subdirs()):
            path.mkdir(mode=0o700, exist_ok=True)
            os.chown(path, owner.uid, owner.gid)

    def _subdirs(self) -> list[Path]:
        return [self.maildir / name for name in ("tmp", "new", "cur")]

    def stage(self, count: int, size: int) -> None:
        """Writes the messages into tmp/, where Dovecot does not look."""
        owner = self.server.owner
        now, pid = int(time.time()), os.getpid()
        for i in range(count):
            data = message(i, size)
            # Dovecot reads the file size from S= instead of a stat.
            name = f"{now}.M{i}P{pid}.bench,S={len(data)}"
            tmp = self.maildir / "tmp" / name
            tmp.write_bytes(data)
            os.chown(tmp, owner.uid, owner.gid)
            self._staged.append((tmp, self.maildir / "new" / name))

    def publish(self) -> None:
        """The staged messages arrive: renamed into new/, as a delivery agent does."""
        for tmp, new in self._staged:
            os.rename(tmp, new)
        self._staged.clear()

    def count(self) -> int:
        return self.server.status(USER)["messages"]

    def problems(self) -> list[str]:
        return [
            line
            for line in self.server.log_text().splitlines()
            if " Error: " in line or " Warning: " in line or " Fatal: " in line
        ]

    def close(self) -> None:
        self.server.close()


# -- what both sides share -----------------------------------------------------------------


def filed(database: Path) -> list[tuple[str | None, str | None, float]]:
    """(queue id, Message-ID, created) of every message in tickets.db."""
    if not database.exists():
        return []
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute("SELECT queue_id, message_id, created FROM messages").fetchall()
    except sqlite3.OperationalError:  # the store has not made its schema yet
        return []
    finally:
        conn.close()


def check_once(rows: list[tuple[str | None, str | None, float]], count: int) -> None:
    """Every message of the mailbox is in tickets.db, and only once."""
    ids = [mid for _, mid, _ in rows]
    if len(ids) != count or set(ids) != expected_ids(count):
        missing = len(expected_ids(count) - set(ids))
        raise RuntimeError(f"{len(ids)} messages filed for {count} ({missing} missing)")


def log_problems(*logs: Path) -> list[str]:
    return [
        line
        for log in logs
        for line in log.read_text(errors="replace").splitlines()
        if " WARNING " in line or " ERROR " in line or "duplicate delivery" in line
    ]


@contextmanager
def mxdesk_instance(args: argparse.Namespace) -> Iterator[tuple[Path, Daemon]]:
    """A provisioned mxdesk root (config, state) with its store running; removed afterwards."""
    root = new_dir(args, "mx")
    config = write_config(root)
    channels = CHANNELS.format(poll=args.poll_interval) + batch_setting(args)
    config.write_text(config.read_text() + channels)
    provision(config)
    store = Daemon(config, "store", root / "store.log")
    try:
        store.start()
        yield root, store
    finally:
        store.close()
        if not args.keep_dirs:
            shutil.rmtree(root, ignore_errors=True)


def batch_setting(args: argparse.Namespace) -> str:
    return f"batch = {args.batch}\n" if args.batch else ""


def stop(*daemons: Daemon) -> None:
    codes = [d.terminate() for d in daemons]
    if any(codes):
        raise RuntimeError(f"{[d.command for d in daemons]} exited {codes}")


def pid_of(daemon: Daemon) -> int:
    assert daemon.proc is not None
    return daemon.proc.pid


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
