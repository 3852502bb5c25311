"""Run an ONNX face embedding model with onnxruntime.

Input name and size are read from the session, not assumed. ``mean`` and ``std`` describe the
normalisation the graph expects outside itself, ``(x - mean) / std`` on 0-255 pixels (SFace
normalises inside the graph, so 0 and 1). Either may be one number or three, one per channel in the
order the model takes them (``channels``). ``layout`` is the input tensor's: NCHW or NHWC.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from faceaudit.engines.onnx_rewrite import prepare_for_onnxruntime
from faceaudit.errors import ModelError

LAYOUTS = ("NCHW", "NHWC")
CHANNEL_ORDERS = ("RGB", "BGR")


def _per_channel(value: float | Sequence[float], what: str) -> float | np.ndarray:
    """A scalar stays a Python float (the default engine's arithmetic, unchanged); three values become float32."""
    if isinstance(value, int | float):
        return float(value)
    arr = np.asarray(value, dtype=np.float64).ravel()
    if arr.shape != (3,):
        raise ValueError(f"{what} must be one number or three (one per channel), got {list(value)}")
    if np.all(arr == arr[0]):
        return float(arr[0])
    return arr.astype(np.float32)


class OnnxEmbedder:
    """Embed aligned (N, S, S, 3) uint8 RGB crops with a float32 ONNX model (NCHW or NHWC, RGB or BGR)."""

    def __init__(
        self,
        model_bytes: bytes,
        *,
        threads: int = 1,
        mean: float | Sequence[float] = 0.0,
        std: float | Sequence[float] = 1.0,
        rewrite: bool = True,
        layout: str = "NCHW",
        channels: str = "RGB",
        input_size: int | None = None,
        max_batch: int | None = None,
    ) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        if channels not in CHANNEL_ORDERS:
            raise ValueError(f"channels must be one of {', '.join(CHANNEL_ORDERS)}, got {channels!r}")
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
        shape = list(inp.shape)
        self.layout = layout
        self.channels = channels
        self.input_size = self._input_size(inp.name, shape, input_size)
        self._input = inp.name
        out_dim = self._session.get_outputs()[0].shape[-1] if self._session.get_outputs()[0].shape else None
        #: The output's last dimension when the graph fixes it (None when symbolic).
        self.output_dim = int(out_dim) if isinstance(out_dim, int) else None
        mean_v = _per_channel(mean, "mean")
        std_v = _per_channel(std, "std")
        if np.any(np.asarray(std_v) == 0):
            raise ValueError("std must not be 0")
        if isinstance(mean_v, np.ndarray) and layout == "NCHW":
            mean_v = mean_v.reshape(1, 3, 1, 1)
        if isinstance(std_v, np.ndarray) and layout == "NCHW":
            std_v = std_v.reshape(1, 3, 1, 1)
        self.mean: float | np.ndarray = mean_v
        self.std: float | np.ndarray = std_v
        self._normalise = not (isinstance(mean_v, float) and isinstance(std_v, float) and mean_v == 0.0
                               and std_v == 1.0)
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        #: Largest batch given to one inference call (None: all crops at once).
        self.max_batch = max_batch

    def _input_size(self, name: str, shape: list[object], given: int | None) -> int:
        """The square side S of the input; ``given`` is needed when the graph leaves it symbolic."""
        expected = "(N, 3, S, S)" if self.layout == "NCHW" else "(N, S, S, 3)"
        if len(shape) != 4:
            raise ModelError(f"expected an {self.layout} input of shape {expected}, got {shape} for input {name!r}")
        c, h, w = (shape[1], shape[2], shape[3]) if self.layout == "NCHW" else (shape[3], shape[1], shape[2])
        if isinstance(c, int) and c != 3:
            raise ModelError(f"expected an {self.layout} input of shape {expected}, got {shape} for input {name!r}")
        fixed = [d for d in (h, w) if isinstance(d, int)]
        if given is None:
            if len(fixed) != 2 or fixed[0] != fixed[1]:
                raise ModelError(f"expected an {self.layout} input of shape {expected}, got {shape} for input "
                                 f"{name!r}")
            return int(fixed[0])
        if any(d != given for d in fixed):
            raise ModelError(f"input {name!r} has shape {shape}, which does not take {given}x{given} crops")
        return int(given)

    def embed(self, crops: np.ndarray) -> np.ndarray:
        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[1:] != (self.input_size, self.input_size, 3):
            raise ValueError(f"expected crops of shape (N, {self.input_size}, {self.input_size}, 3), got {crops.shape}")
        step = self.max_batch or max(1, len(crops))
        if len(crops) > step:
            return np.concatenate([self.embed(crops[i:i + step]) for i in range(0, len(crops), step)])
        blob: np.ndarray
        if self.layout == "NCHW":
            blob = crops.transpose(0, 3, 1, 2).astype(np.float32)
            if self.channels == "BGR":
                blob = blob[:, ::-1]
        else:
            blob = crops.astype(np.float32)
            if self.channels == "BGR":
                blob = blob[..., ::-1]
        if self._normalise:
            blob = (blob - self.mean) / self.std
        out = self._session.run(None, {self._input: np.ascontiguousarray(blob)})[0]
        return np.asarray(out, dtype=np.float32).reshape(len(crops), -1)
