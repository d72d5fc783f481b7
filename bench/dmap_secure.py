"""DMAP startsecure cost: one handshake (RSA-2048 OAEP decryption and the key derivation) and
sealing plus opening lines of a few sizes with the AES-GCM channel (pure code, one core).

    .venv/bin/python bench/dmap_secure.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import statistics
import time

from mailstead.proto import dmap_crypto


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    key = dmap_crypto.load_private_key(dmap_crypto.generate_private_key_pem())
    times = []
    for _ in range(args.rounds):
        client = dmap_crypto.ClientHandshake(key.public_key())
        hello = client.hello()
        start = time.perf_counter()
        dmap_crypto.open_client_hello(key, hello, dmap_crypto.new_server_nonce())
        times.append(time.perf_counter() - start)
    print(f"server side of a handshake: p50 {statistics.median(times) * 1e3:.2f} ms, "
          f"max {max(times) * 1e3:.2f} ms ({args.rounds} rounds)")
    for size in (16, 1024, 64 * 1024):
        sender = dmap_crypto.SecureChannel(b"k" * 32, b"i" * 16, b"n" * 16, server=False)
        receiver = dmap_crypto.SecureChannel(b"k" * 32, b"i" * 16, b"n" * 16, server=True)
        text = "x" * size
        lines = 20_000 if size < 60_000 else 500
        start = time.perf_counter()
        for _ in range(lines):
            receiver.open(sender.seal(text))
        elapsed = time.perf_counter() - start
        print(f"seal+open of a {size}-character line: {elapsed / lines * 1e6:.1f} us "
              f"({size * lines / elapsed / 1e6:.1f} MB/s)")


if __name__ == "__main__":
    main()
