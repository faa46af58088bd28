"""protoseg_jax/convert/torch_file.py: torch.save files read without torch, and
pickles that name code refused before anything runs. The references are files
that torch itself writes (zip and legacy formats)."""

import collections
import io
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from protoseg_jax.convert import load_torch_file, torch_file


def _state_dict():
  torch.manual_seed(0)
  base = torch.randn(4, 6)
  sd = collections.OrderedDict(
      weight=torch.randn(3, 2, 3, 3),
      half=torch.randn(5).half(),
      bf16=torch.randn(7).bfloat16(),
      long=torch.arange(-3, 9, dtype=torch.int64).reshape(3, 4),
      int8=torch.tensor([1, -2, 127], dtype=torch.int8),
      double=torch.randn(2, 2).double(),
      flags=torch.tensor([True, False, True]),
      transposed=base.t(),                 # a non-contiguous view of `base`'s storage
      strided=base[1:3, ::2],              # offset and strides
      scalar=torch.tensor(2.5),
      empty=torch.zeros(0, 3),
      param=torch.nn.Parameter(torch.ones(2, 2), requires_grad=False),
  )
  sd["nested"] = {"base": base, "list": [torch.ones(2), 1, 2.0, "s", None, (3, 4)],
                  "inner": {"x": torch.full((2,), 7, dtype=torch.int64)}, "ok": True,
                  "bytes": b"\x00\xff", "set": {1, 2}}
  return sd


def _assert_same(ours, ref, where="sd"):
  if isinstance(ref, torch.Tensor):
    want = ref.detach()
    want = (want.float() if want.dtype == torch.bfloat16 else want).numpy()
    assert isinstance(ours, np.ndarray), (where, type(ours))
    assert ours.dtype == want.dtype and ours.shape == want.shape, (where, ours.dtype, ours.shape)
    assert ours.flags.c_contiguous and ours.dtype.isnative, where
    np.testing.assert_array_equal(ours, want, err_msg=where)
  elif isinstance(ref, dict):
    assert type(ours) is type(ref) and list(ours) == list(ref), (where, type(ours))
    for k in ref:
      _assert_same(ours[k], ref[k], f"{where}[{k!r}]")
  elif isinstance(ref, (list, tuple)):
    assert type(ours) is type(ref) and len(ours) == len(ref), where
    for i, (a, b) in enumerate(zip(ours, ref)):
      _assert_same(a, b, f"{where}[{i}]")
  else:
    assert ours == ref and type(ours) is type(ref), (where, ours, ref)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_reads_what_torch_save_wrote(tmp_path, legacy):
  sd = _state_dict()
  path = tmp_path / "sd.pth"
  torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
  assert zipfile.is_zipfile(path) != legacy
  got = torch_file.load(str(path))
  _assert_same(got, sd)
  # views come out as arrays of their own, not aliases of one buffer
  got["nested"]["base"][0, 0] = 99.0
  assert got["transposed"][0, 0] != 99.0


def test_big_endian_file(tmp_path):
  """A zip file whose byteorder record says big: each storage's bytes in that order."""
  sd = {"f": torch.randn(2, 3), "i": torch.arange(4), "h": torch.randn(3).half()}
  src, dst = tmp_path / "little.pth", tmp_path / "big.pth"
  torch.save(sd, src)
  storages = {}                                  # storage key -> element type
  with zipfile.ZipFile(src) as zf:
    for name in zf.namelist():
      if name.endswith("data.pkl"):
        for key, dtype in (("0", "f4"), ("1", "i8"), ("2", "f2")):
          storages[name[: -len("data.pkl")] + f"data/{key}"] = dtype
    with zipfile.ZipFile(dst, "w") as out:
      for name in zf.namelist():
        data = zf.read(name)
        if name.endswith("/byteorder"):
          data = b"big"
        elif name in storages:
          data = np.frombuffer(data, storages[name]).byteswap().tobytes()
        out.writestr(name, data)
  got = torch_file.load(str(dst))
  for k, v in sd.items():
    np.testing.assert_array_equal(got[k], v.numpy())
    assert got[k].dtype.isnative


class _System:
  """What a malicious checkpoint pickles: unpickling it runs a shell command."""

  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return os.system, (self.command,)


def _zip_with_pickle(path, data_pkl: bytes):
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", data_pkl)
    zf.writestr("archive/byteorder", "little")
    zf.writestr("archive/version", "3\n")


@pytest.mark.parametrize("kind", ["torch_zip", "torch_legacy", "inst_opcode", "nested_reduce"])
def test_a_pickle_that_names_code_is_refused_without_running(tmp_path, kind):
  marker = tmp_path / "ran"
  command = f"touch {marker}"
  path = tmp_path / "evil.pth"
  if kind.startswith("torch_"):
    torch.save({"weight": torch.ones(2), "evil": _System(command)}, path,
               _use_new_zipfile_serialization=kind == "torch_zip")
    # The control: the file is malicious, torch's full unpickler runs the command.
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
  elif kind == "inst_opcode":    # protocol 0: INST resolves `os system` by name and calls it
    _zip_with_pickle(path, f"(S'{command}'\nios\nsystem\n.".encode())
  else:                          # protocol 4: STACK_GLOBAL inside a dict inside a list
    _zip_with_pickle(path, pickle.dumps([{"a": _System(command)}], protocol=4))
  with pytest.raises(torch_file.TorchFileError) as e:
    torch_file.load(str(path))
  assert not marker.exists()
  message = str(e.value)
  assert "\n" not in message and str(path) in message
  assert "refused" in message and ("posix.system" in message or "os.system" in message)
  with pytest.raises(torch_file.TorchFileError, match="refused"):
    load_torch_file(str(path))
  assert not marker.exists()


def test_only_the_tensor_globals_are_accepted(tmp_path):
  """Classes of training code, numpy scalars and the like are refused by name."""
  path = tmp_path / "extra.pth"
  torch.save({"state_dict": {"w": torch.ones(1)}, "best": np.float64(0.5)}, path)
  with pytest.raises(torch_file.TorchFileError, match=r"refused.*numpy.*scalar"):
    torch_file.load(str(path))
  torch.save({"state_dict": {"w": torch.ones(1)}, "epoch": 3, "args": {"lr": 0.1}}, path)
  assert load_torch_file(str(path)).keys() == {"w"}


def test_not_a_checkpoint_and_damaged_files(tmp_path):
  text = tmp_path / "notes.pth"
  text.write_text("hello\n")
  with pytest.raises(torch_file.TorchFileError, match="not a PyTorch checkpoint"):
    torch_file.load(str(text))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    torch_file.load(str(tmp_path / "missing.pth"))
  good = tmp_path / "good.pth"
  torch.save({"w": torch.ones(3)}, good)
  # a storage entry cut short
  cut = tmp_path / "cut.pth"
  with zipfile.ZipFile(good) as zf, zipfile.ZipFile(cut, "w") as out:
    for name in zf.namelist():
      data = zf.read(name)
      out.writestr(name, data[:4] if "/data/" in name and not name.endswith(".pkl") else data)
  with pytest.raises(torch_file.TorchFileError, match="storage"):
    torch_file.load(str(cut))
  # a zip without data.pkl
  other = tmp_path / "other.pth"
  with zipfile.ZipFile(other, "w") as zf:
    zf.writestr("readme.txt", "x")
  with pytest.raises(torch_file.TorchFileError, match="data.pkl"):
    torch_file.load(str(other))
  # a legacy file cut inside its storages
  legacy = tmp_path / "legacy.pth"
  buf = io.BytesIO()
  torch.save({"w": torch.ones(3)}, buf, _use_new_zipfile_serialization=False)
  legacy.write_bytes(buf.getvalue()[:-5])
  with pytest.raises(torch_file.TorchFileError, match="ends inside storage"):
    torch_file.load(str(legacy))
