"""Test-wide settings."""

import torch

# The tests train tiny networks: latency-bound work where one thread is many times faster than
# two on a busy 2-core machine (thread hand-offs dominate). Same as `sciml run`'s default.
torch.set_num_threads(1)
