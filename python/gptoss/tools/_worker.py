# The python tool's worker. `python_tool.PythonTool` starts it as `python -I -c <this file's text>
# <config json>`, inside fresh namespaces made by util-linux `unshare`, so this file must import
# nothing from gptoss (the package is not visible inside the sandbox).
#
# Startup (sandboxed): build a new root on a tmpfs (system and Python directories bound read-only,
# a private /tmp, /dev with a few device files, /proc of the new PID namespace, the scratch
# directory bound read-write at /mnt/data), pivot into it, drop privileges, set resource limits.
# Then it serves one JSON request per line on fd req_fd ({"code": ...}) and answers on resp_fd
# ({"output": ..., "total": ...}); code runs in one persistent namespace, like a notebook's.
import ast
import ctypes
import io
import json
import linecache
import os
import re
import resource
import signal
import sys
import traceback

CFG = json.loads(sys.argv[1])
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MNT_DETACH = 2
PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP, PR_SET_PDEATHSIG = 38, 24, 1
SYS_PIVOT_ROOT, SYS_CAPSET = 155, 126      # x86_64 and arm64 differ; see _syscall_numbers
libc = ctypes.CDLL(None, use_errno=True)


def _syscall_numbers():
    import platform
    if platform.machine() in ("aarch64", "arm64"):
        return 41, 91
    return SYS_PIVOT_ROOT, SYS_CAPSET


def _check(rc, what):
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def mount(src, dst, fstype, flags, data=None):
    _check(libc.mount(src.encode() if src else None, dst.encode(),
                      fstype.encode() if fstype else None, ctypes.c_ulong(flags),
                      data.encode() if data else None), f"mount {src} on {dst}")


def _locked_flags(path):
    # a read-only remount must keep the flags the kernel locked on the original mount
    f = os.statvfs(path).f_flag
    out = 0
    for st, ms in ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
                   (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME),
                   (os.ST_RELATIME, MS_RELATIME)):
        if f & st:
            out |= ms
    return out


def bind(src, dst, writable=False):
    if os.path.islink(src):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if not os.path.lexists(dst):
            os.symlink(os.readlink(src), dst)
        return
    if os.path.isdir(src):
        os.makedirs(dst, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if not os.path.exists(dst):
            open(dst, "w").close()
    mount(src, dst, None, MS_BIND | MS_REC)
    flags = MS_BIND | MS_REMOUNT | MS_NOSUID | _locked_flags(src)
    if not writable:
        flags |= MS_RDONLY
    mount(None, dst, None, flags)


def build_root():
    new = CFG["root"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", new, "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=0755")
    # the private /tmp first: a Python installation that lives under /tmp (a venv there, say) is
    # then bound inside it, rather than hidden by it (or in the way of making it)
    os.makedirs(new + "/tmp")
    mount("tmpfs", new + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
          f"size={CFG['tmp_mb']}m,mode=1777")
    for p in CFG["ro"]:
        if os.path.lexists(p):
            bind(p, new + p)
    # mounts nested inside those directories (a container's /etc/hosts, say) came along with the
    # recursive binds: make each read-only as well
    with open("/proc/self/mountinfo") as f:
        points = [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), ln.split()[4])
                  for ln in f]
    for mp in points:
        if any(mp.startswith(new + p + "/") for p in CFG["ro"]):
            mount(None, mp, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | _locked_flags(mp))
    os.makedirs(new + "/dev", exist_ok=True)
    for d in ("null", "zero", "full", "random", "urandom"):
        bind("/dev/" + d, new + "/dev/" + d, writable=True)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, new + "/dev/" + name)
    os.makedirs(new + "/dev/shm")
    mount("tmpfs", new + "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "size=64m,mode=1777")
    os.makedirs(new + "/proc")
    mount("proc", new + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    bind(CFG["scratch"], new + "/mnt/data", writable=True)
    old = new + "/.old"
    os.makedirs(old)
    pivot, _ = _syscall_numbers()
    _check(libc.syscall(pivot, new.encode(), old.encode()), "pivot_root")
    os.chdir("/")
    _check(libc.umount2(b"/.old", MNT_DETACH), "umount the old root")
    os.rmdir("/.old")
    mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def drop_privileges():
    if CFG["uid"] is not None:           # real root outside a user namespace: become the session uid
        os.setgroups([])
        os.setresgid(CFG["gid"], CFG["gid"], CFG["gid"])
        os.setresuid(CFG["uid"], CFG["uid"], CFG["uid"])
    else:                                # user namespace: drop every capability it granted
        for cap in range(64):
            libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)

        class Header(ctypes.Structure):
            _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
        data = (ctypes.c_uint32 * 6)()
        _, capset = _syscall_numbers()
        _check(libc.syscall(capset, ctypes.byref(Header(0x20080522, 0)), data), "capset")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    # changing credentials cleared the parent-death signal `unshare --kill-child` set: set it
    # again, so that this process (the PID namespace's init, whose death ends every process in
    # it) dies with unshare, which dies with the host process (python_tool.PythonTool._start)
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")


def set_limits():
    mb = 1 << 20
    lim = {resource.RLIMIT_AS: CFG["memory_mb"] * mb, resource.RLIMIT_NPROC: CFG["max_processes"],
           resource.RLIMIT_FSIZE: CFG["file_mb"] * mb, resource.RLIMIT_NOFILE: 256,
           resource.RLIMIT_CORE: 0, resource.RLIMIT_CPU: CFG["cpu_seconds"]}
    for k, v in lim.items():
        if v is not None:
            resource.setrlimit(k, (v, v))


class CappedOut(io.TextIOBase):
    """stdout/stderr of the code: written to fd 1 (the output file) up to a cap, then counted."""

    def __init__(self, state):
        self.state = state

    def writable(self):
        return True

    def write(self, s):
        st = self.state
        b = s.encode("utf-8", "replace")
        room = st["cap"] - st["written"]
        if room > 0:
            chunk = b[:room]
            try:
                while chunk:
                    n = os.write(1, chunk)
                    chunk = chunk[n:]
                    st["written"] += n
            except OSError:
                pass
        st["dropped"] += max(0, len(b) - max(room, 0))
        return len(s)

    def flush(self):
        pass


def run(code, ns, state, out_path, main_pid):
    fd = os.open(out_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    state.update(written=0, dropped=0)
    sys.stdout = sys.stderr = CappedOut(state)
    name = f"<python-{state['n']}>"
    state["n"] += 1
    linecache.cache[name] = (len(code), None, code.splitlines(True), name)
    try:
        tree = ast.parse(code, name)
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, name, "exec"), ns)
        if last is not None:
            value = eval(compile(last, name, "eval"), ns)
            if value is not None:
                ns["_"] = value
                sys.stdout.write(repr(value) + "\n")
    except BaseException as e:          # noqa: B902 -- everything the code raises is its output
        if os.getpid() != main_pid:
            os._exit(1)
        tb = e.__traceback__             # from the code's own frame on (not this worker's)
        while tb is not None and tb.tb_frame.f_code.co_filename != name:
            tb = tb.tb_next
        sys.stderr.write("".join(traceback.format_exception(type(e), e, tb)))
    if os.getpid() != main_pid:          # a child the code forked and left running into here
        os._exit(0)
    sys.stdout = sys.stderr = CappedOut(state)
    size = os.fstat(1).st_size
    with open(out_path, "rb") as f:
        head = f.read(state["cap"])
    os.dup2(os.open("/dev/null", os.O_WRONLY), 1)
    os.dup2(1, 2)
    return {"output": head.decode("utf-8", "replace"), "total": size + state["dropped"]}


def main():
    req = os.fdopen(CFG["req_fd"], "r", encoding="utf-8")
    resp = os.fdopen(CFG["resp_fd"], "w", encoding="utf-8")
    os.set_inheritable(CFG["req_fd"], False)
    os.set_inheritable(CFG["resp_fd"], False)
    try:
        if CFG["sandbox"]:
            build_root()
            os.chdir("/mnt/data")
            drop_privileges()
        else:
            os.chdir(CFG["scratch"])
        set_limits()
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        null = os.open("/dev/null", os.O_RDWR)
        for k in (0, 1, 2):
            os.dup2(null, k)
    except Exception as e:
        resp.write(json.dumps({"ready": False, "error": f"{type(e).__name__}: {e}"}) + "\n")
        resp.flush()
        return 1
    resp.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    resp.flush()
    out_path = (os.path.join(CFG["tmp"], ".gptoss-output") if CFG["tmp"] else
                "/tmp/.gptoss-output")
    ns = {"__name__": "__main__", "__builtins__": __builtins__}
    state = {"cap": CFG["output_bytes"], "n": 1, "written": 0, "dropped": 0}
    main_pid = os.getpid()
    for line in req:
        r = run(json.loads(line)["code"], ns, state, out_path, main_pid)
        resp.write(json.dumps(r) + "\n")
        resp.flush()
    return 0


sys.exit(main())
