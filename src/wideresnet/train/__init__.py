"""Training: the loop, one step, evaluation, checkpoints, the run directory and the runtime.

`train` and `resume` live in train/run.py (the package root re-exports `resume`): this
package's own import stays light, so that export.py can read checkpoints without starting a
run's machinery (which, for a distillation teacher, reads exports).

`wideresnet.train` is this package, never shadowed by a function, so that `import
wideresnet.train.step` and `wideresnet.train.loop` work; calling it, `wideresnet.train(config,
out)`, is train/run.py's `train` (0.3's public function of that name)."""

import sys
import types

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


class _TrainPackage(types.ModuleType):
    """This package, callable as train/run.py's `train`."""

    def __call__(self, *args, **kwargs):
        from wideresnet.train.run import train

        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _TrainPackage
