"""Running child programs: input of any size, time limits, group kills, and leftovers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from suprsync.procs import ProcGroup, run

BIG = 50 << 20


def big_input(size: int = BIG) -> bytes:
    """Bytes that are not all alike, so that a truncation or a reordering shows."""
    block = bytes(range(256)) * 4096
    return (block * (size // len(block) + 1))[:size]


# ------------------------------------------------------------ input of any size


@pytest.mark.parametrize("timeout", [None, 60.0], ids=["no-limit", "limit"])
def test_large_input_reaches_cat_completely(timeout: float | None) -> None:
    data = big_input()
    result = run(["cat"], input=data, timeout=timeout)
    assert result.ok, result
    assert len(result.stdout) == len(data)
    assert result.stdout == data


@pytest.mark.parametrize("timeout", [None, 60.0], ids=["no-limit", "limit"])
def test_slow_reader_gets_all_input_and_end_of_file(timeout: float | None) -> None:
    # Reads nothing for 1 s: far more than one slice of input must wait in the pipe.
    result = run(["sh", "-c", "sleep 1; wc -c"], input=big_input(), timeout=timeout)
    assert result.ok, result
    assert int(result.stdout) == BIG


@pytest.mark.parametrize("timeout", [None, 60.0], ids=["no-limit", "limit"])
def test_xargs_gets_every_name_of_a_long_list(timeout: float | None) -> None:
    names = [f"name-{i:06d}-{'x' * 40}" for i in range(200_000)]
    data = b"".join(n.encode() + b"\0" for n in names)
    assert len(data) > 8 << 20
    result = run(["xargs", "-0", "-r", "printf", "%s\\n"], input=data, timeout=timeout)
    assert result.ok, result.stderr_tail()
    assert result.stdout.decode().split("\n")[:-1] == names


def test_empty_input_closes_stdin_at_once() -> None:
    result = run(["wc", "-c"], input=b"", timeout=10)
    assert result.ok and int(result.stdout) == 0


def test_reader_that_stops_reading_early_is_not_an_error() -> None:
    # head exits after one line; the rest of the input meets a closed pipe.
    result = run(["head", "-c", "10"], input=big_input(), timeout=30)
    assert result.returncode == 0 and not result.timed_out
    assert result.stdout == big_input(10)


def test_time_limit_kills_a_program_that_never_reads_its_input() -> None:
    start = time.monotonic()
    result = run(["sh", "-c", "sleep 60"], input=big_input(), timeout=1.0)
    assert result.timed_out and not result.ok
    assert time.monotonic() - start < 5
    assert result.returncode == -signal.SIGKILL


def test_time_limit_kills_the_whole_process_group() -> None:
    # The shell starts a background sleep that would outlive it; both must die.
    result = run(["sh", "-c", "sleep 60 & echo $!; wait"], input=big_input(1 << 20),
                 timeout=1.0)
    assert result.timed_out
    pid = int(result.stdout.split()[0])
    assert not _alive(pid), f"grandchild {pid} outlived the time limit"


def test_program_ending_while_another_holds_its_pipes_is_not_waited_for() -> None:
    # A grandchild in another process group keeps stdout open, as an ssh
    # connection master does for its clients; the program itself exits at once.
    script = "setsid sleep 30 & echo $!"
    start = time.monotonic()
    result = run(["sh", "-c", script], input=big_input(1 << 20), timeout=20)
    holder = int(result.stdout.split()[0])
    try:
        assert time.monotonic() - start < 5
        assert result.returncode == 0 and not result.timed_out
    finally:
        os.kill(holder, signal.SIGKILL)


def test_abort_ends_a_run_that_is_still_being_fed() -> None:
    group = ProcGroup()
    outcome: dict[str, object] = {}

    def target() -> None:
        outcome["result"] = run(["sh", "-c", "sleep 60"], input=big_input(), group=group)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    time.sleep(0.5)
    group.kill_all()
    thread.join(10)
    assert not thread.is_alive(), "run() did not return after kill_all()"
    result = outcome["result"]
    assert result.returncode == -signal.SIGKILL  # type: ignore[attr-defined]


def test_missing_program_raises_oserror() -> None:
    with pytest.raises(OSError):
        run(["/nonexistent/suprsync-test-program"], input=b"x")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != b"Z"


# ------------------------------------------------------------ a parent that dies


def test_child_dies_with_a_parent_killed_by_sigkill(tmp_path) -> None:
    """A process running procs.run is SIGKILLed; its child goes with it."""
    pid_file = tmp_path / "child.pid"
    script = (
        "import sys\n"
        "from suprsync.procs import run\n"
        f"run(['sh', '-c', 'echo $$ > {pid_file}; exec sleep 60'], input=b'x' * (1 << 20))\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], env={**os.environ},
                              stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not (pid_file.exists() and pid_file.read_text().strip()):
        assert parent.poll() is None, "parent ended early"
        assert time.monotonic() < deadline, "child never started"
        time.sleep(0.02)
    child = int(pid_file.read_text())
    assert _alive(child)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 5
    while _alive(child):
        assert time.monotonic() < deadline, f"child {child} outlived its SIGKILLed parent"
        time.sleep(0.02)
