"""The python tool: ordinary work is right, and what model-written code tries is contained."""
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

import gptoss

from gptoss.tools import PythonTool, sandbox_problem

TIMEOUT = 3.0
PROBLEM = sandbox_problem()
# the sandbox needs only util-linux unshare and a kernel that allows namespaces; a machine whose
# kernel forbids them cannot run these tests (the tool then refuses, as the last tests check)
needs_sandbox = pytest.mark.skipif(PROBLEM is not None, reason=f"no sandbox here: {PROBLEM}")


@pytest.fixture(scope="module")
def py():
    with PythonTool(timeout=TIMEOUT, memory_mb=1024) as t:
        yield t


@needs_sandbox
def test_arithmetic_state_and_last_expression(py):
    assert py.run("2 + 3 * 7") == "23\n"
    assert py.run("import math\nx = math.factorial(10)\nprint('set')") == "set\n"
    assert py.run("x // 7, math.sqrt(16)") == f"{(3628800 // 7, 4.0)!r}\n"
    assert py.run("y = 5") == ""                    # an assignment shows nothing
    assert py.run("None") == ""


@needs_sandbox
def test_errors_are_output(py):
    out = py.run("def f():\n    return 1 / 0\nf()")
    assert "Traceback" in out and "ZeroDivisionError: division by zero" in out
    assert "return 1 / 0" in out                    # the code's own lines in the traceback
    assert "SyntaxError" in py.run("def (:")
    assert "NameError" in py.run("undefined_name_xyz")
    assert py.run("import sys; print('e', file=sys.stderr); print('o')") == "e\no\n"


@needs_sandbox
def test_numpy_where_installed(py):
    np = pytest.importorskip("numpy")
    out = py.run("import numpy as np\nfloat((np.arange(10) ** 2).sum())")
    assert out == f"{float((np.arange(10) ** 2).sum())!r}\n"


@needs_sandbox
def test_files_in_mnt_data_persist_and_are_the_workdir(tmp_path):
    with PythonTool(timeout=TIMEOUT, workdir=str(tmp_path / "scratch")) as t:
        assert t.run("open('/mnt/data/a.txt', 'w').write('hello')") == "5\n"
        assert t.run("open('/mnt/data/a.txt').read()") == "'hello'\n"
        assert t.run("import os; os.getcwd()") == "'/mnt/data'\n"
        assert (tmp_path / "scratch" / "a.txt").read_text() == "hello"
        (tmp_path / "scratch" / "from_host.txt").write_text("host")
        assert t.run("open('from_host.txt').read()") == "'host'\n"


@needs_sandbox
def test_no_network_even_to_localhost(py):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(0.5)
    port = srv.getsockname()[1]
    try:
        # the listener is reachable from the host...
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        srv.accept()[0].close()
        out = py.run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)")
        assert "OSError" in out or "Error" in out, out
        with pytest.raises(socket.timeout):
            srv.accept()                           # ...and nothing arrived from the sandbox
    finally:
        srv.close()


@needs_sandbox
def test_files_outside_scratch_unreadable_and_unwritable(py, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    os.chmod(tmp_path, 0o755)
    os.chmod(secret, 0o644)
    out = py.run(f"print(open({str(secret)!r}).read())")
    assert "top secret" not in out and "FileNotFoundError" in out, out
    target = tmp_path / "written.txt"
    out = py.run(f"open({str(target)!r}, 'w').write('x')")
    assert "Error" in out and not target.exists(), out
    for path in ("/etc/gptoss-test", "/usr/gptoss-test", "/gptoss-test"):
        out = py.run(f"open({path!r}, 'w').write('x')")
        assert "Error" in out and not os.path.exists(path), out
    # the host's working directory and home are not there at all
    out = py.run(f"import os\nos.path.exists({os.getcwd()!r}), os.path.exists({os.path.expanduser('~/.bashrc')!r})")
    assert out == "(False, False)\n"


@needs_sandbox
def test_cannot_see_or_signal_host_processes(py):
    out = py.run("import os\nsorted(int(p) for p in os.listdir('/proc') if p.isdigit())")
    pids = eval(out)
    assert os.getpid() not in pids or len(pids) < 5
    assert pids[0] == 1 and len(pids) < 5, out
    out = py.run(f"import os\nos.kill({os.getpid()}, 0)")
    assert "ProcessLookupError" in out, out


@needs_sandbox
def test_endless_loop_times_out_and_restarts(py):
    py.run("kept = 1")
    t0 = time.monotonic()
    out = py.run("while True:\n    pass")
    took = time.monotonic() - t0
    assert "did not finish within the 3 s timeout" in out and "restarted" in out
    assert took < TIMEOUT + 2.0, took
    assert "NameError" in py.run("kept")            # the session was restarted
    assert py.run("1 + 1") == "2\n"


@needs_sandbox
def test_fork_bomb_is_contained(py):
    t0 = time.monotonic()
    out = py.run("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass")
    assert time.monotonic() - t0 < TIMEOUT + 2.0
    assert "timeout" in out
    assert py.run("6 * 7") == "42\n"


@needs_sandbox
def test_huge_allocation_fails_cleanly(py):
    out = py.run("x = bytearray(6 * 1024 ** 3)")
    assert "MemoryError" in out, out
    assert py.run("len(bytearray(10 ** 6))") == "1000000\n"


@needs_sandbox
def test_100mb_printed_is_cut(py):
    t0 = time.monotonic()
    out = py.run("print('x' * (100 * 1000 * 1000))")
    assert time.monotonic() - t0 < TIMEOUT
    assert len(out) < py.max_output_chars + 200
    assert out.startswith("x" * 1000) and "[output cut: 100000001 bytes in all" in out
    # output of a child process (written to the file descriptors directly) is capped too
    out = py.run("import subprocess\nsubprocess.run(['/bin/sh', '-c', 'head -c 50000000 /dev/zero | tr \"\\\\0\" y'])\nNone")
    assert len(out) < py.max_output_chars + 200 and "output cut" in out, out[-300:]
    assert py.run("'still here'") == "'still here'\n"


@needs_sandbox
def test_parent_killed_leaves_no_sandboxed_process(tmp_path):
    token = f"gptoss-orphan-{os.getpid()}-{time.time_ns()}"
    half = len(token) // 2           # the token is put together only inside the sandbox
    code = ("import subprocess, sys\n"
            f"tok = {token[:half]!r} + {token[half:]!r}\n"
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)  # ' + tok],"
            " start_new_session=True)\nimport time\ntime.sleep(600)")
    script = ("import time\nfrom gptoss.tools import PythonTool\n"
              "t = PythonTool(timeout=300)\nprint('ready', flush=True)\n"
              f"t.run({code!r})\n")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(gptoss.__file__)))
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)

    def survivors():
        found = []
        for pid in os.listdir("/proc"):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if token.encode() in f.read():
                        found.append(int(pid))
            except OSError:
                pass
        return found
    try:
        # killed while the code runs (the worker is not waiting on its request pipe)
        assert p.stdout.readline().strip() == b"ready"
        deadline = time.monotonic() + 5
        while not survivors() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert survivors(), "the sandboxed child never started (the test could not fail)"
        p.send_signal(signal.SIGKILL)
        p.wait()
        deadline = time.monotonic() + 3
        while survivors() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not survivors()
    finally:
        if p.poll() is None:
            p.kill()


def test_sandbox_problem_matches_what_the_tool_does():
    if PROBLEM is None:
        PythonTool(timeout=TIMEOUT).close()
    else:
        with pytest.raises(RuntimeError, match="sandbox"):
            PythonTool(timeout=TIMEOUT)


def test_bad_arguments_and_missing_sandbox(monkeypatch):
    with pytest.raises(ValueError, match="sandbox"):
        PythonTool(sandbox="docker")
    with pytest.raises(ValueError, match="timeout"):
        PythonTool(timeout=0)
    import gptoss.tools.python_tool as pt
    monkeypatch.setattr(pt.shutil, "which", lambda name: None)
    with pytest.raises(pt.SandboxError, match="unshare"):
        PythonTool()


def test_sandbox_none_is_loud_and_works(tmp_path):
    with pytest.warns(RuntimeWarning, match="UNSANDBOXED"):
        t = PythonTool(sandbox="none", timeout=TIMEOUT, workdir=str(tmp_path))
    with t:
        assert t.run("import os\nos.getcwd()") == f"{str(tmp_path)!r}\n"


class UserNamespaceTool(PythonTool):
    use_userns = True          # the setup a non-root user gets, tried here even as root


@needs_sandbox
def test_user_namespace_mode_contains_too(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    with UserNamespaceTool(timeout=TIMEOUT, memory_mb=1024) as t:
        assert t.run("x = 2\nx ** 10") == "1024\n"
        assert "Network is unreachable" in t.run(
            "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)")
        assert "FileNotFoundError" in t.run(f"open({str(secret)!r}).read()")
        assert "Read-only file system" in t.run("open('/etc/passwd', 'a')")
        # no capability is left in the namespace
        assert t.run("[l for l in open('/proc/self/status') if l.startswith('CapEff')][0]") == \
            "'CapEff:\\t0000000000000000\\n'\n"
        assert "MemoryError" in t.run("bytearray(6 * 1024 ** 3)")
        assert t.run("open('/mnt/data/f', 'w').write('ok')") == "2\n"
        assert "timeout" in t.run("while True: pass")


@needs_sandbox
def test_session_that_died_between_calls_is_restarted_and_says_so():
    with PythonTool(timeout=TIMEOUT) as t:
        t.run("v = 1")
        t._proc.kill()
        t._proc.wait()
        out = t.run("1 + 2")
        assert out.startswith("[The python session had ended") and out.endswith("\n3\n")
        assert "NameError" in t.run("v")


@needs_sandbox
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a file over /etc needs root here")
def test_nested_mounts_in_system_directories_are_read_only_too(tmp_path):
    # a container's /etc/hosts is a bind mount of its own; such nested mounts must not stay
    # writable inside the sandbox (the host side's mount lives in a mount namespace of its own)
    f = tmp_path / "writable"
    f.write_text("")
    os.chmod(tmp_path, 0o755)
    os.chmod(f, 0o666)
    code = ("import subprocess\n"
            f"subprocess.run(['mount', '--bind', {str(f)!r}, '/etc/issue.net'], check=True)\n"
            "from gptoss.tools import PythonTool\n"
            "with PythonTool(timeout=5) as t:\n"
            "    print(t.run(\"open('/etc/issue.net', 'a').write('x')\"))\n")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(gptoss.__file__)))
    r = subprocess.run(["unshare", "--mount", sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert "Read-only file system" in r.stdout, r.stdout
    assert f.read_text() == ""


@needs_sandbox
def test_session_made_in_a_short_lived_thread_outlives_it():
    import threading
    box = {}

    def make():
        box["t"] = PythonTool(timeout=TIMEOUT)
        box["t"].run("kept = 'yes'")
    th = threading.Thread(target=make)
    th.start()
    th.join()
    time.sleep(0.3)
    with box["t"] as t:
        assert t.run("kept") == "'yes'\n"           # the session did not die with the thread


@needs_sandbox
def test_python_installed_under_tmp_works(tmp_path):
    """A Python whose installation lives under /tmp (a venv there, as CI machines make) is bound
    inside the sandbox's private /tmp, not hidden by it (this once failed with FileExistsError)."""
    venv = tmp_path / "venv"
    assert str(venv).startswith("/tmp/")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True, timeout=120)
    pkg = os.path.dirname(os.path.dirname(gptoss.__file__))
    code = ("from gptoss.tools import PythonTool\n"
            "with PythonTool(timeout=20) as py:\n"
            "    print(py.run('6 * 7'))\n")
    r = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True,
                       text=True, timeout=120, env=dict(os.environ, PYTHONPATH=pkg))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "42"
