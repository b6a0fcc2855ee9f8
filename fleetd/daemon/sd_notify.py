"""systemd's notify protocol (``sd_notify(3)``) without a dependency: one datagram on ``$NOTIFY_SOCKET``.

``fleetd serve`` and ``fleetd agent`` run as ``Type=notify`` units: it sends ``READY=1`` after its first cycle, and with
``WatchdogSec=`` set, ``WATCHDOG=1`` every half of ``$WATCHDOG_USEC`` while its loop is alive (for ``serve``:
while its cycles make progress, not merely while its worker thread exists), so systemd restarts a hung
controller. Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable


def notify(message: str, *, environ: dict[str, str] | None = None) -> bool:
    """Send ``message`` (e.g. ``READY=1``); ``False`` when not under systemd or the socket refused it."""
    address = (environ if environ is not None else os.environ).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError:
        return False
    return True


def watchdog_interval_s(*, environ: dict[str, str] | None = None) -> float | None:
    """Half the watchdog timeout systemd asks for, or ``None`` when no watchdog is set (or not for us)."""
    env = environ if environ is not None else os.environ
    usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000


def watch_until(stopping: threading.Event, alive: Callable[[], bool]) -> None:
    """Wait for ``stopping``, asking ``alive()`` every second (or every half watchdog timeout, when shorter) and
    telling systemd ``WATCHDOG=1`` only while it says yes; then ``STOPPING=1``. ``alive()`` is asked even
    without a watchdog, so that the daemon notices (and says) when its loop stopped making progress."""
    watchdog = watchdog_interval_s()
    while not stopping.wait(min(watchdog or 1.0, 1.0)):
        if alive() and watchdog is not None:
            notify("WATCHDOG=1")
    notify("STOPPING=1")
