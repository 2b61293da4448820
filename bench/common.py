"""What the benchmarks share: free ports, the real server, peak RSS, medians, tables.

Every benchmark runs this checkout's ``python -m server`` as a subprocess bound
to 127.0.0.1 in a temporary folder, measures several runs and reports medians;
comparisons are ratios of figures measured side by side in the same run (the
machine is shared and noisy). MB = 10**6 bytes, MiB = 2**20.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Iterator, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

HOST = "127.0.0.1"
MIB = 1024 * 1024
MB = 1_000_000
#: Random bytes repeated to fill a test file: fast to write, incompressible.
PATTERN_SIZE = 16 * MIB
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
POLL_INTERVAL = 0.05


def env(checkout: Path = REPO) -> dict[str, str]:
    """The environment that runs this checkout's packages (or another's)."""
    result = dict(os.environ)
    result["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(checkout), result.get("PYTHONPATH")])
    )
    return result


def timed_client_run(home: Path, port: int, name: str, args: Sequence[str],
                     timeout: float) -> tuple[float, float]:
    """One whole ``python -m client`` run from ``home``: (seconds, peak RSS in MiB).

    Exits the benchmark when the client fails.
    """
    command = [sys.executable, "-m", "client", "--quiet", "--timeout", str(timeout),
               "--server", f"{HOST}:{port}", "--name", name, *args]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=home, env=env(), stdin=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"the client exited with {code}: {' '.join(command[3:])}")
    return seconds, usage.ru_maxrss / 1024  # ru_maxrss is KiB on Linux


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's soft descriptor limit towards ``wanted``; return it.

    Children inherit it (the server started by :func:`start_server` too).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:  # root may raise the hard limit too
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError):
            wanted = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return wanted


def make_file(path: Path, size: int) -> None:
    """A file of ``size`` incompressible bytes."""
    pattern = os.urandom(min(size, PATTERN_SIZE)) or b""
    with path.open("wb") as handle:
        left = size
        while left:
            left -= handle.write(pattern[: min(left, len(pattern))])


def vm_hwm_kib(pid: int) -> int:
    """Peak resident set size (VmHWM) of a live process, in KiB; 0 if gone."""
    return _status_kib(pid, "VmHWM:")


def vm_rss_kib(pid: int) -> int:
    """Current resident set size (VmRSS) of a live process, in KiB; 0 if gone."""
    return _status_kib(pid, "VmRSS:")


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


#: Writing this to /proc/PID/clear_refs resets the process's VmHWM.
_RESET_PEAK = b"5"


def reset_peak_rss(pid: int) -> None:
    """Reset a live process's VmHWM to its current RSS (the peak of what follows)."""
    Path(f"/proc/{pid}/clear_refs").write_bytes(_RESET_PEAK)


def context_switches(pid: int) -> int:
    """Voluntary and involuntary context switches of a live process's threads so far.

    Summed over /proc/PID/task/*/status: a thread that ended is not counted
    (the server's blob port worker lives as long as the server). 0 if gone.
    """
    total = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0
    for task in tasks:
        try:
            lines = (task / "status").read_text().splitlines()
        except OSError:
            continue  # it ended meanwhile
        total += sum(int(line.split()[1]) for line in lines
                     if line.startswith(("voluntary_ctxt_switches:",
                                         "nonvoluntary_ctxt_switches:")))
    return total


def cpu_seconds(pid: int, *, reaped_children: bool = False) -> float:
    """User + system CPU time a live process has used so far.

    With ``reaped_children``, add that of the children it has waited for
    (an sshd's sessions, say).
    """
    fields = _stat_fields(pid)
    # utime, stime, cutime, cstime are fields 14 to 17 of stat; 12 to 15 after the ")".
    used = int(fields[11]) + int(fields[12])
    if reaped_children:
        used += int(fields[13]) + int(fields[14])
    return used / _CLOCK_TICKS


def system_seconds(pid: int) -> float:
    """The kernel-mode part (stime) of a live process's CPU time so far."""
    return int(_stat_fields(pid)[12]) / _CLOCK_TICKS


def _stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name (which may hold spaces)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def median(values: Sequence[float]) -> float:
    """The median (NaN for no values)."""
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (fraction in 0..1) of values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


def checkout_argument(text: str) -> Path:
    """An ``argparse`` type: another checkout of the project (its server is run), resolved.

    Raises:
        argparse.ArgumentTypeError: ``text`` holds no ``server`` package.
    """
    path = Path(text).resolve()
    if not (path / "server" / "__main__.py").is_file():
        raise argparse.ArgumentTypeError(
            f"{text}: not a checkout of the project (no server/__main__.py);"
            " make one with `git worktree add DIR COMMIT`")
    return path


def add_compare_with(parser: argparse.ArgumentParser, what: str) -> None:
    """Declare ``--compare-with CHECKOUT`` (:func:`checkout_argument`); ``what``: what it adds."""
    parser.add_argument("--compare-with", metavar="CHECKOUT", type=checkout_argument,
                        help=f"{what}, with the server of another checkout of the project (a"
                        " `git worktree add` of an earlier commit: before and after a change)")


#: A cost ratio (this ÷ the other, lower is better) at most this far above 1 is within noise
#: whatever the runs say (:func:`compare`).
NOISE_RATIO = 1.03


@dataclass
class Compared:
    """One figure of two servers measured side by side: medians, ratio, verdict."""

    name: str
    this: float
    other: float
    #: this ÷ other of the medians.
    ratio: float
    verdict: str

    @property
    def within_noise(self) -> bool:
        """Not worse than the other beyond noise (better counts too)."""
        return self.verdict != WORSE


WORSE = "worse"
BETTER = "better"
WITHIN_NOISE = "within noise"


def compare(name: str, this: Sequence[float], other: Sequence[float],
            higher_is_better: bool = False) -> Compared:
    """Medians of one figure of two servers, run ``i`` of each taken side by side, and a verdict.

    The runs' spread is that of the paired ratios ``this[i] ÷ other[i]`` (two runs taken
    one after the other share the machine's load of the moment). Turned into a cost
    (lower is better: MB/s is inverted), this tree is ``worse`` when the medians' cost
    ratio is above :data:`NOISE_RATIO` and every pair agrees (each paired cost ratio above
    1: with 5 runs, a chance of 1 in 32 if the trees were the same), ``better`` likewise
    the other way, and else ``within noise``.
    """
    ratio = median(this) / median(other) if median(other) else float("nan")
    pairs = [a / b for a, b in zip(this, other) if b]
    costs = [1 / p for p in pairs if p] if higher_is_better else pairs
    cost = 1 / ratio if higher_is_better and ratio else ratio
    verdict = WITHIN_NOISE
    if costs and cost > NOISE_RATIO and min(costs) > 1:
        verdict = WORSE
    elif costs and cost < 1 / NOISE_RATIO and max(costs) < 1:
        verdict = BETTER
    return Compared(name, median(this), median(other), ratio, verdict)


@dataclass
class Server:
    """A running ``python -m server`` in its own data folder."""

    process: subprocess.Popen
    port: int
    data_dir: Path
    log_path: Path

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.process.pid

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens."""
        return HOST, self.port

    def stop(self) -> int:
        """SIGTERM, wait, return the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(STOP_TIMEOUT)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


#: A load benchmark is many clients on one address: lift the per-address
#: limits that protect a real server from one address, its log budget
#: included (benchmarks count lines of the log; flags passed later win).
LOAD_FLAGS = (
    "--max-connections-per-address", "0", "--registrations-per-minute", "0",
    "--log-lines-per-address", "0",
    "--requests-per-address-per-round", "0", "--durable-files-per-address-per-round", "0",
    "--max-client-share-per-address", "1",
)


#: ``python -c`` this, the statistics' path, then the server's arguments: ``python -m
#: server`` under cProfile, timed by the process's CPU time.
_PROFILED_SERVER = """
import cProfile, runpy, sys, time
path = sys.argv.pop(1)
profile = cProfile.Profile(time.process_time)
try:
    profile.runcall(runpy.run_module, "server", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
finally:
    profile.dump_stats(path)
"""


def start_server(data_dir: Path, *flags: str, log_level: str = "INFO",
                 profile: Path | None = None, checkout: Path = REPO) -> Server:
    """Start the real server on a free port of 127.0.0.1; wait until it accepts.

    Its log goes to a file beside ``data_dir`` (the default INFO level, as
    deployed: one line per connection and request). With ``profile``, it runs
    under cProfile timed by CPU time (not wall time: waits on the database or
    the machine's other processes count nothing), which writes its statistics
    there when the server stops (``python -m pstats``; the server's CPU figures
    then include the profiler's). ``checkout``: the server of another checkout
    of the project (a worktree of an earlier commit, to compare with).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = data_dir.parent / f"{data_dir.name}-server.log"
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable,
             *(("-c", _PROFILED_SERVER, str(profile)) if profile else ("-m", "server")),
             "--host", HOST, "--port", str(port),
             "--data-dir", str(data_dir), "--log-level", log_level, *LOAD_FLAGS, *flags],
            cwd=data_dir, env=env(checkout), stdin=subprocess.DEVNULL,
            stdout=log_file, stderr=subprocess.STDOUT,
        )
    server = Server(process, port, data_dir, log_path)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"the server exited with {process.returncode}:\n{log_path.read_text()}"
            )
        try:
            socket.create_connection(server.address, 1).close()
            return server
        except OSError:
            time.sleep(POLL_INTERVAL)
    server.stop()
    raise RuntimeError("the server did not start listening")


@dataclass
class Check:
    """One target: what it is, the measured figure, and whether it holds."""

    name: str
    measured: str
    ok: bool
    #: The test that judges this target instead, when the benchmark does not measure it
    #: (its row then says so, and it counts neither way in the exit status).
    judged_by: str = ""
    #: The other processes' share during this target's own measures, when they were
    #: tallied apart (:class:`NoiseTally`): it decides this row's verdict instead of the
    #: whole run's.
    noise: NoiseTally | None = None

    def verdict(self, judged: bool) -> str:
        """Its verdict column: met, MISSED, where it is judged, or (on a noisy machine)
        what it would be, marked as no verdict."""
        if self.judged_by:
            return f"see {self.judged_by}"
        found = "met" if self.ok else "MISSED"
        return found if judged else f"noisy: no verdict (would be {found})"


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain fixed-width table."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(title)
    for index, row in enumerate(cells):
        print("  ".join(
            cell.ljust(width) if col == 0 else cell.rjust(width)
            for col, (cell, width) in enumerate(zip(row, widths))
        ))
        if index == 0:
            print("  ".join("-" * width for width in widths))


def report(checks: Sequence[Check], quiet: Quietness | None = None) -> int:
    """Print every target and its verdict; return the exit status.

    A row is judged unless the machine was found busy during its measures
    (its own :attr:`Check.noise`, else ``quiet``, the whole run's): then it
    says "noisy: no verdict" instead, with what it would be. Rows with a
    tally of their own show its share. The status: 1 if a judged target is
    missed, else 2 (``NOISY_EXIT``) if a row was not judged, else 0: figures
    taken beside other work are printed, but not judged.
    """
    print()
    if quiet is not None:
        print(quiet.summary())
    apart = any(c.noise is not None for c in checks)
    rows, missed, unjudged = [], False, False
    for check in checks:
        noise: Quietness | NoiseTally | None = check.noise or quiet
        judged = noise is None or noise.is_quiet()
        if not check.judged_by:
            missed |= judged and not check.ok
            unjudged |= not judged
        row = [check.name, check.measured, check.verdict(judged)]
        if apart:
            row.append(f"{noise.others_share:.0%}" if noise is not None else "")
        rows.append(row)
    header = ["target", "measured", "verdict"] + (["others' share"] if apart else [])
    print_table("targets", header, rows)
    if missed:
        return 1
    return NOISY_EXIT if unjudged else 0


#: The share of all cores that other processes may use before no verdict is given.
NOISE_LIMIT = 0.10
#: The exit status of a benchmark whose run was too noisy to judge.
NOISY_EXIT = 2
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


#: The kernel's thread parent: its children are kernel threads (writeback,
#: softirq...), which mostly do this benchmark's own disk and loopback work.
_KTHREADD = 2


def _processes() -> dict[int, tuple[int, float]]:
    """Every process: pid → (parent pid, CPU seconds with its reaped children)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it ended meanwhile
        ticks = sum(int(field) for field in fields[11:15])  # utime stime cutime cstime
        found[int(entry.name)] = (int(fields[1]), ticks / _CLOCK_TICKS)
    return found


def _tree(processes: dict[int, tuple[int, float]]) -> set[int]:
    """This benchmark's process tree: itself and its descendants."""
    ours, frontier = {os.getpid()}, {os.getpid()}
    while frontier:
        frontier = {pid for pid, (parent, _) in processes.items() if parent in frontier} - ours
        ours |= frontier
    return ours


def _others_seconds(processes: dict[int, tuple[int, float]]) -> dict[int, float]:
    """The CPU seconds of each user process outside this benchmark's tree.

    A process's reaped children count in its own figure, so short-lived
    processes of others (a test suite's servers, say) are seen too.
    """
    ours = _tree(processes)
    kernel = {_KTHREADD} | {pid for pid, (parent, _) in processes.items() if parent == _KTHREADD}
    return {pid: seconds for pid, (_, seconds) in processes.items()
            if pid not in ours and pid not in kernel}


def _tree_seconds(processes: dict[int, tuple[int, float]]) -> float:
    """CPU seconds of this benchmark's tree, with what it reaped."""
    return sum(processes[pid][1] for pid in _tree(processes))


def _busy_seconds() -> float:
    """CPU seconds the whole machine was busy so far (/proc/stat, first line)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(f) for f in fields[:7])
    return (user + nice + system + irq + softirq) / _CLOCK_TICKS


#: /proc/net/tcp's code of a socket in TIME_WAIT, and how long Linux keeps one.
_TIME_WAIT = "06"
TIME_WAIT_SECONDS = 60.0
#: Below this many sockets in TIME_WAIT, a run starts (see :func:`settle`).
SETTLED_TIME_WAITS = 100


def time_wait_sockets(ports: Collection[int] | None = None) -> int:
    """The machine's TCP sockets in TIME_WAIT (IPv4 and IPv6); with ``ports``, only those
    with one of them at either end."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != _TIME_WAIT:
                continue
            if ports is None or _port(fields[1]) in ports or _port(fields[2]) in ports:
                count += 1
    return count


def _port(address: str) -> int:
    """The port of /proc/net/tcp's ``HEXADDRESS:HEXPORT``."""
    return int(address.rsplit(":", 1)[1], 16)


def settle(ports: Collection[int] | None = None) -> float:
    """Wait until earlier runs' connections have left TIME_WAIT; the seconds waited.

    A run of N sessions leaves N of them for a minute, and thousands make the
    kernel's share of every later session grow, run after run (seen here:
    1.9 → 3.2 ms of server CPU per session over four runs in a row, 1.8 → 2.1
    with a minute between them, against one server): each run starts from a
    settled table. With ``ports`` (the servers' of the next run), only the
    connections to them count: the machine's others (other programs', or
    another server's of the benchmark) are not waited for.
    """
    started = time.monotonic()
    deadline = started + TIME_WAIT_SECONDS + POLL_INTERVAL * 10
    while time_wait_sockets(ports) >= SETTLED_TIME_WAITS and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL * 10)
    return time.monotonic() - started


class Quietness:
    """How much of the machine other processes used while a benchmark ran.

    Other processes' CPU: that of every user process outside this benchmark's
    own tree (itself, its clients, the server, sshd...), read from /proc at
    the start and at the end, with what each reaped meanwhile, and at most
    the machine's busy time less this tree's. Their share of
    all cores decides whether a verdict is given (``NOISE_LIMIT``)::

        with Quietness() as quiet:
            ...                          # the measured runs
        return report(checks, quiet)
    """

    def __enter__(self) -> Quietness:
        self.cores = os.cpu_count() or 1
        self._started = time.perf_counter()
        processes = _processes()
        self._others = _others_seconds(processes)
        self._busy, self._ours = _busy_seconds(), _tree_seconds(processes)
        self.others_share = 0.0
        #: Core-seconds the machine had while measured (wall time × cores).
        self.capacity = 0.0
        self.load_average = os.getloadavg()
        return self

    def __exit__(self, *exc_info) -> None:
        self.sample()

    def sample(self) -> None:
        """Take the figures now (call before stopping a server whose CPU is ours)."""
        wall = time.perf_counter() - self._started
        processes = _processes()
        others = sum(max(0.0, seconds - self._others.get(pid, 0.0))
                     for pid, seconds in _others_seconds(processes).items())
        # At most the machine's busy time less this tree's: a child another
        # process reaps now may have run before the runs began.
        busy = (_busy_seconds() - self._busy) - (_tree_seconds(processes) - self._ours)
        others = min(others, max(0.0, busy))
        self.capacity = wall * self.cores
        self.others_share = others / self.capacity if wall > 0 else 0.0
        self.load_average = os.getloadavg()

    def is_quiet(self) -> bool:
        return self.others_share <= NOISE_LIMIT

    def summary(self) -> str:
        one, five, fifteen = self.load_average
        return (f"machine: {self.cores} cores, load average {one:.2f} {five:.2f} {fifteen:.2f}; "
                f"other processes used {self.others_share:.0%} of the cores during the runs "
                f"(limit for a verdict: {NOISE_LIMIT:.0%})")


class NoiseTally:
    """The other processes' share of the cores during one measure's windows only.

    A benchmark that runs several measures in turn tallies each apart, so
    that a burst of other work during one measure takes that measure's
    verdict, not every one's (:attr:`Check.noise`)::

        tally = NoiseTally()
        for run in runs:
            with tally.window():
                ...                      # this measure's run
        Check(..., noise=tally)

    The share is the others' CPU seconds over the windows' core-seconds,
    all windows together.
    """

    def __init__(self) -> None:
        self._others = 0.0
        self._capacity = 0.0

    @contextmanager
    def window(self) -> Iterator[None]:
        """Count the others' CPU while the block runs."""
        with Quietness() as quiet:
            yield
        self.add(quiet.others_share * quiet.capacity, quiet.capacity)

    def add(self, others_seconds: float, capacity: float) -> None:
        """Count one window: the others' CPU seconds in it, and its core-seconds."""
        self._others += others_seconds
        self._capacity += capacity

    @property
    def others_share(self) -> float:
        return self._others / self._capacity if self._capacity > 0 else 0.0

    def is_quiet(self) -> bool:
        return self.others_share <= NOISE_LIMIT


class RawClient:
    """A blocking connection speaking through ``protocol.ClientConnection``."""

    def __init__(self, address: tuple[str, int], timeout: float = 60.0,
                 source: str | None = None) -> None:
        """``source``: the local address to connect from (another 127.x.y.z: another peer)."""
        from protocol import ClientConnection

        self.sock = socket.create_connection(
            address, timeout=timeout, source_address=(source, 0) if source else None
        )
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = ClientConnection()

    def send(self, request) -> None:
        """Send one request."""
        self.sock.sendall(self.conn.send(request))

    def receive(self):
        """The next response event (ConnectionClosed at EOF)."""
        from protocol import NEED_DATA

        while True:
            event = self.conn.next_event()
            if event is not NEED_DATA:
                return event
            self.conn.receive_data(self.sock.recv(65536))

    def request(self, request):
        """Send a request and return its response."""
        self.send(request)
        return self.receive()

    def register(self, name: str, private_key) -> tuple[bytes, bytes]:
        """825 and 826 with a ready key pair; return (client id, AES key)."""
        from protocol import PublicKeyReceived, Register, Registered, SendPublicKey, crypto

        registered = self.request(Register(client_id=bytes(16), name=name))
        if not isinstance(registered, Registered):
            raise RuntimeError(f"825 answered {registered!r}")
        keyed = self.request(SendPublicKey(
            client_id=registered.client_id, name=name,
            public_key=crypto.export_public_key(private_key)))
        if not isinstance(keyed, PublicKeyReceived):
            raise RuntimeError(f"826 answered {keyed!r}")
        return registered.client_id, crypto.decrypt_aes_key(private_key, keyed.encrypted_aes_key)

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()
