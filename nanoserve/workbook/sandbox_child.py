"""The build sandbox's worker: `python -I -S sandbox_child.py`, one process per run, never imported.

It reads one JSON request on stdin, locks itself down, runs the learner's function on each case and
writes one result line, prefixed by the parent's per-run marker, to stdout. The order matters:
whatever needs privilege or the file system happens before the learner's code can run.

1. Network: a new, empty network namespace (unshare(CLONE_NEWNET) as root, else a user + network
   namespace where the kernel lets unprivileged users make one); no interface is up, so no socket can
   reach anything, from Python or from C.
2. Modules: the allowed modules are imported now (after step 4 the interpreter's own directory may be
   unreadable); ctypes, used only for unshare, is dropped from sys.modules; `_thread` cannot start threads.
3. Limits (setrlimit): CPU seconds, address space, file size, open files, no core files, and no new
   processes or threads (RLIMIT_NPROC 0: a fork or thread bomb gets EAGAIN).
4. Privileges: as root, drop to `nobody` (setgroups([]), setgid, setuid): the server's files, its
   /proc/<pid>/environ and its process are then out of reach even for native code.
5. An audit hook (PEP 578; once added it cannot be removed) refusing, with a message for the learner,
   every event of the os, sys, socket, subprocess, ctypes, signal, ... families (exec, spawn, fork, kill,
   file-system changes, frame access), the restricted attributes behind frame walks (tb_frame,
   gi_frame, __globals__), imports outside the allow-list, and every `open` outside the throwaway
   directory (reads of the allowed modules' own standard-library files excepted).
The learner's code then runs with trimmed builtins and an import hook limited to the allow-list.
"""

import builtins
import json
import os
import resource
import sys

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
OUTPUT_CAP_CHARS = 64 * 1024          # the learner's own prints are kept up to this, then dropped
VALUE_CAP_CHARS = 10_000              # a returned value larger than this is reported by its repr's head
REFUSED_EVENT_PREFIXES = (
    "os.", "sys.", "socket.", "subprocess.", "_posixsubprocess.", "ctypes.", "signal.", "pty.", "shutil.",
    "gc.", "mmap.", "fcntl.", "resource.", "tempfile.", "glob.", "marshal.", "pickle.", "shelve.",
    "sqlite3.", "urllib.", "http.", "ftplib.", "smtplib.", "poplib.", "imaplib.", "nntplib.", "telnetlib.",
    "webbrowser.", "syslog.", "msvcrt.", "winreg.", "_winapi.", "cpython.run_", "code.__new__",
    "function.__new__", "object.__getattr__", "builtins.breakpoint", "pdb.", "setopencodehook",
)
BENIGN_SYS_EVENTS = frozenset({"sys.excepthook", "sys.unraisablehook"})


class SandboxRefusal(PermissionError, ValueError):
    """Raised by the audit hook. Also a ValueError: `typing` and `collections.namedtuple` probe
    sys._getframe and fall back gracefully on ValueError, so classes the learner defines still work."""


def isolate_network() -> str:
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        flags = CLONE_NEWNET if os.geteuid() == 0 else CLONE_NEWUSER | CLONE_NEWNET
        ok = libc.unshare(flags) == 0
    except (OSError, AttributeError):
        ok = False
    for name in [m for m in sys.modules if m == "_ctypes" or m == "ctypes" or m.startswith("ctypes.")]:
        del sys.modules[name]
    return "netns" if ok else "audit-only"


def set_limits(cpu_s: int, memory_bytes: int, file_bytes: int) -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
    resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))


def drop_privileges(uid: int, gid: int) -> None:
    if os.geteuid() != 0:
        return
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() == 0 or os.geteuid() == 0:
        raise SystemExit("sandbox: could not drop root privileges")


def make_audit_hook(workdir: str, stdlib_dir: str, allowed_roots: frozenset):
    workdir = os.path.normpath(workdir) + os.sep
    stdlib_dir = os.path.normpath(stdlib_dir) + os.sep
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    normpath, join, fspath = os.path.normpath, os.path.join, os.fspath

    def stdlib_root(full: str) -> str:
        """The top-level module a standard-library file belongs to: only allowed ones may be read."""
        parts = full[len(stdlib_dir):].split(os.sep)
        name = parts[1] if parts[0] in ("lib-dynload", "__pycache__") and len(parts) > 1 else parts[0]
        return name.split(".")[0]

    def refuse(what: str) -> None:
        raise SandboxRefusal(f"{what} is not allowed in the workbook sandbox (no files, processes, "
                             f"threads or network; plain computation only)")

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            if not isinstance(path, (str, bytes)):
                refuse("opening a file descriptor")
            p = fspath(path)
            p = p.decode(errors="replace") if isinstance(p, bytes) else p
            full = normpath(join(workdir, p))
            writing = any(c in (mode or "") for c in "wax+") or bool((flags or 0) & write_flags)
            if full.startswith(workdir) or (full.startswith(stdlib_dir) and not writing
                                            and stdlib_root(full) in allowed_roots):
                return
            refuse(f"open({p!r})")
        elif event == "import":
            if str(args[0]).split(".")[0] not in allowed_roots:
                refuse(f"import of {args[0]!r}")
        elif event.startswith(REFUSED_EVENT_PREFIXES) and event not in BENIGN_SYS_EVENTS:
            refuse(f"{event}({', '.join(type(a).__name__ for a in args)})")

    return hook


class BoundedSink:
    """sys.stdout/sys.stderr for the learner's prints: kept up to a cap, never sent anywhere."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, s: str) -> int:
        self.size += len(s)
        return len(s)

    def flush(self) -> None:
        pass


def _disabled(*args, **kwargs):
    raise SandboxRefusal("starting a thread is not allowed in the workbook sandbox")


def _reportable(v):
    """The value as JSON can carry it: itself, else its repr; a huge one by its head only."""
    try:
        text = json.dumps(v)
    except (TypeError, ValueError):
        try:
            v = text = repr(v)
        except Exception:  # noqa: BLE001 - e.g. an int too long to print
            return "<a value that cannot be printed>"
    return v if len(text) <= VALUE_CAP_CHARS else text[:200] + "…"


def main() -> None:
    req = json.loads(sys.stdin.read())
    sys.stdin.close()
    marker, allowed = req["marker"], frozenset(req["allowed"])
    isolation = isolate_network()
    for name in sorted(allowed):
        __import__(name)
    import _thread
    _thread.start_new_thread = _thread.start_new = _disabled
    set_limits(int(req["cpu_s"]), int(req["memory_bytes"]), int(req["file_bytes"]))
    drop_privileges(int(req["uid"]), int(req["gid"]))
    write, out_fd, dumps = os.write, sys.stdout.fileno(), json.dumps

    def emit(obj: dict) -> None:
        obj["isolation"] = isolation
        write(out_fd, ("\n" + marker + dumps(obj) + "\n").encode())

    real_import = builtins.__import__

    def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level or name.split(".")[0] not in allowed:
            raise ImportError(f"import of {name!r} is refused in the workbook sandbox")
        return real_import(name, globals, locals, fromlist, level)

    forbidden = set(req["forbidden_names"])
    safe = {k: getattr(builtins, k) for k in dir(builtins) if k not in forbidden and not k.startswith("_")}
    safe.update(__import__=guarded_import, __build_class__=builtins.__build_class__, __name__="learner")
    g = {"__builtins__": safe, "__name__": "learner"}
    code = compile(req["code"], "<your code>", "exec")
    del req["code"]
    sys.stdout = sys.stderr = BoundedSink()
    sys.addaudithook(make_audit_hook(os.getcwd(), os.path.dirname(os.__file__), allowed))
    try:
        exec(code, g)
    except BaseException as e:  # noqa: BLE001 - anything the learner's module does is reported, not raised
        emit({"load_error": f"{type(e).__name__}: {e}"[:2000]})
        return
    fn = g.get(req["function"])
    if not callable(fn):
        emit({"load_error": f"{req['function']} is not a function"})
        return
    results = []
    for args in req["cases"]:
        try:
            results.append({"value": _reportable(fn(*args))})
        except BaseException as e:  # noqa: BLE001 - a failing case is a result, the next case still runs
            results.append({"error": f"{type(e).__name__}: {e}"[:2000]})
    emit({"results": results})


if __name__ == "__main__":
    main()
