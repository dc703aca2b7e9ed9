"""How long the `mxdesk` command takes to answer, as a person at a terminal sees it.

A fresh installation with one tenant and --tickets tickets (default 1,000) filed by the store;
each command is run --runs times (wall clock, a new process each time, as from a shell) and
the median and the slowest are printed next to `python -c pass` on the same machine.

    .venv/bin/python bench/cli_latency.py [--tickets 1000] [--runs 15]
"""

from __future__ import annotations

import argparse
import getpass
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mxdesk.state import Mailbox
from mxdesk.store.db import open_tickets
from mxdesk.store.tickets import TicketStore

MXDESK = [sys.executable, "-m", "mxdesk"]
TARGET = 0.150  # seconds


def setup(root: Path, tickets: int) -> Path:
    config = root / "mxdesk.toml"
    config.write_text(
        f'[mxdesk]\nbase_domain = "helpdesk.example"\nallow_example_domain = true\n'
        f'state_dir = "{root}/state"\nruntime_dir = "{root}/run"\nuser = "{getpass.getuser()}"\n'
    )
    for args in (["init"], ["tenant", "add", "marca", "--owner", "dono@marca.example"]):
        done = subprocess.run([*MXDESK, "--config", str(config), *args], capture_output=True)
        assert done.returncode == 0, done.stderr.decode()
    box = Mailbox("suporte@marca.helpdesk.example", "marca", "Suporte", True, True, 0.0)
    store = TicketStore(open_tickets(root / "state" / "tickets.db"))
    for i in range(tickets):
        raw = (
            f"X-Mxdesk-Queue-Id: Q{i}\r\nFrom: Cliente {i} <c{i}@example.com>\r\n"
            f"To: {box.address}\r\nSubject: Pedido {i} atrasado\r\n"
            f"Message-ID: <m{i}@example.com>\r\n\r\nOnde está o pedido {i}?\r\n"
        ).encode()
        store.file_all(raw, f"c{i}@example.com", [box])
    store.close()
    return config


def timed(command: list[str], runs: int) -> list[float]:
    subprocess.run(command, check=True, capture_output=True)  # warm the page cache
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tickets", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mxcli"))
    try:
        config = setup(root, args.tickets)
        with_config = [*MXDESK, "--config", str(config)]
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "mxdesk --help": [*MXDESK, "--help"],
            f"mxdesk ticket list ({args.tickets} tickets)": [*with_config, "ticket", "list"],
            "mxdesk ticket list --json": [*with_config, "ticket", "list", "--json"],
            "mxdesk ticket show 1": [*with_config, "ticket", "show", "1"],
            "mxdesk tenant list": [*with_config, "tenant", "list"],
            "mxdesk domain list": [*with_config, "domain", "list"],
            "mxdesk queue list": [*with_config, "queue", "list"],
        }
        python = sys.version.split()[0]
        print(f"{args.runs} runs each, wall clock, a new process per run (Python {python})")
        print(f"{'command':<40} {'median':>8} {'slowest':>8}  target {TARGET * 1000:.0f} ms")
        for name, command in commands.items():
            seconds = timed(command, args.runs)
            median = statistics.median(seconds)
            verdict = "" if name.startswith("python") else ("ok" if median < TARGET else "SLOW")
            print(f"{name:<40} {median * 1000:>6.0f}ms {max(seconds) * 1000:>6.0f}ms  {verdict}")
        print(
            f"\nreproduce: .venv/bin/python bench/cli_latency.py --tickets {args.tickets}", end=""
        )
        print(f" --runs {args.runs}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
