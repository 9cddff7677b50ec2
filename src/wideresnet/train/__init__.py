"""Training: the loop, one step, evaluation, checkpoints, the run directory and the runtime.

`train` and `resume` live in train/run.py (the package root re-exports them): this package's
own import stays light, so that export.py can read checkpoints without starting a run's
machinery (which, for a distillation teacher, reads exports)."""

from wideresnet.train.evaluate import evaluate
from wideresnet.train.runtime import Runtime
from wideresnet.train.trained import Trained, build_model, evaluate_run, load_trained

__all__ = [
    "Runtime",
    "Trained",
    "build_model",
    "evaluate",
    "evaluate_run",
    "load_trained",
]
