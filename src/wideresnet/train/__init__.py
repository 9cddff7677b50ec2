"""Training: the loop, one step, evaluation, checkpoints, the run directory and the runtime."""

from wideresnet.train.evaluate import evaluate
from wideresnet.train.run import resume, train
from wideresnet.train.runtime import Runtime
from wideresnet.train.trained import Trained, build_model, evaluate_run, load_trained

__all__ = [
    "Runtime",
    "Trained",
    "build_model",
    "evaluate",
    "evaluate_run",
    "load_trained",
    "resume",
    "train",
]
