"""Server log lines: buffered briefly (warnings not); the request ids and pid they carry."""

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


def test_request_ids_are_unique_and_a_forked_worker_draws_its_own_prefix():
    import os

    from proxy.metered import REQUEST_IDS

    ids = {REQUEST_IDS.next() for _ in range(1000)}
    assert len(ids) == 1000
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: report its first id and its pid as seen by the log lines
        os.write(write, f"{REQUEST_IDS.next()} {REQUEST_IDS.pid}".encode())
        os._exit(0)
    os.waitpid(child, 0)
    child_id, child_pid = os.read(read, 200).decode().split()
    assert int(child_pid) == child and child_pid != str(os.getpid())
    assert child_id[:24] != next(iter(ids))[:24]  # another prefix: no collision across workers
