"""The paper's tables as data (registry), a table as runs (plan), running them (runner), and
what a table costs (cost)."""

from wideresnet.experiments.plan import PlannedRun, plan
from wideresnet.experiments.registry import FIGURES, TABLES, Row, Table, authors_log, get_table
from wideresnet.experiments.runner import TableRunner, parse_devices, print_commands

__all__ = [
    "FIGURES",
    "TABLES",
    "PlannedRun",
    "Row",
    "Table",
    "TableRunner",
    "authors_log",
    "parse_devices",
    "get_table",
    "plan",
    "print_commands",
]
