"""Reading images the way datasets and predict do (PIL).

  open_image(path)    PIL's Image.open of a local file or a gs:// URL
  to_rgb_uint8(img)   any PIL image -> uint8 [H, W, 3] RGB (grayscale, palette, RGBA,
                      CMYK, 16-bit, float: the one conversion rule)
  READ_ERRORS         what reading or decoding one file can raise
  error_reason(e)     such an error as one line

Shared by the dataset builders (data/, when preparing) and
`protoseg_jax.predict` (your own images).
"""

from __future__ import annotations

import io
import re
import struct
import zipfile
import zlib

import numpy as np
from PIL import Image

from protoseg_jax.trainer import paths

# Errors of reading / decoding one file (PIL, zlib, zip members; TF's decoder's
# become ValueError in `rgb_image_bytes`).
READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, KeyError, IndexError, struct.error,
               zlib.error, zipfile.BadZipFile, Image.DecompressionBombError)


def error_reason(e: BaseException) -> str:
  """A one-line reason from a read/decode error (TF's graph prefixes dropped)."""
  msg = str(e)
  msg = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", msg)
  msg = re.sub(r"\s*\[Op:\w+\]", "", msg).strip().splitlines()
  return f"{type(e).__name__}: {msg[0][:300] if msg else ''}"


def open_image(path) -> Image.Image:
  """PIL's `Image.open` of a local file or of a URL (`gs://...`, read whole
  through `trainer.paths`; an image file is small)."""
  if paths.is_url(path):
    return Image.open(io.BytesIO(paths.resolve(path).read_bytes()))
  return Image.open(path)


def to_rgb_uint8(img: Image.Image) -> np.ndarray:
  """A PIL image -> uint8 [H, W, 3] RGB (the datasets' and predict's one rule).

  Grayscale: repeated; palette: its colours; RGBA / LA / PA: alpha dropped;
  CMYK, YCbCr, bilevel, ...: PIL's RGB conversion; 16-bit grayscale (I;16,
  I): round(x * 255 / 65535); float (F): rounded and clipped to 0..255.
  (Pillow reads 16-bit RGB(A) PNGs as 8-bit, keeping the high byte.)
  """
  if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
    x = np.asarray(img).astype(np.float64)
    x = np.clip(np.round(np.clip(x, 0, 65535) * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
    return np.repeat(x[..., None], 3, axis=-1)
  if img.mode == "F":
    x = np.clip(np.round(np.asarray(img, np.float64)), 0, 255).astype(np.uint8)
    return np.repeat(x[..., None], 3, axis=-1)
  if img.mode == "P" or img.mode in ("LA", "PA"):
    img = img.convert("RGBA")   # palette transparency goes through RGBA without a warning
  if img.mode != "RGB":
    img = img.convert("RGB")    # L, 1, RGBA (alpha dropped), CMYK, YCbCr, ...
  return np.asarray(img, np.uint8).copy()
