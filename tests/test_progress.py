"""Progress of work outside Lightning's loops: log lines when stdout is not a terminal, a bar
(with log lines printed above it) in one."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT

from ftlab.progress import Progress, track

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_lines_say_how_far_and_what_is_running(caplog):
    caplog.set_level(logging.INFO, logger="ftlab")
    with Progress("WiSE-FT", total=4, every_s=0) as progress:
        for alpha in ("0", "1"):
            progress.step(f"α={alpha} val")
            progress.advance()
            progress.advance()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("WiSE-FT: 1/4 batches (25%), α=0 val, ")
    assert lines[0].endswith(" s left")
    assert lines[2].startswith("WiSE-FT: 3/4 batches (75%), α=1 val, ")
    assert len(lines) == 3  # none for the last batch: the caller says what it finished


def test_no_lines_for_a_short_job_or_another_rank(caplog):
    caplog.set_level(logging.INFO, logger="ftlab")
    assert list(track(range(3), 3, "features")) == [0, 1, 2]  # faster than LOG_EVERY_S
    assert list(track(range(3), 3, "features", show=False, every_s=0)) == [0, 1, 2]
    assert caplog.records == []


BAR_SCRIPT = textwrap.dedent(
    """
    import logging, sys, time
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="[%(name)s] %(message)s")
    from ftlab.progress import Progress
    with Progress("work", total=3) as progress:
        for part in range(3):
            progress.step(f"part {part}")
            time.sleep(0.3)  # rich redraws the bar in between
            logging.getLogger("ftlab").info("result of part %d", part)
            progress.advance()
    """
)


@pytest.mark.slow  # a fresh interpreter in a pseudo-terminal
@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_a_terminal_gets_a_bar_and_log_lines_above_it():
    import pty

    leader, follower = pty.openpty()
    child = subprocess.Popen(
        [sys.executable, "-c", BAR_SCRIPT], cwd=ROOT, stdout=follower, stderr=follower
    )
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    assert child.wait(timeout=120) == 0, output.decode(errors="replace")[-2000:]
    text = output.decode(errors="replace")
    assert "━" in text and "work part 2" in text  # a bar, naming the part under way
    # Each log line is a line of its own: without the handler pointed at rich's stream, it
    # would be written after the bar, on the bar's line ("...0:00:01[ftlab] result of part 0").
    lines = [ANSI.sub("", line).split("\r")[-1] for line in text.split("\r\n")]
    results = [line for line in lines if "result of part" in line]
    assert results == [f"[ftlab] result of part {i}" for i in range(3)], lines
