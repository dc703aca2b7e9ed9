"""DKIM RSA-2048 signatures per second on one core: mxdesk against OpenSSL's own signing rate
(the ceiling: what is left is canonicalisation and hashing) and against dkimpy alone.

All sign the same reply-sized message with relaxed/relaxed canonicalisation; the figure is
signatures per second of wall-clock time in this one process (one core). mxdesk and OpenSSL are
measured in alternating rounds (--rounds), so that a machine whose speed changes during the run
treats both alike; the ratio is of the sums.

    .venv/bin/python bench/dkim_rate.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from collections.abc import Callable

import dkim
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

from mxdesk.gateway import dkim as mxdkim

MESSAGE = (
    b'From: "Suporte Marca" <suporte@marca.helpdesk.example>\r\n'
    b"To: cliente@example.org\r\nSubject: Re: [#12] Pedido atrasado\r\n"
    b"Date: Sat, 21 Nov 2026 05:44:09 +0000\r\nMessage-ID: <t12.abc@marca.helpdesk.example>\r\n"
    b"In-Reply-To: <p1@example.org>\r\nReferences: <p1@example.org>\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + b"Texto da resposta.\r\n" * 60
)


def rate(fn: Callable[[], object], seconds: float) -> float:
    fn()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        count += 1
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    pem = mxdkim.generate_key("rsa")
    key = mxdkim.load_key(pem, "marca.helpdesk.example", "mx1")
    ed = mxdkim.load_key(mxdkim.generate_key("ed25519"), "marca.helpdesk.example", "mx1e")
    digest = hashlib.sha256(MESSAGE).digest()
    rsa_key = key.private_key
    assert isinstance(rsa_key, rsa.RSAPrivateKey)
    ours_rounds, bare_rounds = [], []
    for _ in range(args.rounds):
        ours_rounds.append(
            rate(lambda: mxdkim.signature_header(MESSAGE, key), args.seconds / args.rounds)
        )
        bare_rounds.append(
            rate(
                lambda: rsa_key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256())),
                args.seconds / args.rounds,
            )
        )
    ours, bare = sum(ours_rounds) / args.rounds, sum(bare_rounds) / args.rounds
    ours_ed = rate(lambda: mxdkim.signature_header(MESSAGE, ed), args.seconds)
    pure = rate(
        lambda: dkim.sign(
            MESSAGE, b"mx1", b"marca.helpdesk.example", pem, canonicalize=(b"relaxed", b"relaxed")
        ),
        args.seconds,
    )
    print(f"{len(MESSAGE)}-byte message, one process, {os.cpu_count()} CPUs on the machine")
    print(f"mxdesk RSA-2048 (canonicalise, hash, sign):        {ours:8.0f} signatures/s")
    print(f"OpenSSL RSA-2048 alone (the ceiling):              {bare:8.0f} signatures/s")
    print(f"mxdesk / OpenSSL alone: {ours / bare:.2f}x")
    print(f"mxdesk Ed25519:                                    {ours_ed:8.0f} signatures/s")
    print(f"dkimpy alone RSA-2048 (pure-Python RSA):          {pure:8.0f} signatures/s")
    print(f"speed-up over dkimpy alone: {ours / pure:.1f}x")
    print(
        f"reproduce: .venv/bin/python bench/dkim_rate.py --seconds {args.seconds} --rounds",
        args.rounds,
    )


if __name__ == "__main__":
    main()
