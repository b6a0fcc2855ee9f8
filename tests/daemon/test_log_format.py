"""The daemons' log lines: logfmt quoting that a parser reads back, JSON with the same fields."""

from __future__ import annotations

import io
import json
import logging
import re

from fleetd.daemon.log_format import LogFormat, configure_logging, logfmt_value


def test_logfmt_quotes_only_what_needs_it() -> None:
    assert logfmt_value("tiny/0") == "tiny/0"
    assert logfmt_value("127.0.0.1:18000") == "127.0.0.1:18000"
    assert logfmt_value(3) == "3"
    assert logfmt_value(None) == ""
    assert logfmt_value(True) == "true"
    assert logfmt_value("killed by SIGKILL") == '"killed by SIGKILL"'
    assert logfmt_value('a "quoted" \\ word\nnext') == '"a \\"quoted\\" \\\\ word\\nnext"'
    assert logfmt_value("") == '""'
    assert logfmt_value("a=b") == '"a=b"'


def emitted(style: LogFormat) -> str:
    stream = io.StringIO()
    configure_logging(stream, style)
    try:
        logging.getLogger("fleetd.agent.supervisor").warning(
            "replica %s killed by SIGKILL; restart %d in %s",
            "tiny/0",
            1,
            "1 s",
            extra={"fields": {"replica": "tiny/0", "restarts": 1, "msg": "not this"}},
        )
        logging.getLogger("fleetd.serve").debug("below INFO: not written")
    finally:
        logging.getLogger("fleetd").handlers.clear()
    return stream.getvalue()


def test_a_logfmt_line_carries_time_level_source_message_and_fields() -> None:
    (line,) = emitted(LogFormat.LOGFMT).splitlines()
    assert re.fullmatch(
        r"ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z level=warning src=agent\.supervisor "
        r'msg="replica tiny/0 killed by SIGKILL; restart 1 in 1 s" replica=tiny/0 restarts=1',
        line,
    ), line


def test_a_json_line_is_one_object_with_the_same_fields() -> None:
    (line,) = emitted(LogFormat.JSON).splitlines()
    event = json.loads(line)
    assert event["level"] == "warning" and event["src"] == "agent.supervisor"
    assert event["msg"] == "replica tiny/0 killed by SIGKILL; restart 1 in 1 s"  # a field cannot replace it
    assert (event["replica"], event["restarts"]) == ("tiny/0", 1)
