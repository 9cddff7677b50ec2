"""The experiment tag TABLE/ROW@COLUMN: the table cell a run fills (config.json
`experiment`, written by `wrn table run`), written and read here alone."""

from __future__ import annotations

import re
from dataclasses import dataclass

PATTERN = re.compile(r"(?P<table>[\w.-]+)/(?P<row>[\w.,-]+)@(?P<column>[\w-]+)")


@dataclass(frozen=True)
class Tag:
    table: str
    row: str
    column: str

    def __str__(self) -> str:
        return f"{self.table}/{self.row}@{self.column}"

    @classmethod
    def parse(cls, text: object) -> Tag | None:
        """The tag in `text`, or None when it is not one."""
        match = PATTERN.fullmatch(text) if isinstance(text, str) else None
        return cls(**match.groupdict()) if match else None
