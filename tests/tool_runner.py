"""The project's commands as a user runs them, without an interpreter start each.

`run(["main.py", "--mode=eval", ...])`, `run(["-m", "protoseg_jax.diagnostics", ...])`
or `run(["-c", code])` behaves like `subprocess.run([sys.executable, *args],
capture_output=True, text=True)` with the tools' test environment (CPU, one
device, XLA -O0, the session's compilation cache): it returns a
`subprocess.CompletedProcess` with the exit status, stdout and stderr.

Each command runs in a child forked from one driver process per test worker,
which imported the trainer's stack (TensorFlow, TFDS, JAX, flax, orbax, the
tools' modules) once: a command costs its own work, not the ~5 s of imports
(docs/testing.md). The child runs the command as `python` would: `-m` runs the
module afresh as `__main__` (`runpy`), a script path runs that file, `-c` the
code; SystemExit gives the exit status, an uncaught exception its traceback
and status 1; atexit handlers run. JAX's backend is first initialised in the
child, so each command starts with a fresh client.

`start(args)` returns at once with a Popen-like `Child` (pid, poll, wait,
send_signal, kill) for a command to signal or to run beside another process;
`env={"XLA_FLAGS": ...}` sets variables that are read on first use (the
device count) in the child; `Driver(env=..., cwd=...)` is a driver of its
own for another environment (e.g. an installed package on PYTHONPATH).

What it cannot do (use a real subprocess there): variables read at import
(JAX_PLATFORMS, a blocked TensorFlow: the driver imported them already), two
commands of one driver at once.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import textwrap

from conftest import ROOT, xla_flags

ENV = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
           XLA_FLAGS=xla_flags(1))

# The driver: imports the stack, then forks one child per command it reads.
DRIVER = textwrap.dedent(r'''
    import atexit, importlib.util, json, os, runpy, sys, traceback
    import jax
    # What the tools import (not the tools' own modules: `-m` runs those afresh).
    import protoseg_jax.main, protoseg_jax.predict, protoseg_jax.export, protoseg_jax.add_class
    import protoseg_jax.visualize, protoseg_jax.diagnostics, protoseg_jax.convert.cli
    import tensorflow_datasets, orbax.checkpoint
    from jax._src import xla_bridge
    assert not xla_bridge._backends, "the driver initialised a JAX backend before forking"

    def child(job):
      os.environ.update(job["env"])     # read when first used: XLA_FLAGS at the backend's start
      os.chdir(job["cwd"])
      for fd, path in ((1, job["stdout"]), (2, job["stderr"])):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(f, fd)
        os.close(f)
      if job["log_compiles"]:
        jax.config.update("jax_log_compiles", True)
      args = job["args"]
      code = 0
      try:
        if args[0] == "-m":
          spec = importlib.util.find_spec(args[1])
          if spec.submodule_search_locations is None:     # a module: run afresh, as python -m
            sys.modules.pop(args[1], None)
          else:                                            # a package: its __main__
            spec = importlib.util.find_spec(args[1] + ".__main__")
          sys.argv = [spec.origin, *args[2:]]
          runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        elif args[0] == "-c":
          sys.argv = ["-c", *args[2:]]
          exec(compile(args[1], "<string>", "exec"), {"__name__": "__main__"})
        else:
          sys.argv = list(args)
          sys.path[0] = os.path.dirname(os.path.abspath(args[0]))
          runpy.run_path(args[0], run_name="__main__")
      except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
          code = e.code or 0
        else:
          print(e.code, file=sys.stderr)
          code = 1
      except BaseException:
        traceback.print_exc()
        code = 1
      try:
        atexit._run_exitfuncs()
      finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    print("ready", flush=True)
    for line in sys.stdin:
      job = json.loads(line)
      sys.stdout.flush()
      pid = os.fork()
      if pid == 0:
        os.setpgid(0, 0)
        child(job)
      print(json.dumps({"pid": pid}), flush=True)
      _, status = os.waitpid(pid, 0)
      print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)
    ''')


class Child:
  """A command started by `Driver.start`: Popen's pid, poll, wait, send_signal, kill;
  `output()` is its (stdout, stderr) once it ended."""

  def __init__(self, driver, pid, paths):
    self.driver, self.pid, self.paths = driver, pid, paths
    self.returncode = None

  def poll(self):
    if self.returncode is None:
      line = self.driver._line(0)
      if line is not None:
        self._ended(line)
    return self.returncode

  def wait(self, timeout=None):
    if self.returncode is None:
      line = self.driver._line(timeout)
      if line is None:
        raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
      self._ended(line)
    return self.returncode

  def _ended(self, line):
    self.returncode = json.loads(line)["returncode"]
    self.driver.child = None

  def send_signal(self, sig):
    if self.returncode is None:
      os.kill(self.pid, sig)

  def kill(self):
    self.send_signal(signal.SIGKILL)

  def output(self) -> tuple[str, str]:
    assert self.returncode is not None, "the command is still running"
    texts = []
    for path in self.paths:
      with open(path) as f:
        texts.append(f.read())
      os.remove(path)
    return tuple(texts)


class Driver:
  """A driver process (started here, stopped by `close`) with its environment:
  `env` (default ENV), the directory it starts in, `cwd`, and a command
  `prefix` it starts under (e.g. tests/gcs_emulator.py's `nsenter` into the
  emulator's network namespace: its children run there too)."""

  def __init__(self, env=None, cwd=ROOT, prefix=()):
    self.tmp = tempfile.mkdtemp(prefix="protoseg_tools_")
    self.log = open(os.path.join(self.tmp, "driver.log"), "w")   # its own import chatter
    self.proc = subprocess.Popen([*prefix, sys.executable, "-c", DRIVER], cwd=cwd,
                                 env=env or ENV,
                                 text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=self.log)
    self.count, self.child = 0, None
    line = self._line(600)
    assert line == "ready", f"the tool driver did not start: {line!r}"

  def _line(self, timeout):
    ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
    if not ready:
      return None
    line = self.proc.stdout.readline()
    if not line:
      with open(self.log.name) as f:
        raise RuntimeError(f"the tool driver ended (exit {self.proc.wait()}):\n{f.read()[-3000:]}")
    return line.strip()

  def start(self, args, cwd=ROOT, log_compiles=False, env=None) -> Child:
    """`python ARGS` started in `cwd`; one command at a time. env: variables set
    in the child before it runs (those read on first use, like XLA_FLAGS and its
    device count; not those JAX reads when imported)."""
    assert self.child is None, "the driver still runs a command"
    self.count += 1
    paths = tuple(os.path.join(self.tmp, f"{self.count}.{k}") for k in ("out", "err"))
    job = {"args": [str(a) for a in args], "cwd": str(cwd), "stdout": paths[0],
           "stderr": paths[1], "log_compiles": log_compiles, "env": dict(env or {})}
    self.proc.stdin.write(json.dumps(job) + "\n")
    self.proc.stdin.flush()
    self.child = Child(self, json.loads(self._line(60))["pid"], paths)
    return self.child

  def run(self, args, cwd=ROOT, timeout=600, log_compiles=False,
          env=None) -> subprocess.CompletedProcess:
    """`python ARGS` in `cwd` to its end (see the module docstring and `start`)."""
    child = self.start(args, cwd, log_compiles, env)
    try:
      code = child.wait(timeout)
    except subprocess.TimeoutExpired:
      os.killpg(child.pid, signal.SIGKILL)
      child.wait(60)
      raise subprocess.TimeoutExpired(args, timeout) from None
    return subprocess.CompletedProcess([sys.executable, *args], code, *child.output())

  def close(self):
    if self.proc.poll() is None:
      self.proc.stdin.close()
      try:
        self.proc.wait(timeout=30)
      except subprocess.TimeoutExpired:
        self.proc.kill()
    self.log.close()


_driver = None


def default() -> Driver:
  """The worker's driver with ENV in the checkout's root, started on first use."""
  global _driver
  if _driver is None or _driver.proc.poll() is not None:
    _driver = Driver()
    atexit.register(_driver.close)
  return _driver


def run(args, cwd=ROOT, timeout=600, log_compiles=False, env=None) -> subprocess.CompletedProcess:
  """`python ARGS` run in `cwd` (see the module docstring); log_compiles: JAX logs
  each compilation ("Compiling ..." on stderr), as JAX_LOG_COMPILES=1 does; env:
  see `Driver.start`."""
  return default().run(args, cwd, timeout, log_compiles, env)


def start(args, cwd=ROOT, log_compiles=False, env=None) -> Child:
  """`python ARGS` started in `cwd`, returning at once: a Popen-like `Child`."""
  return default().start(args, cwd, log_compiles, env)
