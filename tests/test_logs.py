"""The server's log handler: request lines are buffered briefly, warnings are not."""

from __future__ import annotations

import asyncio
import logging

from proxy.logs import FLUSH_SECONDS, BufferedLogHandler


async def test_info_lines_wait_for_the_flush_and_warnings_go_out_at_once(capfd):
    handler = BufferedLogHandler()
    log = logging.getLogger("creditgate.test-logs")
    log.propagate, log.level = False, logging.INFO
    log.addHandler(handler)
    try:
        for number in range(3):
            log.info("request %d", number)
        assert capfd.readouterr().err == ""  # buffered: no write per line
        await asyncio.sleep(FLUSH_SECONDS + 0.2)
        assert capfd.readouterr().err == "request 0\nrequest 1\nrequest 2\n"
        log.info("quiet")
        log.warning("loud")
        assert capfd.readouterr().err == "quiet\nloud\n"  # the warning flushed both
    finally:
        log.removeHandler(handler)
        handler.close()


def test_outside_an_event_loop_every_line_is_written(capfd):
    handler = BufferedLogHandler()
    log = logging.getLogger("creditgate.test-logs-sync")
    log.propagate, log.level = False, logging.INFO
    log.addHandler(handler)
    try:
        log.info("at once")
        assert capfd.readouterr().err == "at once\n"
    finally:
        log.removeHandler(handler)
        handler.close()
