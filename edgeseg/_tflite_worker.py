"""Runs inside the TFLite converter venv (see :mod:`edgeseg.tflite_import`); imports TensorFlow, never edgeseg.

Usage: ``python _tflite_worker.py MODEL.tflite OUT.onnx CHECK.npz N``: converts with tf2onnx (opset 17), then
runs the ``.tflite`` in LiteRT (``ai_edge_litert``, which also knows MediaPipe's custom ops; TensorFlow's
own ``tf.lite.Interpreter`` does not) on N seeded random inputs (uniform in [0, 1)) and
saves inputs and outputs to CHECK.npz (``in<k>_<i>``, ``out<k>_<j>``) for the caller to compare with ONNX Runtime.
"""

from __future__ import annotations

import subprocess
import sys


def main(argv: list[str]) -> int:
    model, out, check, count = argv[0], argv[1], argv[2], int(argv[3])
    proc = subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--tflite", model, "--opset", "17",
                           "--output", out], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        return proc.returncode
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=model)
    it.allocate_tensors()
    rng = np.random.default_rng(0)
    arrays = {}
    for k in range(count):
        for i, d in enumerate(it.get_input_details()):
            if d["dtype"] != np.float32:
                sys.stderr.write(f"Error: input {d['name']} is {np.dtype(d['dtype']).name}; float32 models only\n")
                return 3
            x = rng.random(tuple(int(v) for v in d["shape"]), dtype=np.float32)
            it.set_tensor(d["index"], x)
            arrays[f"in{k}_{i}"] = x
        it.invoke()
        for j, d in enumerate(it.get_output_details()):
            arrays[f"out{k}_{j}"] = np.array(it.get_tensor(d["index"]), dtype=np.float32)
    np.savez(check, **arrays)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
