"""A segmenter for tests/test_ray_engine.py that ends its own process, as the kernel's OOM
killer would, when it is given more than ``max_slices`` slices at once (a scan whose lung box
is longer, with a batch size that holds the box); on others it gives an empty map.  It lives in a module of its own so that Ray workers can import it
(the test puts this folder on their PYTHONPATH)."""
import os
import time

import numpy as np


class KillsOnLongScans:
    def __init__(self, max_slices: int, log_path: str):
        self.max_slices = int(max_slices)
        self.log_path = str(log_path)

    def __call__(self, x):
        if x.shape[0] > self.max_slices:
            with open(self.log_path, "a") as f:      # one line per process it ends
                f.write(f"{os.getpid()} {time.time():.1f}\n")
            os._exit(1)
        return np.zeros(x.shape[:3] + (1,), np.float32)
