"""PyTorch checkpoint files read without torch and without running pickled code.

  load(path)     the object `torch.save` wrote, every tensor as a NumPy array
  TorchFileError the file is not one this reader can read, or names code

`torch.save` writes one of two formats, both read here:

* the zip format (the default since PyTorch 1.6): `<name>/data.pkl`, the
  pickled object, where each tensor is `torch._utils._rebuild_tensor_v2(
  storage, offset, size, stride, ...)` and each storage a persistent id
  `("storage", torch.<Type>Storage, key, location, numel)`; the storage's
  bytes are the entry `<name>/data/<key>`, in the byte order of
  `<name>/byteorder` (absent in files of PyTorch < 2.1: little-endian);
* the legacy format (PyTorch < 1.6, or `_use_new_zipfile_serialization=
  False`): five pickles in a row (a magic number, the protocol version, the
  writer's system info, the object, the list of storage keys), then each
  storage as an int64 element count and its bytes.

Pickle can call code only through the globals a file names (the GLOBAL /
STACK_GLOBAL / INST opcodes and the copyreg extension registry all go
through `find_class`). This reader's `find_class` resolves a short list of
names to functions of its own, which build NumPy arrays and plain
containers from data: the tensor rebuilders, the storage types,
`collections.OrderedDict` (what `state_dict()` returns), and the
constructors pickle's protocol 2 uses for sets and bytes. Every other name
(a class of the training code, `numpy.core.multiarray.scalar`, `os.system`)
is refused by name before anything is built, so a file that holds more than
tensors, dicts, lists and plain values is refused as a whole; its state_dict
can be saved on its own with torch (`torch.save(ckpt["state_dict"], f)`).

Tensors come back as C-contiguous NumPy arrays in native byte order, with
their dtype (bfloat16 as float32, which holds every bfloat16 value exactly),
shape and values, views (a transposed or sliced tensor, several tensors on
one storage) included. Needs only NumPy.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any

import numpy as np

# The legacy format's first pickle.
LEGACY_MAGIC_NUMBER = 0x1950a86a20f9469cfc6c

# torch.<name>Storage -> its element type ("bfloat16": uint16 bits, see _bfloat16_to_float32).
STORAGE_DTYPES = {
    "DoubleStorage": "f8", "FloatStorage": "f4", "HalfStorage": "f2",
    "BFloat16Storage": "bfloat16", "LongStorage": "i8", "IntStorage": "i4",
    "ShortStorage": "i2", "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
    "ComplexFloatStorage": "c8", "ComplexDoubleStorage": "c16", "UntypedStorage": "u1",
}

REFUSED_HINT = ("only tensors, dicts, lists and plain values are read, pickled code is never run; "
                "if you trust the file, save its state_dict alone with torch: "
                "torch.save(torch.load(FILE, weights_only=False)[KEY], 'state_dict.pth')")


class TorchFileError(ValueError):
  """The file is no PyTorch checkpoint this reader reads, or it names code."""


class _StorageType:
  """What `find_class` gives for torch.<name>Storage: a marker with the element type."""

  __slots__ = ("name", "dtype")

  def __init__(self, name: str, dtype: str):
    self.name, self.dtype = name, dtype

  def __call__(self, *args):  # a storage pickled by value: never by torch.save
    raise TorchFileError(f"torch.{self.name} called with data inside the pickle (torch.save "
                         "stores storages apart); not a torch.save file")


class _Storage:
  """A storage of the file: its element type, element count and (when read) its bytes."""

  __slots__ = ("dtype", "numel", "key", "data")

  def __init__(self, dtype: str, numel: int, key: str):
    self.dtype, self.numel, self.key, self.data = dtype, numel, key, None


class _TensorRef:
  """A tensor to build once the storages are read: torch's (offset, size, stride)."""

  __slots__ = ("storage", "offset", "size", "stride")

  def __init__(self, storage, offset, size, stride):
    if not isinstance(storage, _Storage):
      raise TorchFileError(f"a tensor's storage is a {type(storage).__name__}, not a storage "
                           "record; not a torch.save file")
    for name, value in (("offset", offset), ("size", size), ("stride", stride)):
      ints = (value,) if name == "offset" else value
      if not isinstance(ints, (tuple, list)) or not all(
          isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ints):
        raise TorchFileError(f"a tensor's {name} is {value!r}, expected non-negative integers")
    if len(size) != len(stride):
      raise TorchFileError(f"a tensor's size {tuple(size)} and stride {tuple(stride)} differ in "
                           "length")
    self.storage, self.offset = storage, offset
    self.size, self.stride = tuple(size), tuple(stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks, metadata  # autograd state: nothing to keep
  return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
  return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks  # an nn.Parameter saved as such: its tensor
  if not isinstance(data, _TensorRef):
    raise TorchFileError(f"a Parameter holds a {type(data).__name__}, not a tensor")
  return data


def _latin1_bytes(text, encoding="latin1"):
  """`_codecs.encode`, what pickle protocol 2 writes for a bytes object."""
  if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
    raise TorchFileError(f"_codecs.encode({type(text).__name__}, {encoding!r}): only bytes "
                         "written by pickle are read")
  return text.encode("latin1")


_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
    ("_codecs", "encode"): _latin1_bytes,
}
_GLOBALS.update({("torch", name): _StorageType(name, dtype)
                 for name, dtype in STORAGE_DTYPES.items()})


class _RefusedGlobal(TorchFileError):
  def __init__(self, module: str, name: str):
    super().__init__(f"{module}.{name}")
    self.qualified = f"{module}.{name}"


class _Unpickler(pickle.Unpickler):
  """An Unpickler that resolves only `_GLOBALS` and gives storages as `_Storage` records."""

  def __init__(self, file, storages: dict, legacy: bool):
    super().__init__(file)
    self._storages = storages
    self._legacy = legacy

  def find_class(self, module, name):
    found = _GLOBALS.get((module, name))
    if found is None:
      raise _RefusedGlobal(module, name)
    return found

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
      raise TorchFileError(f"a persistent id {pid!r:.80} that is not a storage record")
    if len(pid) != (6 if self._legacy else 5):
      raise TorchFileError(f"a storage record of {len(pid)} fields: {pid!r:.120}")
    storage_type, key, _location, numel = pid[1:5]
    if not isinstance(storage_type, _StorageType):
      raise TorchFileError(f"a storage record of type {storage_type!r:.80}")
    if not isinstance(numel, int) or numel < 0:
      raise TorchFileError(f"a storage record of {numel!r:.40} elements")
    key = str(key)
    storage = self._storages.get(key)
    if storage is None:
      storage = self._storages[key] = _Storage(storage_type.dtype, numel, key)
    if self._legacy and pid[5] is not None:
      raise TorchFileError("a storage view (PyTorch < 0.4's format): re-save the file with a "
                           "recent PyTorch")
    return storage


def _bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
  """uint16 bfloat16 bit patterns -> float32 (the same values: bfloat16 is float32's top half)."""
  return (bits.astype(np.uint32) << 16).view(np.float32)


def _element_dtype(dtype: str, byteorder: str) -> np.dtype:
  base = np.dtype("u2" if dtype == "bfloat16" else dtype)
  return base.newbyteorder(byteorder) if base.itemsize > 1 else base


def _array(ref: _TensorRef, byteorder: str) -> np.ndarray:
  """The tensor's values as a new C-contiguous native-order array."""
  st = ref.storage
  dtype = _element_dtype(st.dtype, byteorder)
  if st.data is None:
    raise TorchFileError(f"storage {st.key!r} has no data in the file")
  if len(st.data) < st.numel * dtype.itemsize:
    raise TorchFileError(f"storage {st.key!r} holds {len(st.data)} bytes, its record says "
                         f"{st.numel} x {dtype.itemsize}")
  if any(n == 0 for n in ref.size):
    out = np.zeros(ref.size, dtype.newbyteorder("="))
  else:
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
    if last >= st.numel:
      raise TorchFileError(f"a tensor of size {ref.size}, stride {ref.stride} at offset "
                           f"{ref.offset} reads past its storage {st.key!r} of {st.numel} "
                           "elements")
    flat = np.frombuffer(st.data, dtype=dtype, count=st.numel)
    view = np.lib.stride_tricks.as_strided(
        flat[ref.offset:], shape=ref.size,
        strides=tuple(s * dtype.itemsize for s in ref.stride), writeable=False)
    out = np.array(view, dtype=dtype.newbyteorder("="), order="C")
  if st.dtype == "bfloat16":
    out = _bfloat16_to_float32(out)
  return out


def _resolve(obj, byteorder: str, memo: dict):
  """`obj` with every _TensorRef an array (dicts, lists and tuples walked)."""
  if isinstance(obj, _TensorRef):
    return _array(obj, byteorder)
  if isinstance(obj, _Storage):
    raise TorchFileError(f"a bare storage {obj.key!r} outside a tensor; not a state_dict")
  if not isinstance(obj, (dict, list, tuple)):
    return obj
  if id(obj) in memo:
    return memo[id(obj)]
  if isinstance(obj, dict):
    out = type(obj)() if type(obj) in (dict, collections.OrderedDict) else {}
    memo[id(obj)] = out
    for k, v in obj.items():
      out[k] = _resolve(v, byteorder, memo)
    return out
  if isinstance(obj, list):
    out = []
    memo[id(obj)] = out
    out.extend(_resolve(v, byteorder, memo) for v in obj)
    return out
  out = tuple(_resolve(v, byteorder, memo) for v in obj)
  memo[id(obj)] = out
  return out


def _unpickle(file, storages: dict, legacy: bool, path: str):
  try:
    return _Unpickler(file, storages, legacy).load()
  except _RefusedGlobal as e:
    raise TorchFileError(f"{path}: refused: its pickle names {e.qualified}, which is not part "
                         f"of a tensor checkpoint ({REFUSED_HINT})") from None
  except TorchFileError as e:
    raise TorchFileError(f"{path}: {e}") from None
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
          KeyError, RecursionError, MemoryError, UnicodeDecodeError, struct.error) as e:
    raise TorchFileError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: "
                         f"{str(e)[:200]})") from None


def _load_zip(path: str, zf: zipfile.ZipFile):
  names = zf.namelist()
  pickles = [n for n in names if n == "data.pkl" or (n.endswith("/data.pkl") and n.count("/") == 1)]
  if len(pickles) != 1:
    what = ("a TorchScript archive (torch.jit.save): save model.state_dict() with torch.save "
            "instead" if any("/code/" in n or n.startswith("code/") for n in names) else
            f"a zip file with {len(pickles)} data.pkl records, not a torch.save file")
    raise TorchFileError(f"{path}: {what}")
  prefix = pickles[0][: -len("data.pkl")]
  if any(n.startswith(prefix + "code/") for n in names):
    raise TorchFileError(f"{path}: a TorchScript archive (torch.jit.save): save "
                         "model.state_dict() with torch.save instead")
  byteorder = "<"
  if prefix + "byteorder" in names:
    order = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()
    if order not in ("little", "big"):
      raise TorchFileError(f"{path}: byteorder record {order!r}, expected little or big")
    byteorder = "<" if order == "little" else ">"
  storages: dict = {}
  obj = _unpickle(io.BytesIO(zf.read(pickles[0])), storages, False, path)
  for key, st in storages.items():
    entry = f"{prefix}data/{key}"
    if entry not in names:
      raise TorchFileError(f"{path}: storage {key!r} has no entry {entry}")
    st.data = zf.read(entry)
  return obj, byteorder


def _load_legacy(path: str, f):
  if f.read(1) != b"\x80":  # pickle protocol 2+ (torch.save's) starts with PROTO
    raise TorchFileError(f"{path}: not a PyTorch checkpoint (neither torch.save's zip format "
                         "nor its legacy format)")
  f.seek(0)
  storages: dict = {}
  magic = _unpickle(f, storages, True, path)
  if magic != LEGACY_MAGIC_NUMBER:
    raise TorchFileError(f"{path}: neither a zip nor a legacy torch.save file (it starts with "
                         f"{type(magic).__name__} {str(magic)[:40]!r})")
  _unpickle(f, storages, True, path)                   # protocol version
  info = _unpickle(f, storages, True, path)            # system info
  little = info.get("little_endian", True) if isinstance(info, dict) else True
  byteorder = "<" if little else ">"
  obj = _unpickle(f, storages, True, path)
  keys = _unpickle(f, storages, True, path)
  if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(storages):
    raise TorchFileError(f"{path}: its storage list does not match its tensors")
  for key in map(str, keys):
    st = storages[key]
    head = f.read(8)
    if len(head) != 8:
      raise TorchFileError(f"{path}: ends before storage {key!r}")
    (numel,) = struct.unpack(byteorder + "q", head)
    nbytes = numel * _element_dtype(st.dtype, byteorder).itemsize
    if numel != st.numel:
      raise TorchFileError(f"{path}: storage {key!r} holds {numel} elements, its record says "
                           f"{st.numel}")
    st.data = f.read(nbytes)
    if len(st.data) != nbytes:
      raise TorchFileError(f"{path}: ends inside storage {key!r}")
  return obj, byteorder


def load(path: str) -> Any:
  """The object in a `torch.save` file (zip or legacy format), tensors as NumPy arrays.

  Raises:
    FileNotFoundError: no such file.
    TorchFileError: not a torch.save file, damaged, or naming anything but
      tensors and plain values (the message names it; nothing was run).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"checkpoint {path!r} does not exist")
  if zipfile.is_zipfile(path):
    try:
      with zipfile.ZipFile(path) as zf:
        obj, byteorder = _load_zip(path, zf)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
      raise TorchFileError(f"{path}: a damaged zip file ({e})") from None
  else:
    with open(path, "rb") as f:
      obj, byteorder = _load_legacy(path, f)
  try:
    return _resolve(obj, byteorder, {})
  except TorchFileError as e:
    raise TorchFileError(f"{path}: {e}") from None
  except RecursionError:
    raise TorchFileError(f"{path}: nested too deeply for a checkpoint") from None

