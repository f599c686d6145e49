"""The `python` tool: a stateful Python session for the model, sandboxed by default.

Each `PythonTool` owns one worker process (`_worker.py`) started by util-linux `unshare` in new
mount, network, PID, IPC and UTS namespaces (and a user namespace when not run as root):

- no network: its network namespace has only a loopback that is down, so even 127.0.0.1 is
  unreachable;
- its own root: the system directories (/usr, /etc, /bin, /lib...) and the Python installation
  are bound read-only; the host's /tmp, home directories and working directory are not there;
  /tmp is a private tmpfs; the only persistent writable place is the scratch directory, shown to
  the code as /mnt/data;
- its own PID namespace: it sees and can signal only its own processes, and when the worker (its
  PID 1) dies, the kernel kills every process in it;
- no privileges: run as root, the worker becomes a uid of its own (no account) after building
  its root; otherwise it drops every capability of its user namespace; no_new_privs either way;
- resource limits (setrlimit): address space, processes, file size, CPU seconds, open files;
- a wall-clock timeout per call: the session is killed and restarted and the model is told.

If `unshare` is missing or the kernel refuses the namespaces, the tool refuses to start and
says why. `sandbox="none"` runs the worker as a plain subprocess (the code can do anything the
user can) and says so loudly.

Sessions are started from one long-lived thread of this process (the parent-death signal is
tied to the starting thread), so a tool made in a short-lived thread keeps its session. If a
session died anyway, the next `run` starts a fresh one and says so.
"""
from __future__ import annotations

import json
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import warnings
from typing import List, Optional

from ..chat import python_description

# Run as root, each session becomes a uid of its own from this range (no passwd entry needed):
# the process limit then counts only its processes, and no other account's files are its own.
SANDBOX_UID_BASE = 1_800_000_000
_instances = [0]
SANDBOXES = ("auto", "unshare", "none")
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")


class SandboxError(RuntimeError):
    """The sandbox cannot be set up on this machine (the message says what is missing)."""


# The kernel's parent-death signal fires when the *thread* that started a process exits, so
# every sandbox is started from one long-lived thread: a session made in a short-lived thread (a
# server's request worker, say) still lasts until close() or the end of this process.
_spawner: Optional[tuple] = None
_spawn_lock = threading.Lock()


def _spawn_loop(q: "queue.Queue") -> None:
    while True:
        fn, box, done = q.get()
        try:
            box["value"] = fn()
        except BaseException as e:           # handed back to the thread that asked
            box["error"] = e
        done.set()


def _on_spawner(fn):
    global _spawner
    with _spawn_lock:
        if _spawner is None or not _spawner[0].is_alive():
            q: "queue.Queue" = queue.Queue()
            t = threading.Thread(target=_spawn_loop, args=(q,), daemon=True,
                                 name="gptoss-sandbox-spawner")
            t.start()
            _spawner = (t, q)
        q = _spawner[1]
    box: dict = {}
    done = threading.Event()
    q.put((fn, box, done))
    done.wait()
    if "error" in box:
        raise box["error"]
    return box["value"]


def sandbox_problem() -> Optional[str]:
    """Why the python tool's sandbox cannot start on this machine, or None if it can: util-linux
    `unshare` must be on PATH and the kernel must allow the namespaces (for a non-root user,
    unprivileged user namespaces)."""
    exe = shutil.which("unshare")
    if not exe:
        return "util-linux `unshare` is not on PATH"
    cmd = [exe, "--mount", "--net", "--pid", "--ipc", "--uts", "--fork"]
    if os.geteuid() != 0:
        cmd += ["--user", "--map-root-user"]
    try:
        r = subprocess.run(cmd + ["true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return f"`unshare` could not run: {e}"
    if r.returncode != 0:
        return f"the kernel refused the namespaces: {r.stderr.strip() or r.returncode}"
    return None


def _worker_source() -> str:
    with open(os.path.join(os.path.dirname(__file__), "_worker.py"), encoding="utf-8") as f:
        return f.read()


def _python_dirs() -> List[str]:
    """The directories the interpreter needs: its prefixes and package directories."""
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
            os.path.dirname(os.path.realpath(sys.executable))}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        p = sysconfig.get_paths().get(key)
        if p:
            dirs.add(p)
    out = []
    for d in sorted(os.path.realpath(d) for d in dirs if d and os.path.isdir(d)):
        if d != "/" and not any(d.startswith(o + "/") or d == o for o in out) \
                and not any(d == s or d.startswith(s + "/") for s in SYSTEM_DIRS):
            out.append(d)
    return out


class PythonTool:
    """A stateful, sandboxed Python session. `run(code)` returns exactly what the model is shown.

    timeout: seconds of wall clock per `run` (then the session is restarted, state lost).
    memory_mb: address-space limit of the session's processes.
    workdir: the scratch directory (shown as /mnt/data); a fresh temporary one if None
    (removed by `close()`); a given one is kept.
    sandbox: "auto" (= "unshare"), "unshare", or "none" (no isolation at all: explicit opt-in).
    """

    name = "python"

    def __init__(self, timeout: float = 120.0, memory_mb: int = 2048,
                 workdir: Optional[str] = None, sandbox: str = "auto",
                 max_output_chars: int = 16000, max_processes: int = 32,
                 max_file_mb: int = 256, tmp_mb: int = 256, cpu_seconds: Optional[int] = 3600):
        if sandbox not in SANDBOXES:
            raise ValueError(f"sandbox={sandbox!r}: must be one of {', '.join(SANDBOXES)}")
        for k, v in (("timeout", timeout), ("memory_mb", memory_mb),
                     ("max_output_chars", max_output_chars), ("max_processes", max_processes),
                     ("max_file_mb", max_file_mb), ("tmp_mb", tmp_mb)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{k}={v!r}: must be a positive number")
        self.timeout = float(timeout)
        self.memory_mb = int(memory_mb)
        self.max_output_chars = int(max_output_chars)
        self.max_processes = int(max_processes)
        self.max_file_mb = int(max_file_mb)
        self.tmp_mb = int(tmp_mb)
        self.cpu_seconds = cpu_seconds
        self.sandbox = "unshare" if sandbox == "auto" else sandbox
        self._own = tempfile.mkdtemp(prefix="gptoss-python-")
        self.workdir = os.path.abspath(workdir) if workdir else os.path.join(self._own, "data")
        os.makedirs(self.workdir, exist_ok=True)
        self._proc: Optional[subprocess.Popen] = None
        self._req = self._resp = None
        self._buf = b""
        self._closed = False
        _instances[0] += 1
        self._serial = _instances[0]
        if self.sandbox == "none":
            msg = ("gptoss PythonTool: sandbox='none': model-written code runs UNSANDBOXED with "
                   "your user's full rights (network, files, processes)")
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            print(f"[{msg}]", file=sys.stderr)
        else:
            self._unshare = shutil.which("unshare")
            if not self._unshare:
                raise SandboxError("the python tool's sandbox needs util-linux `unshare` on PATH "
                                   "(apt install util-linux); or pass sandbox='none' to run "
                                   "model code unsandboxed")
        self._start()

    # run as root, the worker builds its root with real privileges and then becomes its own uid;
    # otherwise (or with use_userns=True, as the tests do) a user namespace grants what the
    # setup needs and the worker then drops every capability
    use_userns = False

    def _real_root(self) -> bool:
        return os.geteuid() == 0 and not self.use_userns

    @property
    def description(self) -> str:
        """What the system message tells the model about this tool (true of this session)."""
        return python_description(self.timeout)

    # ------------------------------------------------------------------ process
    def _config(self) -> dict:
        boxed = self.sandbox != "none"
        root_dir = os.path.join(self._own, "root")
        os.makedirs(root_dir, exist_ok=True)
        as_root = boxed and self._real_root()
        uid = SANDBOX_UID_BASE + (os.getpid() * 64 + self._serial) % 100_000_000
        if as_root:
            os.chown(self.workdir, uid, uid)
        return {"sandbox": boxed, "root": root_dir, "scratch": self.workdir,
                "ro": list(SYSTEM_DIRS) + _python_dirs(),
                "uid": uid if as_root else None, "gid": uid if as_root else None,
                "memory_mb": self.memory_mb, "max_processes": self.max_processes,
                "file_mb": self.max_file_mb, "tmp_mb": self.tmp_mb,
                "cpu_seconds": self.cpu_seconds, "output_bytes": self.max_output_chars * 4,
                "tmp": None if boxed else self._own}

    def _start(self) -> None:
        cfg = self._config()
        py = [os.path.realpath(sys.executable), "-I", "-c", _worker_source(), json.dumps(cfg)]
        if cfg["sandbox"]:
            cmd = [self._unshare, "--mount", "--net", "--pid", "--ipc", "--uts", "--fork",
                   "--kill-child"]
            if not self._real_root():
                cmd += ["--user", "--map-root-user"]
            cmd += py
        else:
            cmd = py
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/mnt/data" if cfg["sandbox"]
               else self.workdir, "LANG": "C.UTF-8", "OPENBLAS_NUM_THREADS": "1",
               "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg",
               "TMPDIR": "/tmp" if cfg["sandbox"] else self._own, "PYTHONDONTWRITEBYTECODE": "1"}
        log = open(os.path.join(self._own, "log"), "w+b")

        cmd[-1] = json.dumps({**cfg, "req_fd": req_r, "resp_fd": resp_w})

        def child_setup():
            # when this process dies, so does unshare, whose --kill-child then kills the
            # worker, the PID namespace's init, which takes every process inside with it
            import ctypes
            ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)   # PR_SET_PDEATHSIG

        try:
            self._proc = _on_spawner(lambda: subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, close_fds=True,
                pass_fds=(req_r, resp_w), preexec_fn=child_setup, start_new_session=True))
        finally:
            os.close(req_r)
            os.close(resp_w)
        self._req, self._resp, self._buf = req_w, resp_r, b""
        ready = self._read_line(10.0 + self.timeout)
        if ready is None or not ready.get("ready"):
            self._kill()
            log.seek(0)
            detail = log.read(4000).decode("utf-8", "replace").strip()
            why = (ready or {}).get("error") or detail or "the worker exited at startup"
            if ready is None and detail:
                why = detail
            hint = ""
            if cfg["sandbox"]:
                hint = (" (the sandbox needs unprivileged user namespaces, or root: see "
                        "/proc/sys/user/max_user_namespaces and, on Debian/Ubuntu, "
                        "kernel.unprivileged_userns_clone / "
                        "kernel.apparmor_restrict_unprivileged_userns; or pass sandbox='none' to "
                        "run model code unsandboxed)")
            log.close()
            raise SandboxError(f"the python tool could not start its sandbox: {why}{hint}")
        log.close()

    def _read_line(self, timeout: float) -> Optional[dict]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([self._resp], [], [], left)
            if not r:
                return None
            chunk = os.read(self._resp, 1 << 20)
            if not chunk:
                return None
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return json.loads(line)

    def _kill(self) -> None:
        p, self._proc = self._proc, None
        for fd in (self._req, self._resp):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._req = self._resp = None
        if p is not None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                p.kill()
            except ProcessLookupError:
                pass
            p.wait()

    # ------------------------------------------------------------------ api
    def run(self, code: str) -> str:
        """Run `code` in the session; the text the model is shown (output, errors, notes)."""
        if self._closed:
            raise RuntimeError("PythonTool.run: the tool is closed")
        if not isinstance(code, str):
            raise ValueError("code: must be a string")
        note = ""
        if self._proc is None or self._proc.poll() is not None:
            if self._proc is not None:       # it died between calls (not by a timeout here)
                note = ("[The python session had ended; a fresh one was started: variables and "
                        "imports are gone; files in /mnt/data remain.]\n")
            self._kill()
            self._start()
        try:
            os.write(self._req, (json.dumps({"code": code}) + "\n").encode())
        except (BrokenPipeError, OSError):
            self._kill()
            self._start()
            os.write(self._req, (json.dumps({"code": code}) + "\n").encode())
        r = self._read_line(self.timeout)
        if r is None:
            timed_out = self._proc is not None and self._proc.poll() is None
            code_ = None if timed_out else self._proc.returncode
            self._kill()
            try:
                self._start()                # a fresh session, ready for the next call
            except SandboxError:
                pass                         # the next run() tries again and raises
            if timed_out:
                return (f"[The code did not finish within the {self.timeout:g} s timeout. The "
                        "python session was stopped and restarted: variables and imports are "
                        "gone; files in /mnt/data remain.]")
            return (f"[The python session ended while running the code (exit status {code_}; "
                    "a resource limit such as CPU time may have been reached). It was restarted: "
                    "variables and imports are gone; files in /mnt/data remain.]")
        out = r["output"]
        total = r["total"]
        if len(out) > self.max_output_chars:
            out = out[:self.max_output_chars]
        if total > len(out.encode("utf-8")):
            out += (f"\n[output cut: {total} bytes in all; only the first "
                    f"{len(out)} characters are shown]")
        return note + out

    def restart(self) -> None:
        """A fresh session (files in the scratch directory stay)."""
        self._kill()
        self._start()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._kill()
        shutil.rmtree(self._own, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
