"""Python's start-up imports this in every process of a Slurm job that the time-limit test
submits (its folder on PYTHONPATH): each call of `wrn train`'s loss first sleeps
WRN_TEST_STEP_SLEEP seconds. The run then lasts past Slurm's signal window as a long run
would, without keeping a core busy for a minute; its training is the real one."""

import os

if os.environ.get("WRN_TEST_STEP_SLEEP"):
    import time

    from wideresnet.train import step

    pause, loss_fn = float(os.environ["WRN_TEST_STEP_SLEEP"]), step.loss_fn

    def paced(*args, **kwargs):
        time.sleep(pause)
        return loss_fn(*args, **kwargs)

    step.loss_fn = paced
