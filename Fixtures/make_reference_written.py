#!/usr/bin/env python3
"""Write Fixtures/reference-written.safetensors with the reference implementation.

Needs the `safetensors` and `numpy` Python packages (made with safetensors 0.8.0):

    python3 -m pip install safetensors numpy
    python3 Fixtures/make_reference_written.py

The tests read this file with `SafetensorsFile` and check that `SafetensorsWriter`, given the same
tensors and metadata, writes the same bytes. One metadata key only: the reference orders metadata
keys by hash, so with several the bytes would vary from run to run.
"""

import os

import numpy as np
from safetensors.numpy import save_file

here = os.path.dirname(os.path.abspath(__file__))
tensors = {
    "weights": np.array([[1.0, -2.5, 3e-20], [0.0, 65504.0, -0.125]], dtype="<f4"),
    "scalar": np.array(42.0, dtype="<f4"),
    "ids": np.array([7, -8, 2147483647, -2147483648], dtype="<i4"),
    "half": np.array([0.5, -1.0, 65504.0, 6.1035156e-05, 0.0], dtype="<f2"),
    "empty": np.zeros((0, 4), dtype="<f2"),
}
save_file(tensors, os.path.join(here, "reference-written.safetensors"), metadata={"format": "pt"})
