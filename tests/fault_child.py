"""`wrn` in its own process with a real fault at a chosen training step (helpers.wrn_with):

    AT_STEP=N ACTION=sigterm|nan python tests/fault_child.py ARGS...

runs the real `wrn` entry point on ARGS with helpers.fault_at(N, ACTION): the N-th call of the
training step's loss sends this process a real SIGTERM, or returns NaN.
"""

import os
import sys

from helpers import fault_at

from wideresnet import cli

with fault_at(int(os.environ["AT_STEP"]), os.environ["ACTION"]):
    code = cli.main(sys.argv[1:])
sys.exit(code)
