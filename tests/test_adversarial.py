"""A seeded, randomized adversarial test: hostile catalog rows and local trees, agents
run as processes (some SIGKILLed at a random moment) and in process, and the integrity
invariants (tests/invariants.py) checked after every step.

Each round builds, in its own directory, a catalog, a local tree, a secret directory
outside the tree and two archives' destination dirs. Rows are registered through
``suprsync add``, ``SupRsyncFilesManager.add_file`` and plain SQL, in a random mixture
of shape families (``SHAPES``); the tree is changed between steps (``MUTATIONS``).

Environment:

- ``SUPRSYNC_ADV_SEED``: the master seed (random when unset; printed);
- ``SUPRSYNC_ADV_ROUND_SEED``: run just the round with this seed (printed per failure);
- ``SUPRSYNC_ADV_SECONDS``: duration of the long variant (``-m adversarial_long``);
- ``SUPRSYNC_ADV_SHAPES``: comma list of shape and mutation families to use (normal
  files are always there as background).

About one round in five (``SSH_SHARE``) reaches its destinations over the test sshd;
the others copy to local dirs. A crash of an agent (a traceback) is collected too.

Every violation found is collected with its round seed, step and the shapes of the
rows it names; the test fails at the end listing one example of each distinct kind.
"""

from __future__ import annotations

import logging
import os
import random
import re
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import SUPRSYNC, SshServer
from helpers import md5, ssh_config
from invariants import check_every_destination, check_invariants, snapshot_fence

from suprsync import SupRsyncFilesManager
from suprsync.agent import Agent, AgentConfig
from suprsync.catalog.settings import CATALOG_FILE_SUFFIXES, FILES_TABLE

ARCHIVES = ("arch", "arch2")
DEFAULT_SECONDS = 45.0
#: Share of the rounds whose agents reach their destinations over the test sshd.
SSH_SHARE = 0.2
#: Share of rounds whose archives also go to a second destination (--destination-id).
MORE_SHARE = 0.35
#: How long one agent process may run before the test gives up on it.
PROCESS_TIMEOUT = 90.0

_ENV_SEED = os.environ.get("SUPRSYNC_ADV_SEED")
SEED = int(_ENV_SEED) if _ENV_SEED else random.SystemRandom().randrange(2**32)

LOOSE_SCHEMA = (
    f"CREATE TABLE {FILES_TABLE} (id INTEGER PRIMARY KEY, local_path VARCHAR, "
    "local_md5sum VARCHAR, archive_name VARCHAR, remote_path VARCHAR, timestamp FLOAT, "
    "remote_md5sum VARCHAR, copied FLOAT, removed FLOAT, failed_copy_attempts INTEGER, "
    'deletable BOOLEAN, "ignore" BOOLEAN)'
)
HOSTILE_NAMES = ["-", "-x", "--", "...", ".-.", "new\nline", "back\\slash", "with space",
                 " lead", "trail ", "-rf", "*", "?", "#hash", ";semi", "$(touch x)", "'q'",
                 "é"]


# ------------------------------------------------------------------ the world of a round


@dataclass
class Failure:
    kind: str
    shapes: tuple[str, ...]
    round_seed: int
    step: int
    line: str
    rows: list[str]


class World:
    """One round: catalog, local tree, secret dir, destinations, and what was done."""

    def __init__(self, base: Path, rng: random.Random, families: set[str] | None,
                 ssh: dict | None) -> None:
        self.base = base
        self.ssh = ssh  # AgentConfig fields that reach the test sshd, or None: local
        self.rng = rng
        self.families = families
        self.local = base / "local"
        self.secret = base / "secret"
        self.db = base / "catalog.db"
        self.file_root = base / "srf"
        self.dests = {a: base / "remote" / a for a in ARCHIVES}
        # Some rounds ship each archive to a second destination too (a local dir).
        self.more = ({a: base / "remote-b" / a for a in ARCHIVES}
                     if rng.random() < MORE_SHARE else {})
        for d in (self.local, self.secret, *self.dests.values(), *self.more.values()):
            d.mkdir(parents=True)
        (self.secret / "keys").write_bytes(b"secret keys\n" * 10)
        self.loose = rng.random() < 0.35
        if self.loose:  # a catalog another program created without NOT NULL constraints
            conn = sqlite3.connect(self.db)
            conn.execute(LOOSE_SCHEMA)
            conn.close()
        self.manager = SupRsyncFilesManager(str(self.db))
        self.absent_ok: set[str] = set()
        self.shape_of: dict[int, str] = {}
        self.notes: dict[int, str] = {}
        self.covered: Counter[str] = Counter()
        self.cli_budget = 2
        self.n = 0
        self.agents: dict[str, Agent] = {}
        self.log: list[str] = []
        self.files: list[str] = []
        #: Files the producer wrote through a folder swapped for a link out of the tree:
        #: its data, which it registers and which may be shipped and deleted.
        self.written_outside: set[Path] = set()
        self.top_names: set[str] = set()
        self.secret_made: dict[str, str] = {}  # secret path -> the mutation that made it
        self.crashes: list[str] = []

    def close(self) -> None:
        for agent in self.agents.values():
            agent.close()
            agent.manager.close()
        self.manager.close()

    # -- files

    def fresh(self) -> int:
        self.n += 1
        return self.n

    def timecode(self) -> int:
        return self.rng.choice([16750, 16751, 16752, 17100])

    def content(self) -> bytes:
        size = self.rng.choice([0, 1, 17, 300, 4096, 20000])
        return self.rng.randbytes(size)

    def write(self, rel: str, data: bytes | None = None) -> str:
        path = self.local / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.content() if data is None else data)
        old = time.time() - 3600
        os.utime(path, (old, old))
        self.files.append(str(path))
        real = path.resolve()
        if not real.is_relative_to(self.local.resolve()):
            self.written_outside.add(real)
        return str(path)

    def in_tree(self, path: str) -> bool:
        """True when path is a regular file reached through no symlink below the tree."""
        p = Path(path)
        try:
            p.relative_to(self.local)
        except ValueError:
            return False
        chain = [p, *p.parents]
        for q in chain:
            if q == self.local:
                break
            if q.is_symlink():
                return False
        return p.is_file()

    # -- registration

    def register(self, shape: str, local: str | bytes, remote: object, archive: object,
                 *, how: str | None = None, data: bytes | None = None,
                 deletable: bool = True, **sql_values: object) -> int | None:
        """Register one row by CLI, API or SQL; return its id (None when refused)."""
        self.covered[shape] += 1
        if how is None:
            plain = isinstance(local, str) and isinstance(remote, str) and not sql_values
            choices = ["sql"] + (["api", "api"] if plain else [])
            if plain and self.cli_budget > 0 and self.rng.random() < 0.25:
                choices = ["cli"]
            how = self.rng.choice(choices)
        file_id: int | None = None
        what = f"[{shape}] via {how}: {local!r} -> {archive!r}:{remote!r} {sql_values or ''}"
        try:
            if how == "cli":
                self.cli_budget -= 1
                args = ["add", "--archive", str(archive), "--db", str(self.db)]
                if not deletable:
                    args.append("--keep-local")
                out = subprocess.run([SUPRSYNC, *args, "--", str(local), str(remote)],
                                     capture_output=True, text=True, timeout=60,
                                     stdin=subprocess.DEVNULL)
                m = re.search(r"\(archive .*, id (\d+)\)$", out.stdout.strip())
                if out.returncode == 0 and m:
                    file_id = int(m.group(1))
                else:
                    what += f" refused: {out.stderr.strip()[-200:]}"
                    if "Traceback" in out.stderr:
                        self.crashes.append(f"suprsync add {what}:\n{out.stderr[-1500:]}")
            elif how == "api":
                try:
                    row = self.manager.add_file(local, remote, archive, deletable=deletable,
                                                timestamp=time.time() - self.rng.uniform(1, 99))
                    file_id = int(row.id)
                except (ValueError, OSError) as exc:
                    what += f" refused: {exc}"
            else:
                if data is None and isinstance(local, str) and os.path.isfile(local):
                    data = Path(local).read_bytes()
                values: dict[str, object] = {
                    "local_path": local,
                    "local_md5sum": md5(data) if data is not None else md5(b"never"),
                    "archive_name": archive, "remote_path": remote,
                    "timestamp": time.time() - self.rng.uniform(1, 99),
                    "deletable": deletable, "failed_copy_attempts": 0,
                }
                values.update(sql_values)
                file_id = self.sql_insert(values)
                if file_id is None:
                    what += " refused by the schema"
        finally:
            if file_id is not None:
                self.shape_of[file_id] = shape
                self.notes[file_id] = f"id {file_id} {what}"
            self.log.append(what if file_id is None else f"id {file_id} {what}")
        return file_id

    def sql_insert(self, values: dict[str, object]) -> int | None:
        names = list(values)
        marks = []
        params = []
        for n in names:
            v = values[n]
            if isinstance(v, TextBytes):  # bytes stored as TEXT: not valid UTF-8 text
                marks.append("CAST(? AS TEXT)")
                params.append(v.raw)
            else:
                marks.append("?")
                params.append(v)
        cols = ", ".join(f'"{n}"' for n in names)
        conn = sqlite3.connect(self.db, timeout=60)
        try:
            cur = conn.execute(f"INSERT INTO {FILES_TABLE} ({cols}) VALUES ({', '.join(marks)})",
                               params)
            conn.commit()
            return int(cur.lastrowid)
        except sqlite3.IntegrityError:
            return None
        finally:
            conn.close()

    def describe(self, ids: list[int]) -> list[str]:
        return [self.notes.get(i, f"id {i} (written by an agent)") for i in ids]


@dataclass(frozen=True)
class TextBytes:
    """A value to store as TEXT holding these bytes (invalid UTF-8 when they are)."""

    raw: bytes


# ------------------------------------------------------------------ shape families


def shape_normal(w: World) -> None:
    for _ in range(w.rng.randint(1, 3)):
        n = w.fresh()
        tc = w.timecode()
        local = w.write(f"{tc}/sub/n{n}.g3")
        w.register("normal", local, f"{tc}/sub/n{n}.g3", w.rng.choice(ARCHIVES))


def shape_empty(w: World) -> None:
    n = w.fresh()
    local = w.write(f"e/empty{n}", b"")
    w.register("empty", local, f"{w.timecode()}/empty{n}", w.rng.choice(ARCHIVES))


def shape_same_destination(w: World) -> None:
    n = w.fresh()
    tc = w.timecode()
    same = w.rng.random() < 0.5
    a_data = w.content()
    b_data = a_data if same else a_data + b"other"
    a = w.write(f"sd/a{n}", a_data)
    b = w.write(f"sd/b{n}", b_data)
    remote = f"{tc}/dup/d{n}"
    spelled = w.rng.choice([remote, f"{tc}//dup/d{n}", f"{tc}/./dup/d{n}", f"./{remote}"])
    archive = w.rng.choice(ARCHIVES)
    shape = "same_destination_" + ("same_md5" if same else "different_md5")
    w.register(shape, a, remote, archive)
    w.register(shape, b, spelled, archive)


def shape_parent_child(w: World) -> None:
    n = w.fresh()
    tc = w.timecode()
    parent = f"{tc}/pc{n}"
    rows = [(w.write(f"pc/p{n}"), parent), (w.write(f"pc/c{n}"), parent + "/child")]
    if w.rng.random() < 0.5:
        rows.reverse()
    archive = w.rng.choice(ARCHIVES)
    for local, remote in rows:
        w.register("parent_child", local, remote, archive)


def shape_one_file_many_rows(w: World) -> None:
    n = w.fresh()
    tc = w.timecode()
    local = w.write(f"multi/m{n}")
    if w.rng.random() < 0.5:
        w.register("one_file_two_archives", local, f"{tc}/m{n}", ARCHIVES[0])
        w.register("one_file_two_archives", local, f"{tc}/m{n}", ARCHIVES[1])
    else:
        archive = w.rng.choice(ARCHIVES)
        w.register("one_file_two_remote_paths", local, f"{tc}/m{n}", archive)
        w.register("one_file_two_remote_paths", local, f"{tc}/other/m{n}", archive)


def shape_hostile_names(w: World) -> None:
    name = w.rng.choice(HOSTILE_NAMES)
    n = w.fresh()
    local = w.write(f"h{n}/{name}")
    # A name is used at the top of the base dir once a round (two rows there would be
    # the same_destination shape).
    top = name not in w.top_names and w.rng.random() < 0.4
    w.top_names.add(name)
    remote = name if top else f"{w.timecode()}/h{n}/{name}"
    w.register("hostile_names", local, remote, w.rng.choice(ARCHIVES))


def shape_null_columns(w: World) -> None:
    n = w.fresh()
    tc = w.timecode()
    real = w.rng.random() < 0.6
    local = w.write(f"null/x{n}") if real else str(w.local / f"null/never{n}")
    if not real:
        w.absent_ok.add(local)
    values: dict[str, object] = {"remote_md5sum": None, "copied": None, "removed": None,
                                 "failed_copy_attempts": None, "deletable": None,
                                 "ignore": None}
    for col in w.rng.sample(["local_path", "local_md5sum", "archive_name", "remote_path",
                             "timestamp"], w.rng.randint(0, 2)):
        values[col] = None
    w.register("null_columns", local, f"{tc}/null/x{n}", w.rng.choice(ARCHIVES), how="sql",
               **values)


def shape_bad_utf8(w: World) -> None:
    n = w.fresh()
    tc = w.timecode()
    raw_name = b"bad\xff\xfe" + str(n).encode()
    local = w.write(os.fsdecode(b"u/" + raw_name))
    local_b = os.fsencode(local)
    store = (lambda b: TextBytes(b)) if w.rng.random() < 0.5 else (lambda b: b)
    if w.rng.random() < 0.5:
        # a valid remote path, a local path that is not UTF-8
        w.register("bad_utf8_local_path", store(local_b), f"{tc}/u/ok{n}", w.rng.choice(ARCHIVES),
                   how="sql", data=Path(local).read_bytes())
    else:
        ok = w.write(f"u/ok{n}")
        w.register("bad_utf8_remote_path", ok, store(f"{tc}/u/".encode() + raw_name),
                   w.rng.choice(ARCHIVES), how="sql")


def shape_text_numbers(w: World) -> None:
    n = w.fresh()
    tc = w.timecode()
    local = w.write(f"t/t{n}")
    values = {"timestamp": str(int(time.time()) - 50),
              "failed_copy_attempts": w.rng.choice(["0", "x", "1e3"]),
              "deletable": w.rng.choice(["1", "true", "yes", "0"]),
              "ignore": w.rng.choice(["0", "false", "no"])}
    w.register("text_numbers", local, f"{tc}/t/t{n}", w.rng.choice(ARCHIVES), how="sql",
               **values)


def shape_odd_timestamps(w: World) -> None:
    n = w.fresh()
    tc = w.timecode()
    local = w.write(f"ts/t{n}")
    ts = w.rng.choice([-1e9, -1.0, 0.0, 1e300, float("inf"), float("-inf"), float("nan"),
                       "NaN", "2024-01-01", 2**62])
    w.register("odd_timestamps", local, f"{tc}/ts/t{n}", w.rng.choice(ARCHIVES), how="sql",
               timestamp=ts)


def shape_flags(w: World) -> None:
    n = w.fresh()
    tc = w.timecode()
    local = w.write(f"fl/f{n}")
    if w.rng.random() < 0.5:
        w.register("ignored", local, f"{tc}/fl/f{n}", w.rng.choice(ARCHIVES), how="sql",
                   ignore=1)
        if w.rng.random() < 0.5:  # and a second, needed row of the same file
            w.register("ignored", local, f"{tc}/fl/g{n}", w.rng.choice(ARCHIVES))
    else:
        w.register("not_deletable", local, f"{tc}/fl/f{n}", w.rng.choice(ARCHIVES),
                   deletable=False)


def shape_bad_remote(w: World) -> None:
    n = w.fresh()
    local = w.write(f"br/b{n}")
    remote = w.rng.choice(["../escape", "/abs/x", "", "dir/", ".", "a/../../b",
                           f"{w.timecode()}/../../x", "a\x00b", "..", "./.."])
    w.register("bad_remote_path", local, remote, w.rng.choice(ARCHIVES), how="sql")


SHAPES: dict[str, Callable[[World], None]] = {
    "empty": shape_empty,
    "same_destination": shape_same_destination,
    "parent_child": shape_parent_child,
    "one_file_many_rows": shape_one_file_many_rows,
    "hostile_names": shape_hostile_names,
    "null_columns": shape_null_columns,
    "bad_utf8": shape_bad_utf8,
    "text_numbers": shape_text_numbers,
    "odd_timestamps": shape_odd_timestamps,
    "flags": shape_flags,
    "bad_remote": shape_bad_remote,
}


# ------------------------------------------------------------------ mutations of the tree


def tree_files(w: World) -> list[str]:
    """The files the round wrote that are still regular files reached through no symlink."""
    return [p for p in dict.fromkeys(w.files) if w.in_tree(p)]


def verified_paths(w: World) -> set[str]:
    conn = sqlite3.connect(w.db, timeout=60)
    conn.text_factory = bytes
    try:
        rows = conn.execute(f"SELECT local_path FROM {FILES_TABLE} WHERE remote_md5sum "
                            "IS NOT NULL AND remote_md5sum = local_md5sum").fetchall()
    finally:
        conn.close()
    return {os.fsdecode(r[0]) for r in rows if isinstance(r[0], bytes)}


def mutate_rewrite_after_verify(w: World) -> None:
    done = [p for p in tree_files(w) if p in verified_paths(w)]
    if not done and w.rng.random() < 0.5:
        # Verified files are deleted at once: keep one, to rewrite once it is verified.
        n = w.fresh()
        tc = w.timecode()
        local = w.write(f"{tc}/kept/k{n}")
        w.register("kept_for_rewrite", local, f"{tc}/kept/k{n}", w.rng.choice(ARCHIVES),
                   deletable=False)
        return
    candidates = done or tree_files(w)
    if not candidates:
        return
    path = Path(w.rng.choice(candidates))
    st = path.stat()
    how = w.rng.choice(["truncate", "rewrite", "grow"])
    data = path.read_bytes()
    new = {"truncate": data[: len(data) // 2], "rewrite": w.rng.randbytes(len(data) or 5),
           "grow": data + b"more"}[how]
    path.write_bytes(new)
    if w.rng.random() < 0.5:  # keep the old mtime: rot rather than a new version
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    w.covered["rewrite_after_verify" if done else "rewrite_before_verify"] += 1
    w.log.append(f"mutation: {how} {str(path)!r} (verified={bool(done)})")


def mutate_symlink_file(w: World) -> None:
    candidates = tree_files(w)
    if not candidates:
        return
    path = Path(w.rng.choice(candidates))
    target = w.secret / f"target{w.fresh()}"
    target.write_bytes(b"secret " + w.rng.randbytes(40))
    if w.rng.random() < 0.5:
        old = time.time() - 7200
        os.utime(target, (old, old))
    path.unlink()
    path.symlink_to(target)
    w.secret_made[str(target)] = "symlink_to_secret_file"
    w.covered["symlink_to_secret_file"] += 1
    w.log.append(f"mutation: {str(path)!r} -> symlink to {str(target)!r}")


def mutate_symlink_component(w: World) -> None:
    candidates = [p for p in tree_files(w) if Path(p).parent != w.local]
    if not candidates:
        return
    folder = Path(w.rng.choice(candidates)).parent
    secret_dir = w.secret / f"dir{w.fresh()}"
    secret_dir.mkdir()
    # The secret dir holds every name of the folder (other bytes), so no path the
    # catalog names disappears: the agent sees the same names through the link.
    for dirpath, _dirs, files in os.walk(folder):
        twin = secret_dir / Path(dirpath).relative_to(folder)
        twin.mkdir(parents=True, exist_ok=True)
        for name in files:
            (twin / name).write_bytes(b"secret " + w.rng.randbytes(30))
            if w.rng.random() < 0.5:
                old = time.time() - 7200
                os.utime(twin / name, (old, old))
    folder.rename(folder.with_name(folder.name + ".moved-away"))
    folder.symlink_to(secret_dir)
    w.secret_made[str(secret_dir) + "/"] = "symlink_path_component"
    w.covered["symlink_path_component"] += 1
    w.log.append(f"mutation: dir {str(folder)!r} -> symlink to {str(secret_dir)!r}")


def mutate_delete(w: World) -> None:
    candidates = tree_files(w)
    if not candidates:
        return
    path = w.rng.choice(candidates)
    os.remove(path)
    w.absent_ok.add(path)
    w.covered["deleted_by_user"] += 1
    w.log.append(f"mutation: removed {path!r} (absence expected)")


def mutate_take_back_newest(w: World) -> None:
    """Another program deletes the newest rows (not suprsync's own finalization files):
    sqlite gives their ids to the next registrations."""
    conn = sqlite3.connect(w.db, timeout=60)
    try:
        newest = conn.execute("SELECT id, CAST(remote_path AS BLOB) FROM supersync_v0 "
                              "ORDER BY id DESC LIMIT ?", (w.rng.randint(1, 3),)).fetchall()
        if not newest or any(b"/suprsync/" in bytes(r or b"") for _, r in newest):
            return
        low = min(i for i, _ in newest)
        conn.execute("DELETE FROM supersync_v0 WHERE id >= ?", (low,))
        conn.commit()
    finally:
        conn.close()
    w.covered["newest_rows_taken_back"] += 1
    w.log.append(f"mutation: rows from id {low} up deleted (sqlite gives their ids again)")
    register_some(w, w.rng.randint(1, 3))


def mutate_register_more(w: World) -> None:
    register_some(w, w.rng.randint(1, 3))


MUTATIONS: dict[str, Callable[[World], None]] = {
    "rewrite_after_verify": mutate_rewrite_after_verify,
    "symlink_file": mutate_symlink_file,
    "symlink_component": mutate_symlink_component,
    "delete_local": mutate_delete,
    "register_more": mutate_register_more,
    "take_back_newest": mutate_take_back_newest,
}


def register_some(w: World, count: int) -> None:
    allowed = [n for n in SHAPES if w.families is None or n in w.families]
    for _ in range(count):
        if allowed and w.rng.random() < 0.8:
            SHAPES[w.rng.choice(allowed)](w)
        else:
            shape_normal(w)


# ------------------------------------------------------------------ agents


def agent_argv(w: World, archive: str) -> list[str]:
    argv = [SUPRSYNC, "run", "--once", "--archive-name", archive,
            "--remote-basedir", str(w.dests[archive]), "--db-path", str(w.db),
            "--suprsync-file-root", str(w.file_root), "--delete-local-after", "0",
            "--instance-id", f"adv-{archive}", "--sleep-time", "1", "--cmd-timeout", "30",
            "--copy-timeout", "60"]
    if w.more:
        argv += ["--destination-id", f"b={w.more[archive]}"]
    if w.ssh:
        argv += ["--ssh-host", w.ssh["ssh_host"], "--ssh-key", w.ssh["ssh_key"],
                 "--ssh-port", str(w.ssh["ssh_port"]),
                 "--ssh-known-hosts", w.ssh["ssh_known_hosts"]]
    return argv


@dataclass
class StepResult:
    what: str
    crashes: list[str] = field(default_factory=list)
    kills: int = 0


def kill_group(p: subprocess.Popen) -> None:
    """SIGKILL a process started in its own session, with the children it started."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_processes(w: World, archives: list[str]) -> StepResult:
    """`suprsync run --once` for each archive at once; some are SIGKILLed at random."""
    procs = []
    for archive in archives:
        kill_at = w.rng.uniform(0.05, 2.5) if w.rng.random() < 0.4 else None
        p = subprocess.Popen(agent_argv(w, archive), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                             start_new_session=True)
        procs.append((archive, p, kill_at, time.monotonic()))
    result = StepResult("processes")
    for archive, p, kill_at, started in procs:
        result.what += f" {archive}"
        if kill_at is not None:
            try:
                p.wait(timeout=max(0.0, started + kill_at - time.monotonic()))
                result.what += " (ended before its SIGKILL)"
            except subprocess.TimeoutExpired:
                kill_group(p)  # the agent and its rsync children
                result.what += f" (SIGKILLed after {kill_at:.2f} s)"
                result.kills += 1
        try:
            _, err = p.communicate(timeout=PROCESS_TIMEOUT)
        except subprocess.TimeoutExpired:
            kill_group(p)
            _, err = p.communicate()
            result.crashes.append(f"agent process for {archive} hung > {PROCESS_TIMEOUT} s")
        text = err.decode("utf-8", "replace")
        if "Traceback" in text:
            result.crashes.append(f"traceback from the agent of {archive}:\n{text[-1500:]}")
    return result


def run_in_process(w: World, archive: str) -> StepResult:
    agent = w.agents.get(archive)
    if agent is None:
        config = AgentConfig(archive_name=archive, remote_basedir=str(w.dests[archive]),
                             db_path=str(w.db), suprsync_file_root=str(w.file_root),
                             sleep_time=0, delete_local_after=0, instance_id=f"adv-{archive}",
                             cmd_timeout=30, copy_timeout=60, **(w.ssh or {}),
                             more_destinations=((("b", str(w.more[archive])),)
                                                if w.more else ()))
        agent = Agent(config, manager=SupRsyncFilesManager(str(w.db)))
        w.agents[archive] = agent
    result = StepResult(f"Agent.iterate() for {archive}")
    outcome: list[BaseException] = []
    # The agent survives an error no rule foresaw and logs its traceback: a crash here.
    unforeseen = UnforeseenErrors()
    logging.getLogger("suprsync").addHandler(unforeseen)

    def target() -> None:
        try:
            agent.iterate()
        except Exception as exc:  # reported as a crash, with the round's seed
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(PROCESS_TIMEOUT)
    logging.getLogger("suprsync").removeHandler(unforeseen)
    result.crashes += [f"Agent.iterate() for {archive} failed unexpectedly:\n{text}"
                       for text in unforeseen.texts]
    if thread.is_alive():
        result.crashes.append(f"Agent.iterate() for {archive} hung > {PROCESS_TIMEOUT} s")
        agent.stop()
        thread.join(30)
        w.agents.pop(archive)  # a stopped agent does no more work; the next step makes one
        agent.close()
    elif outcome:
        result.crashes.append(f"Agent.iterate() for {archive} raised {outcome[0]!r}")
    return result


class UnforeseenErrors(logging.Handler):
    """Collects the tracebacks the agent logs for errors no rule foresaw."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "failed unexpectedly" in record.getMessage():
            self.texts.append(self.format(record)[-1500:])


def agent_step(w: World) -> StepResult:
    r = w.rng.random()
    if r < 0.45:
        return run_processes(w, [w.rng.choice(ARCHIVES)])
    if r < 0.6:
        return run_processes(w, [w.rng.choice(ARCHIVES), w.rng.choice(ARCHIVES)])
    return run_in_process(w, w.rng.choice(ARCHIVES))


# ------------------------------------------------------------------ rounds


KINDS = (("LOST", "data lost"), ("reads verified", "false verification"),
         ("outside the base dirs", "written outside the base dirs"),
         ("finalization files", "two finalization files"))


def classify(w: World, message: str, round_seed: int, step: int) -> list[Failure]:
    failures = []
    for line in message.splitlines()[1:]:
        line = line.strip()
        if not line or line.startswith("..."):
            continue
        kind = next((k for frag, k in KINDS if frag in line), "other")
        ids = [int(i) for i in re.findall(r"file id (\d+)", line)]
        shapes = tuple(sorted({w.shape_of.get(i, "agent-written row") for i in ids}
                              | {m for p, m in w.secret_made.items() if p in line}))
        failures.append(Failure(kind, shapes or ("-",), round_seed, step, line,
                                w.describe(ids)))
    return failures


@dataclass
class Tally:
    rounds: int = 0
    steps: int = 0
    kills: int = 0
    rows: int = 0
    covered: Counter[str] = field(default_factory=Counter)
    failures: dict[tuple[str, tuple[str, ...]], list[Failure]] = field(default_factory=dict)
    crashes: list[str] = field(default_factory=list)
    normal_verified: int = 0
    normal_total: int = 0


def normal_progress(w: World) -> tuple[int, int]:
    """(verified, all) rows of the normal shape: how far the agents got past the poison."""
    ids = [i for i, shape in w.shape_of.items() if shape == "normal"]
    if not ids:
        return 0, 0
    conn = sqlite3.connect(w.db, timeout=60)
    try:
        marks = ",".join("?" * len(ids))
        done = conn.execute(f"SELECT count(*) FROM {FILES_TABLE} WHERE id IN ({marks}) AND "
                            "remote_md5sum IS NOT NULL AND remote_md5sum = local_md5sum",
                            ids).fetchone()[0]
    finally:
        conn.close()
    return int(done), len(ids)


def families_from_env() -> set[str] | None:
    raw = os.environ.get("SUPRSYNC_ADV_SHAPES")
    if not raw:
        return None
    names = {n.strip() for n in raw.split(",") if n.strip()}
    unknown = names - set(SHAPES) - set(MUTATIONS)
    assert not unknown, f"unknown shape families {sorted(unknown)}; known: " \
                        f"{sorted(SHAPES)} and mutations {sorted(MUTATIONS)}"
    return names


def play_round(base: Path, round_seed: int, tally: Tally, deadline: float,
               sshd: SshServer) -> None:
    rng = random.Random(round_seed)
    families = families_from_env()
    w = World(base, rng, families, ssh_config(sshd) if rng.random() < SSH_SHARE else None)
    try:
        register_some(w, rng.randint(4, 9))
        shape_normal(w)
        mutations = [n for n in MUTATIONS if families is None or n in families
                     or n == "register_more"]
        for step in range(1, rng.randint(3, 7) + 1):
            if step > 1:
                for _ in range(rng.randint(0, 2)):
                    MUTATIONS[rng.choice(mutations)](w)
            fence = snapshot_fence(w.base, [w.local, *w.dests.values(), *w.more.values(),
                                            w.file_root, *w.written_outside,
                                            *(Path(str(w.db) + s)
                                              for s in CATALOG_FILE_SUFFIXES)])
            result = agent_step(w)
            w.log.append(f"step {step}: {result.what}")
            tally.kills += result.kills
            for crash in result.crashes:
                tally.crashes.append(f"round seed {round_seed} step {step}: {crash}")
                print(f"\n--- crash, round seed {round_seed}, step {step}:\n{crash}\n"
                      "round log:\n  " + "\n  ".join(w.log))
            tally.steps += 1
            try:
                report = check_invariants(w.db, w.dests, file_root=w.file_root, fence=fence,
                                          local_roots=[w.local, *w.more.values()],
                                          absent_ok=w.absent_ok)
                tally.rows = max(tally.rows, report.rows)
                for archive, base in w.more.items():
                    check_every_destination(w.db, archive, w.dests[archive], {"b": base}, 2,
                                            absent_ok=w.absent_ok)
            except AssertionError as exc:
                for f in classify(w, str(exc), round_seed, step):
                    key = (f.kind, f.shapes)
                    tally.failures.setdefault(key, []).append(f)
                print(f"\n--- violation, round seed {round_seed}, step {step}:\n{exc}\n"
                      "round log:\n  " + "\n  ".join(w.log))
                break
            if time.monotonic() > deadline:
                break
    finally:
        done, total = normal_progress(w)
        tally.normal_verified += done
        tally.normal_total += total
        tally.covered.update(w.covered)
        tally.crashes.extend(f"round seed {round_seed}: {c}" for c in w.crashes)
        tally.covered["loose_schema_catalog" if w.loose else "agent_schema_catalog"] += 1
        tally.covered["round_over_ssh" if w.ssh else "round_local"] += 1
        tally.covered["round_two_destinations" if w.more else "round_one_destination"] += 1
        w.close()
    tally.rounds += 1


def replay_env(round_seed: int) -> str:
    """The environment that replays one round."""
    shapes = os.environ.get("SUPRSYNC_ADV_SHAPES")
    return f"SUPRSYNC_ADV_ROUND_SEED={round_seed}" + (
        f" SUPRSYNC_ADV_SHAPES={shapes}" if shapes else "")


def summary(tally: Tally) -> str:
    lines = [f"adversarial: master seed {SEED}: {tally.rounds} rounds, {tally.steps} steps "
             f"checked, {tally.kills} agent processes SIGKILLed"]
    lines.append(f"normal rows verified by the end of their round: {tally.normal_verified} "
                 f"of {tally.normal_total} (rounds end after 3-7 steps, some killed)")
    lines.append("shapes covered: " + ", ".join(f"{k} x{v}" for k, v in
                                                sorted(tally.covered.items())))
    for (kind, shapes), fails in sorted(tally.failures.items()):
        f = fails[0]
        rounds = sorted({x.round_seed for x in fails})
        lines.append(f"FAILED {kind} [{', '.join(shapes)}] in {len(rounds)} round(s), e.g. "
                     f"{replay_env(f.round_seed)} (step {f.step}):\n    {f.line}"
                     + "".join(f"\n    {r}" for r in f.rows))
    seen: dict[str, int] = {}
    for crash in tally.crashes:
        last = crash.strip().splitlines()[-1]
        seen[last] = seen.get(last, 0) + 1
        if seen[last] == 1:
            lines.append(f"CRASH {crash}")
    lines += [f"(crash {last!r} seen {n} times)" for last, n in seen.items() if n > 1]
    return "\n".join(lines)


def play(tmp_path: Path, seconds: float, sshd: SshServer) -> None:
    tally = Tally()
    deadline = time.monotonic() + seconds
    replay = os.environ.get("SUPRSYNC_ADV_ROUND_SEED")
    if replay:
        play_round(tmp_path / "replay", int(replay), tally, time.monotonic() + 600, sshd)
    else:
        rng = random.Random(SEED)
        while time.monotonic() < deadline:
            round_seed = rng.randrange(2**32)
            play_round(tmp_path / f"r{tally.rounds}", round_seed, tally, deadline, sshd)
    text = summary(tally)
    print("\n" + text)
    assert tally.steps > 0
    if tally.failures or tally.crashes:
        pytest.fail(text, pytrace=False)


def test_adversarial_rounds_keep_the_invariants(tmp_path: Path, sshd: SshServer) -> None:
    """About 45 s of random rounds; any violation fails with its seed and shapes."""
    play(tmp_path, DEFAULT_SECONDS, sshd)


@pytest.mark.adversarial_long
@pytest.mark.skipif(not os.environ.get("SUPRSYNC_ADV_SECONDS"),
                    reason="long variant: set SUPRSYNC_ADV_SECONDS")
def test_adversarial_long(tmp_path: Path, sshd: SshServer) -> None:
    """The same for SUPRSYNC_ADV_SECONDS seconds."""
    play(tmp_path, float(os.environ["SUPRSYNC_ADV_SECONDS"]), sshd)
