"""Training: the loop, one step, evaluation, checkpoints, the run directory and the runtime."""

from wideresnet.train.evaluate import evaluate
from wideresnet.train.run import Trained, build_model, evaluate_run, load_trained, resume, train

__all__ = ["Trained", "build_model", "evaluate", "evaluate_run", "load_trained", "resume", "train"]
