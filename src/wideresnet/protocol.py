"""How a run departs from the paper's protocol, in one place: which options may change on
resume, which of those change what a run measures, which options are compared with the
paper's config at all, and the flags a result carries wherever it is shown.

The paper trains on every training image, tests on every test image after every epoch, and
reports the last epoch's test error of an unchanged recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wideresnet.config import Config

# Options that may change on resume, each recorded in config.json, the checkpoint and result.json
RESUME_CHANGES = (
    "lr",
    "epochs",
    "milestones",
    "data_dir",
    "checkpoint_every",
    "eval_batch_size",
    "eval_every",
    "tensorboard",
    "device",
)
# Resume changes that alter what a run measures: flagged wherever its result is shown
MEASUREMENT_CHANGES = ("lr", "epochs", "milestones")
# Options not compared with the paper's config of a cell: where the data lives, the seed, and
# options whose own flags (run_flags) say how they depart from the protocol
NOT_PROTOCOL = frozenset(
    {"data_dir", "dataset", "seed", "experiment", "verify", "init_from", "labels"}
    | {"train_limit", "val_size", "val_and_test", "eval_limit"}
)


@dataclass(frozen=True)
class ConfigChange:
    """An option changed on resume, from epoch `epoch` step `step_in_epoch` on."""

    key: str
    before: Any
    after: Any
    epoch: int
    step_in_epoch: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "from": self.before,
            "to": self.after,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ConfigChange:
        return cls(
            str(values["key"]),
            values.get("from"),
            values.get("to"),
            int(values.get("epoch", 0)),
            int(values.get("step_in_epoch", 0)),
        )

    @property
    def flag(self) -> str:
        """How the change is flagged in results."""
        return (
            f"changed on resume: {self.key} {self.before!r} -> {self.after!r} from epoch "
            f"{self.epoch} step {self.step_in_epoch}"
        )


def run_flags(config: Config) -> list[str]:
    """How a run's own options depart from the paper's protocol (quick-evaluation options)."""
    data, runtime = config.data, config.runtime
    flags = []
    if data.train_limit:
        flags.append(f"train_limit={data.train_limit}: trained on the first N training images")
    if data.val_size and data.val_and_test:
        flags.append(f"val_size={data.val_size}: trained without them (held out to validate)")
    elif data.val_size:
        flags.append(f"val_size={data.val_size}: tested on held-out training images")
    if data.eval_limit:
        flags.append(f"eval_limit={data.eval_limit}: test error on the first N test images")
    if runtime.eval_every > 1:
        flags.append(f"eval_every={runtime.eval_every}: tested every N epochs and the last")
    return flags


def result_flags(config: Config, changes: list[ConfigChange]) -> list[str]:
    """Every flag of a result: the run's own, and the measurement changes made on resume."""
    return run_flags(config) + [c.flag for c in changes if c.key in MEASUREMENT_CHANGES]
