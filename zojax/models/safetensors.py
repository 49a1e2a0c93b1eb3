r"""Reading safetensors files: a minimal memory-mapped reader (numpy; BF16 through ``ml_dtypes``).

The format (one file, or several listed in ``model.safetensors.index.json``'s ``weight_map``)::

    bytes [0, 8)           n, the header length (unsigned 64-bit little-endian)
    bytes [8, 8 + n)       JSON {name: {"dtype": "F32" | "BF16" | ..., "shape": [...],
                                        "data_offsets": [start, end]}, "__metadata__": {...}}
    bytes [8 + n + start, 8 + n + end)   the tensor, C order

so a tensor is a view ``memmap(path, dtype, offset=8 + n + start, shape)``: nothing is read until
it is used. Opening checks the header and that every tensor's bytes are in the file (a truncated
download names the first tensor cut off).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable

import ml_dtypes
import numpy as np

from zojax.errors import UserError, UserFileNotFoundError

_ST_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


class SafetensorsFile:
    """A minimal memory-mapped safetensors reader (numpy; supports BF16 through ``ml_dtypes``)."""

    def __init__(self, path: str) -> None:
        """Reads the header and checks that every tensor's bytes are in the file.

        Raises:
          UserError: not a safetensors file, or truncated (names the first tensor cut off).
        """
        self.path = path
        size = os.path.getsize(path)
        bad = f"{path}: not a safetensors file (unreadable header); download it again"
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise UserError(f"{path}: not a safetensors file ({size} bytes); download it again")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise UserError(
                    f"{path}: truncated or not a safetensors file (its header claims {n:,} "
                    f"bytes, the file has {size:,}); download it again"
                )
            try:
                header = json.loads(f.read(n))
            except (ValueError, UnicodeDecodeError):
                raise UserError(bad) from None
        if not isinstance(header, dict):
            raise UserError(bad)
        header.pop("__metadata__", None)
        self.header = header
        self.offset = 8 + n
        try:
            ends = sorted((int(v["data_offsets"][1]), k) for k, v in header.items())
        except (KeyError, TypeError, ValueError, IndexError):
            raise UserError(bad) from None
        cut = [(e, k) for e, k in ends if self.offset + e > size]
        if cut:
            end, name = cut[0]
            raise UserError(
                f"{path}: the file is truncated: tensor {name!r} ends at byte {self.offset + end:,} but the "
                f"file has {size:,} bytes; download it again"
            )

    def keys(self) -> list[str]:
        return list(self.header)

    def get(self, name: str) -> np.ndarray:
        info = self.header[name]
        dt = _ST_DTYPES.get(info["dtype"])
        if dt is None:
            raise ValueError(f"{self.path}: tensor {name} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        count = int(np.prod(info["shape"])) if info["shape"] else 1
        arr = np.memmap(self.path, dtype=dt, mode="r", offset=self.offset + start, shape=(count,))
        assert arr.nbytes == end - start
        return arr.reshape(info["shape"])


def open_safetensors(folder: str) -> dict[str, Callable[[], np.ndarray]]:
    """Lazy tensor getters for a folder's ``model.safetensors`` or sharded index."""
    index = os.path.join(folder, "model.safetensors.index.json")
    single = os.path.join(folder, "model.safetensors")
    if os.path.exists(index):
        try:
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"{index}: not a valid safetensors index ({type(e).__name__}: {e})") from None
        files: dict[str, SafetensorsFile] = {}
        getters = {}
        for name, fname in weight_map.items():
            full = os.path.join(folder, fname)
            if not os.path.exists(full):
                raise UserFileNotFoundError(
                    f"{folder}: shard {fname} listed in model.safetensors.index.json is missing"
                )
            if fname not in files:
                files[fname] = SafetensorsFile(full)
            getters[name] = (lambda fobj, n: lambda: fobj.get(n))(files[fname], name)
        return getters
    if os.path.exists(single):
        st = SafetensorsFile(single)
        return {n: (lambda name: lambda: st.get(name))(n) for n in st.keys()}  # noqa: SIM118
    others = [f for f in os.listdir(folder) if f.endswith((".bin", ".pt", ".pth", ".gguf"))]
    hint = f" (found {others}; only safetensors is supported)" if others else ""
    raise UserFileNotFoundError(f"{folder}: no model.safetensors or model.safetensors.index.json{hint}")


__all__ = ["SafetensorsFile", "open_safetensors"]
