"""The paths a user gives, local or in a bucket (gs://...), through one layer.

Every path a user passes (--workdir, dataset.data_dir, config.init_from,
the tools' inputs and outputs) goes through `resolve`: a local path gets
`~` expanded and is made absolute, a URL (`gs://bucket/run`) is kept as it
is. Everything the trainer and the tools read or write there goes through
the etils.epath.Path it returns: the layer orbax and JAX's compilation
cache use. With TensorFlow installed (the trainer), epath's gs:// backend
is TensorFlow's file system, the one tf.data, TFDS and TensorBoard's event
files use too: one client, one set of credentials and retries for a run's
files and data.

An object store has no append and no rename, and a reader must never see a
file half-written:

  write_text / write_bytes   the file appears whole: locally a temporary
                             file renamed over it, in a bucket one upload
                             (an object is replaced atomically)
  append_text                a line added at the end: locally an append, in
                             a bucket the object written again with it
  move                       locally a rename, in a bucket a copy and a delete
  upload_tree                a local folder's files copied under a path

A bucket that does not exist or cannot be read is found by `check_bucket`
before anything slow starts (`UnusablePath`, one line naming the URL).

A request the store fails (a 5xx, a reset connection, a timeout) is retried
with exponential backoff (1 s doubling up to 32 s) up to
GCS_RETRY_CONFIG_MAX_RETRIES times, TensorFlow's own setting (default 10:
about 3 minutes of outage), which TensorFlow's file system reads when it is
imported (etils.epath, tf.data, TFDS and TensorBoard go through it);
`configure_retries` gives orbax's tensorstore (the checkpoints' arrays) the
same count. When the store stays down longer the write fails: `StoreError`,
one line naming the URL.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Union

from etils import epath

PathLike = Union[str, os.PathLike, epath.Path]


class UnusablePath(OSError):
  """A path that cannot be used: a bucket missing or denied, an unknown scheme."""


class StoreError(OSError):
  """A read or write the store kept failing after its retries (an outage)."""


RETRIES_VARIABLE = "GCS_RETRY_CONFIG_MAX_RETRIES"   # TensorFlow's, read when it is imported
DEFAULT_RETRIES = 10                               # TensorFlow's default
RETRY_INITIAL_DELAY_S, RETRY_MAX_DELAY_S = 1.0, 32.0   # TensorFlow's and tensorstore's own


def configure_retries() -> int:
  """Gives orbax's tensorstore context (the checkpoints' arrays) TensorFlow's
  retry count, $GCS_RETRY_CONFIG_MAX_RETRIES (default 10; tensorstore's own
  default is 32, ~15 minutes of outage); returns it. Orbax builds every
  context from the module-level specs patched here."""
  try:
    retries = int(os.environ.get(RETRIES_VARIABLE, DEFAULT_RETRIES))
  except ValueError:
    retries = DEFAULT_RETRIES
  try:
    from orbax.checkpoint._src.serialization import tensorstore_utils as ts_utils
  except ImportError:
    return retries
  spec = {"max_retries": retries, "initial_delay": f"{RETRY_INITIAL_DELAY_S}s",
          "max_delay": f"{RETRY_MAX_DELAY_S}s"}
  for name in ("_BASE_TS_CONTEXT", "_DEFAULT_OCDBT_TS_CONTEXT"):
    context = getattr(ts_utils, name, None)
    if isinstance(context, dict):
      context["gcs_request_retries"] = dict(spec)
  return retries


def store_error(path: PathLike, doing: str, error: BaseException) -> StoreError:
  """A StoreError for `error` met while `doing` (e.g. "writing") `path`: one
  line naming the URL and the store's answer."""
  text = " ".join(str(error).split())
  return StoreError(f"{doing} {os.fspath(path)} failed, retries included "
                    f"(${RETRIES_VARIABLE}): {type(error).__name__}: {text[:400]}")


def is_url(path: PathLike) -> bool:
  """A URL (`gs://...`), not a local path."""
  return "://" in os.fspath(path)


def resolve(path: PathLike) -> epath.Path:
  """A user's path as an epath.Path: local ones with `~` expanded and made
  absolute (relative to the current directory), URLs as given."""
  text = os.fspath(path)
  if is_url(text):
    return epath.Path(text)
  return epath.Path(os.path.abspath(os.path.expanduser(text)))


def expand(path: str) -> str:
  """A user's path with `~` expanded (not made absolute); a URL as given."""
  return path if is_url(path) else os.path.expanduser(path)


def text(path: PathLike) -> str:
  """The resolved path as a string (for messages, configs and orbax)."""
  return os.fspath(resolve(path))


def is_local(path: PathLike) -> bool:
  return not is_url(path)


def write_bytes(path: PathLike, data: bytes):
  """Write `data` to `path` so that no reader sees it half-written."""
  path = resolve(path)
  if is_url(path):
    try:
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_bytes(data)                    # one upload: the object appears whole
    except Exception as e:  # pylint: disable=broad-except (each backend its own types)
      raise store_error(path, "writing", e) from e
    return
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=os.fspath(path.parent))
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, os.fspath(path))
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_text(path: PathLike, content: str):
  """`write_bytes` of UTF-8 text."""
  write_bytes(path, content.encode("utf-8"))


def append_text(path: PathLike, content: str):
  """Add `content` at the end of `path` (created if missing). In a bucket the
  object is written again, whole, with it (an object store has no append)."""
  path = resolve(path)
  if is_url(path):
    try:
      old = path.read_bytes() if path.exists() else b""
      path.write_bytes(old + content.encode("utf-8"))
    except Exception as e:  # pylint: disable=broad-except (each backend its own types)
      raise store_error(path, "appending to", e) from e
    return
  with open(os.fspath(path), "a") as f:
    f.write(content)
    f.flush()


def move(src: PathLike, dst: PathLike):
  """Move a file or folder to `dst` (its parent created): a rename locally,
  a copy of every file then the deletion of the source in a bucket."""
  src, dst = resolve(src), resolve(dst)
  dst.parent.mkdir(parents=True, exist_ok=True)
  if not (is_url(src) or is_url(dst)):
    os.replace(os.fspath(src), os.fspath(dst))
    return
  if src.is_dir():
    for f in sorted(_files(src)):
      target = dst / os.path.relpath(os.fspath(f), os.fspath(src))
      target.parent.mkdir(parents=True, exist_ok=True)
      f.copy(target, overwrite=True)
    src.rmtree()
  else:
    src.copy(dst, overwrite=True)
    src.unlink()


def upload_tree(local_dir: str, dst: PathLike):
  """Copy every file under the local folder `local_dir` to the same relative
  path under `dst` (a bucket or a local folder)."""
  dst = resolve(dst)
  for root, _, files in os.walk(local_dir):
    for name in files:
      rel = os.path.relpath(os.path.join(root, name), local_dir)
      target = dst / rel
      target.parent.mkdir(parents=True, exist_ok=True)
      if is_url(dst):
        epath.Path(os.path.join(root, name)).copy(target, overwrite=True)
      else:
        shutil.copy2(os.path.join(root, name), os.fspath(target))


def _files(folder: epath.Path):
  for p in folder.iterdir():
    if p.is_dir():
      yield from _files(p)
    else:
      yield p


def bucket_of(path: PathLike) -> str:
  """`gs://bucket` of a URL (its scheme and first component)."""
  scheme, rest = os.fspath(path).split("://", 1)
  return f"{scheme}://{rest.split('/', 1)[0]}"


def check_bucket(path: PathLike, what: str):
  """Raises UnusablePath when `path` is a URL whose bucket does not exist or
  cannot be listed (a typo, missing credentials, no permission), naming it
  and `what` it was given as (e.g. "--workdir"). Local paths: nothing."""
  if not is_url(path):
    return
  bucket = bucket_of(path)
  try:
    next(iter(epath.Path(bucket).iterdir()), None)
  except Exception as e:  # pylint: disable=broad-except (the backend's own error types)
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise UnusablePath(f"{what}={os.fspath(path)}: the bucket {bucket} cannot be used "
                       f"({first[:300]})") from None
