"""Run an ONNX face embedding model with onnxruntime.

Input name and size are read from the session, not assumed. ``mean`` and ``std`` describe the
normalisation the graph expects outside itself (SFace normalises inside the graph, so 0 and 1).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from faceaudit.engines.onnx_rewrite import prepare_for_onnxruntime
from faceaudit.errors import ModelError


class OnnxEmbedder:
    """Embed aligned (N, S, S, 3) uint8 RGB crops with an NCHW float32 ONNX model."""

    def __init__(
        self,
        model_bytes: bytes,
        *,
        threads: int = 1,
        mean: float = 0.0,
        std: float = 1.0,
        rewrite: bool = True,
    ) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            graph = prepare_for_onnxruntime(model_bytes) if rewrite else model_bytes
            self._session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnx and onnxruntime raise many unrelated types
            raise ModelError(f"onnxruntime cannot load the embedding model: {exc}") from exc
        inp = self._session.get_inputs()[0]
        shape = inp.shape
        if len(shape) != 4 or shape[1] != 3 or not isinstance(shape[2], int) or shape[2] != shape[3]:
            raise ModelError(f"expected an NCHW input of shape (N, 3, S, S), got {shape} for input {inp.name!r}")
        self._input = inp.name
        self.input_size = int(shape[2])
        self.output_dim = int(self._session.get_outputs()[0].shape[-1])
        self.mean = float(mean)
        self.std = float(std)

    def embed(self, crops: np.ndarray) -> np.ndarray:
        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[1:] != (self.input_size, self.input_size, 3):
            raise ValueError(f"expected crops of shape (N, {self.input_size}, {self.input_size}, 3), got {crops.shape}")
        blob = crops.transpose(0, 3, 1, 2).astype(np.float32)
        if self.mean != 0.0 or self.std != 1.0:
            blob = (blob - self.mean) / self.std
        out = self._session.run(None, {self._input: np.ascontiguousarray(blob)})[0]
        return np.asarray(out, dtype=np.float32).reshape(len(crops), -1)
