"""``sd_notify`` over a real Unix datagram socket, as systemd's manager would receive it."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from fleetd.daemon.sd_notify import notify, watchdog_interval_s


def test_notify_sends_one_datagram_and_is_a_no_op_outside_systemd(tmp_path: Path) -> None:
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(address)
        manager.settimeout(5)
        assert notify("READY=1", environ={"NOTIFY_SOCKET": address})
        assert manager.recv(64) == b"READY=1"
    assert not notify("READY=1", environ={})


def test_watchdog_interval_is_half_the_timeout_and_only_for_this_process() -> None:
    assert watchdog_interval_s(environ={"WATCHDOG_USEC": "4000000"}) == 2.0
    assert watchdog_interval_s(environ={"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}) == 2.0
    assert watchdog_interval_s(environ={"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s(environ={}) is None
