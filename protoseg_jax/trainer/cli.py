"""The command-line layer every tool shares (main.py, diagnostics, visualize,
add_class, convert, export): flags, the run config, errors, the console.

  define_run_flags(...)       --config (configs/*.py[:variant], with --config.<key>=<value>
                              overrides), --workdir, --checkpoint_step
  run(main, name)             absl's app.run with this layer's flag parsing and errors
  run_config(name, workdir)   the --config, or the workdir's config.json, validated

Errors, the same for every tool:

* a bad flag, a --config file that does not load, an override of a key the
  config does not have or of the wrong type, an invalid config value: one
  line per problem on stderr, `<tool>: config error: config.<key>=<value>:
  <what is allowed>` (or `flag error`), all of them at once, exit status 2,
  before anything is prepared or compiled;
* a user error found while running (`UserError`: a missing input or
  checkpoint, a dataset not prepared, a workdir in use, ...): one line
  `<tool>: error: ...`, exit status 2 for bad arguments (`ArgumentError`),
  1 for a run that cannot go on; no traceback (tracebacks are for bugs).

The console: absl's INFO lines of orbax, TFDS and etils are dropped (their
warnings stay; `--verbosity` works as absl's), and TFDS's progress bars are
off unless stdout and stderr are terminals.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from typing import Callable, Optional

from absl import app, flags, logging
from ml_collections import config_flags

from protoseg_jax import validate
from protoseg_jax.trainer import checkpoints, datasets, faults, paths, run as runs
from protoseg_jax.trainer.images import READ_ERRORS  # noqa: F401 (tools catch them)

FLAGS = flags.FLAGS


class UserError(Exception):
  """A run that cannot go on for a reason the user can fix: one line, exit 1."""
  exit_code = 1


class ArgumentError(UserError):
  """A flag value that names nothing usable: one line, exit 2."""
  exit_code = 2


# Errors of the trainer's modules that are user errors (one line, exit 1).
RUN_ERRORS = (runs.RunNotFound, runs.WeightsDoNotFit, checkpoints.NoIntactCheckpoint,
              datasets.DatasetNotPreparedError, faults.WorkdirInUse)


def define_run_flags(*, config_required: bool = True, workdir: str = "", checkpoint: bool = True,
                     variables: bool = False):
  """The flags of a tool that loads a run: --config (+ overrides), --workdir
  (its help: `workdir`), --checkpoint_step, --variables (converted weights)."""
  config_flags.DEFINE_config_file(
      "config", None, "Run config (configs/*.py[:variant]); any key can be overridden with "
      "--config.<key>=<value>." + ("" if config_required else
                                   " Default: the workdir's config.json."), lock_config=True)
  flags.DEFINE_string("workdir", None, workdir or "The run's directory.")
  if checkpoint:
    flags.DEFINE_integer("checkpoint_step", None, "The checkpoint's step (default: the newest "
                         "intact one).")
  if variables:
    flags.DEFINE_string("variables", None, "Converted weights (python -m protoseg_jax.convert "
                        "--dst DIR) instead of the workdir's checkpoint.")


class QuietLibraries:
  """absl log filter: keep warnings from orbax/TFDS/etils, drop their INFO chatter
  (and JAX's: which backends it could not start, the compilation cache's
  reset; clu's work-unit notes, which the trainer's own progress line says
  better), and TFDS's warning that a dataset being generated has no
  dataset_info.json yet (the demo prepares itself on a first run)."""

  NOISY = ("/orbax/", "/tensorflow_datasets/", "/etils/", "/jax/_src/xla_bridge.py",
           "/jax/_src/compilation_cache.py", "/clu/platform/")
  EXPECTED = ("has no dataset_info.json",)

  def filter(self, record):
    if record.levelno >= 30:
      return not (record.levelno < 40 and "/tensorflow_datasets/" in record.pathname
                  and any(e in record.getMessage() for e in self.EXPECTED))
    return not any(p in record.pathname for p in self.NOISY)


def quiet_console():
  """absl's handler drops the libraries' INFO lines; TFDS's tqdm bars (they redraw with
  cursor escapes, `[A`, that litter logs and pipes) are off unless stdout and stderr are
  both terminals."""
  logging.get_absl_handler().addFilter(QuietLibraries())
  if not (sys.stdout.isatty() and sys.stderr.isatty()):
    try:
      import tensorflow_datasets as tfds
      tfds.disable_progress_bar()
    except ImportError:  # pragma: no cover
      pass


# --- errors ----------------------------------------------------------------------

def exit_with(name: str, kind: str, lines, code: int = 2):
  """`<name>: <kind> error: <line>` on stderr for each line, then exit `code`."""
  prefix = f"{name}: {kind} error: " if kind else f"{name}: error: "
  for line in lines:
    sys.stderr.write(f"{prefix}{line}\n")
  sys.stderr.flush()
  sys.exit(code)


def _one_line(text: str) -> str:
  """A flag or config-file error as one line: for a traceback (an error raised
  inside a config file's get_config) its last line, with the place it was
  raised unless it is a ValueError (the configs' own messages)."""
  lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
  if not lines:
    return text
  if "Traceback (most recent call last):" not in lines:
    return " ".join(lines)
  last = lines[-1]
  if last.startswith("ValueError: "):
    return last[len("ValueError: "):]
  places = re.findall(r'File "([^"]+)", line (\d+)', text)
  return f"{last} (at {places[-1][0]}:{places[-1][1]})" if places else last


_FLAG_VALUE_ERROR = re.compile(r"flag --([^=\s]+)=(.*?): (.*)", re.DOTALL)
_EXPECTED = {"int": "an integer", "float": "a number", "bool": "true or false"}


def _flag_error(error: Exception, flag_values=FLAGS) -> tuple[str, str]:
  """(kind, line) of an absl flag error: kind "config" for --config and its overrides."""
  m = _FLAG_VALUE_ERROR.match(str(error))
  if not m:
    return "flag", f"{_one_line(str(error))} (--helpshort lists the flags)"
  name, value, why = m.group(1), m.group(2), _one_line(m.group(3))
  kind = "config" if name == "config" or name.startswith("config.") else "flag"
  if name.startswith("config.") and name in flag_values:  # an override of the wrong type
    flag_type = flag_values[name].parser.flag_type()
    if flag_type in _EXPECTED:
      why = f"must be {_EXPECTED[flag_type]}"
  if f"--{name} " in why:  # absl's "flag --workdir must have a value other than None."
    return kind, why
  return kind, f"--{name}={value}: {why}"


def _unknown_key(error: Exception, args) -> tuple[Optional[str], Optional[str]]:
  """(line, the argument) for a --config.<key> override naming no key of the
  (locked) config, from the KeyError/AttributeError ml_collections raises."""
  msg = error
  while isinstance(msg, BaseException) and msg.args:
    msg = msg.args[0]
  if not isinstance(msg, str):
    return None, None
  first, _, rest = msg.partition("\n")
  key = first.strip().strip("'\"")
  hint = re.search(r'Did you mean "([^"]+)"', rest)
  for arg in args:
    m = re.match(r"--(?:no)?config\.([^=\s]+)", arg)
    path = m.group(1).split(".") if m else []
    if key in path:
      parent = ".".join(["config", *path[:path.index(key)]])
      line = f"{arg}: {parent} has no key {key!r}"
      line += f" (did you mean {hint.group(1)!r}?)" if hint else ""
      return line + "; every key is set, with a comment, in configs/default.py", arg
  return None, None


def _is_override(arg: str) -> bool:
  return re.match(r"--(?:no)?config\.", arg) is not None


def _probe_overrides(argv) -> tuple[list[str], list[str]]:
  """(problem lines, arguments to leave out) of every --config.<key> override
  that names no key or has a value of the wrong type: each parse in a fresh
  FlagValues of --config and its overrides alone, leaving out the arguments
  found bad so far, until one parses."""
  args = [a for a in argv[1:] if a.startswith("--config=") or _is_override(a)]
  problems, bad = [], []
  for _ in range(len(args) + 1):
    probe = flags.FlagValues()
    keep = [a for a in args if a not in bad]
    config_flags.DEFINE_config_file("config", None, "", flag_values=probe, lock_config=True,
                                    sys_argv=[argv[0], *keep])
    try:
      probe([argv[0], *keep])
      probe.config.keys()  # a --config file that failed to load raises its OSError here
      return problems, bad
    except flags.Error as e:
      kind, line = _flag_error(e, probe)
      m = _FLAG_VALUE_ERROR.match(str(e))
      arg = next((a for a in keep if m and a.startswith(f"--{m.group(1)}=")), None)
      if kind != "config" or arg is None or not _is_override(arg):
        return problems, bad          # not an override's: the real parse reports it
      problems.append(line)
      bad.append(arg)
    except (AttributeError, KeyError) as e:
      line, arg = _unknown_key(e, keep)
      if line is None:
        return problems, bad
      problems.append(line)
      bad.append(arg)
    except OSError:
      return problems, bad
  return problems, bad


class _Parsed:
  override_problems: list[str] = []
  name = "main.py"


def _parser(name: str):
  def parse(argv):
    """app.run's flag parsing, where a bad flag, --config file or config
    override (an unknown key, a value of the wrong type) is one line on
    stderr and exit status 2 instead of a usage dump or a traceback; the
    override problems are kept for `run_config`, which reports them with
    the config's invalid values."""
    _Parsed.name = name
    problems, bad = _probe_overrides(argv)
    _Parsed.override_problems = problems
    args = [a for a in argv if a not in bad]
    # ml_collections reads the --config overrides from sys.argv itself.
    sys.argv[:] = args
    try:
      rest = FLAGS(args)
      if "config" in FLAGS and FLAGS["config"].present:
        FLAGS.config.keys()  # a --config file that failed to load raises its OSError here
      return rest
    except flags.Error as e:
      kind, line = _flag_error(e)
      exit_with(name, kind, problems + [line])
    except (AttributeError, KeyError) as e:  # --config.<key>: no such key in the locked config
      line, _ = _unknown_key(e, args)
      if line is None:
        raise
      exit_with(name, "config", problems + [line])
    except OSError as e:  # the --config file is missing or unreadable
      config = ([a for a in args[1:] if a.startswith("--config=")] or ["--config"])[-1]
      why = str(e).strip().splitlines()[-1].strip() if str(e).strip() else repr(e)
      exit_with(name, "config", [f"{config}: cannot load the config file: {why}"])
  return parse


def run(main: Callable, name: str):
  """app.run(main) with this layer's flag parsing, console and errors; `name`
  starts every error line (e.g. "main.py", "python -m protoseg_jax.diagnostics")."""

  def wrapped(argv):
    if len(argv) > 1:
      exit_with(name, "flag", [f"unexpected arguments {argv[1:]} (flags are --name=value; "
                               "--helpshort lists them)"])
    paths.configure_retries()
    quiet_console()
    try:
      return main(argv)
    except validate.ConfigError as e:
      exit_with(name, "config", e.problems)
    except paths.StoreError as e:
      # The store stayed down: orbax's save threads wait minutes for objects
      # that will not come, and would hold the interpreter's exit.
      print(f"{name}: error: {_message(e)}", file=sys.stderr, flush=True)
      logging.flush()
      os._exit(1)
    except (UserError, *RUN_ERRORS) as e:
      code = getattr(e, "exit_code", 1)
      exit_with(name, "", [_message(e)], code)

  app.run(wrapped, flags_parser=_parser(name))


def fail(lines, kind: str = "flag", code: int = 2):
  """Exit with one line per problem, named after the running tool."""
  exit_with(_Parsed.name, kind, lines, code)


def _message(e: BaseException) -> str:
  text = str(e).strip()
  if isinstance(e, (KeyError,)) and text.startswith("'"):
    text = text.strip("'\"")
  return " ".join(line.strip() for line in text.splitlines() if line.strip())


def expand(path: Optional[str], flag: Optional[str] = None) -> Optional[str]:
  """A path flag's value, `~` expanded (`--workdir=~/runs/x`: the shell leaves a
  `~` after `=` alone); a URL's bucket must exist and be readable (else one
  line naming `flag`, exit 2: `paths.check_bucket`)."""
  if not path:
    return path
  if flag:
    check_path(path, flag)
  return paths.expand(path)


def check_path(path: str, what: str):
  """ArgumentError (exit 2) when `path` is a URL whose bucket cannot be used."""
  try:
    paths.check_bucket(path, what)
  except paths.UnusablePath as e:
    raise ArgumentError(str(e)) from None


# Config keys that hold a path a user gives (checked before anything slow starts).
CONFIG_PATHS = ("dataset.data_dir", "init_from", "compilation_cache_dir")


def check_config_paths(config):
  """Each CONFIG_PATHS value that is a URL: its bucket exists and can be read."""
  for key in CONFIG_PATHS:
    value = functools.reduce(getattr, key.split("."), config)
    if value and paths.is_url(value):
      check_path(value, f"config.{key}")


def check_init_from(config):
  """ArgumentError (exit 2) when config.init_from names no converted weights (a
  folder written by `python -m protoseg_jax.convert --dst`), before training
  builds anything."""
  value = str(config.init_from or "")
  if value and not (paths.resolve(value).is_dir()):
    raise ArgumentError(f"config.init_from={value}: no converted weights there (a folder "
                        "written by `python -m protoseg_jax.convert --arch ARCH --src FILE "
                        "--dst DIR`)")


def run_config(workdir: Optional[str] = None, *, required_config: bool = False,
               **counts):
  """The run config: --config (with its overrides), else the workdir's
  config.json, validated (`validate.validate_config` with the datasets the
  trainer knows of, the workdir's too); every problem, the overrides'
  included, is reported at once (exit 2). counts: num_devices /
  num_processes for the batch-size checks."""
  name = _Parsed.name
  config = FLAGS.config if "config" in FLAGS else None
  if config is None:
    if required_config:
      raise ArgumentError("--config is required (configs/*.py[:variant])")
    config = runs.read_config(workdir) if workdir else None
    if config is None:
      why = ("and no --workdir" if not workdir else
             f"and {paths.resolve(workdir) / runs.CONFIG_FILE} does not exist")
      raise ArgumentError(f"--config is required here ({why}): e.g. "
                          "--config=configs/demo.py")
  recorded = runs.read_classes(workdir) if workdir else None
  problems = list(_Parsed.override_problems)
  try:
    validate.validate_config(config, datasets=datasets.catalog(recorded), **counts)
  except validate.ConfigError as e:
    problems += list(e.problems)
  if problems:
    exit_with(name, "config", problems)
  check_config_paths(config)
  return config


def load_tool_run(workdir: Optional[str], *, config=None, variables_dir: Optional[str] = None,
                  checkpoint_step: Optional[int] = None, needs_prototypes: bool = False,
                  **devices):
  """A tool's run: `run_config` (unless the tool validated its `config`
  already), then `trainer.run.load_run` (its weights checked to exist before
  anything is built); ArgumentError when `needs_prototypes` and the model
  has none."""
  if not workdir and not variables_dir:
    raise ArgumentError("give --workdir (a run) or --config with --variables (converted "
                        "weights)")
  config = config if config is not None else run_config(workdir)
  runs.weights_source(workdir, config, variables_dir)
  run = runs.load_run(workdir, config, checkpoint_step=checkpoint_step,
                      variables_dir=variables_dir, **devices)
  if needs_prototypes and not run.variables.get("prototypes"):
    raise ArgumentError(f"{run.source}: the model has no prototypes (its config.model.head is "
                        f"{run.config.model.head!r}); this tool is for the ProtoSeg head")
  return run
