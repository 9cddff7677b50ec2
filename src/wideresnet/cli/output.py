"""Printing the library's log: info to stdout (stderr where stdout carries JSON), warnings to
stderr, progress as a bar."""

from __future__ import annotations

import logging
import os
import sys
import time


class PrintHandler(logging.Handler):
    """Info to stdout, warnings to stderr; progress records as a bar on a terminal, and as a
    line every PLAIN_PROGRESS_SECONDS (and the last) otherwise."""

    PLAIN_PROGRESS_SECONDS = 10.0

    def __init__(self) -> None:
        super().__init__()
        self.json_output = False  # stdout carries JSON: info and progress go to stderr
        self.tty = sys.stdout.isatty()
        self.bar_open = False
        self.last_plain: dict[str, float] = {}

    @property
    def out(self):
        return sys.stderr if self.json_output else sys.stdout

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        key = getattr(record, "progress", None)
        if key is not None:
            self._progress(key, message, record.progress_end)  # type: ignore[attr-defined]
            return
        self._close_bar()
        if record.levelno >= logging.WARNING:
            print(f"warning: {message}", file=sys.stderr, flush=True)
        else:
            print(message, file=self.out, flush=True)

    def _progress(self, key: str, message: str, end: bool) -> None:
        if self.tty:
            print(f"\r\033[K{message}", end="\n" if end else "", file=self.out, flush=True)
            self.bar_open = not end
            return
        now = time.monotonic()
        if end or now - self.last_plain.get(key, -1e9) >= self.PLAIN_PROGRESS_SECONDS:
            self.last_plain[key] = now
            print(message, file=self.out, flush=True)

    def _close_bar(self) -> None:
        if self.bar_open:
            print("\r\033[K", end="", file=self.out, flush=True)
            self.bar_open = False


def configure_logging(json_output: bool = False) -> None:
    """The library's log through PrintHandler; with `json_output` (the verb prints JSON on
    stdout) info and progress go to stderr, so that stdout parses."""
    logger = logging.getLogger("wideresnet")
    handler = next((h for h in logger.handlers if isinstance(h, PrintHandler)), None)
    if handler is None:
        handler = PrintHandler()
        logger.addHandler(handler)
    handler.json_output = json_output
    handler.tty = handler.out.isatty()
    logger.setLevel(logging.DEBUG if os.environ.get("WRN_DEBUG") else logging.INFO)
    logger.propagate = False
