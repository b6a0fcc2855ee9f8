"""Hold ports the way another program on the machine would, to check that fleetd and its tests work around them.

    python scripts/hold_ports.py 18000-18099      # listen on each free port of the range until Ctrl-C

Issue 14 asks that the suite pass while another process holds ports in fleetd's default replica range
(18000-18999): run this in one shell and ``python3 dev.py test`` in another. Ports already taken are skipped
and counted. It prints one line when it holds them, and exits 0 on SIGINT/SIGTERM.
"""

from __future__ import annotations

import signal
import socket
import sys
import threading


def hold(first: int, last: int) -> tuple[list[socket.socket], int]:
    held: list[socket.socket] = []
    skipped = 0
    for port in range(first, last + 1):
        sock = socket.socket()
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            sock.close()
            skipped += 1
            continue
        held.append(sock)
    return held, skipped


def main(argv: list[str]) -> int:
    try:
        first, last = (int(p) for p in (argv[0] if argv else "18000-18099").split("-"))
    except ValueError:
        sys.stderr.write("usage: hold_ports.py FIRST-LAST (e.g. 18000-18099)\n")
        return 1
    held, skipped = hold(first, last)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print(f"holding {len(held)} ports in {first}-{last} ({skipped} already taken)", flush=True)
    done.wait()
    for sock in held:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
