"""Retention rules: first match wins, ``never``, ``keep_newest``, empty directories,
the preview, and policy files refused at start.

Real files copied by real rsync to a local destination; time moves with the test's
clock, so no test sleeps.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from conftest import run_cli
from helpers import (
    ARCHIVE,
    Clock,
    clock_fixture,  # noqa: F401 - the clock fixture
    closing_agents,
    get_row,
    manager_fixture,  # noqa: F401 - the manager fixture
    new_agent,
    write_file,
)
from invariants import check_invariants
from sqlalchemy import update

from suprsync import SupRsyncFile, SupRsyncFilesManager, steps
from suprsync.agent import Agent
from suprsync.catalog.meta import DELETE_RULE_PREFIX, get_meta
from suprsync.deletion import candidate_rows, kept_newest
from suprsync.emptydirs import QUIET
from suprsync.retention import (
    Candidate,
    Policy,
    PolicyError,
    decide,
    glob_regex,
    newest_kept,
    parse_min_free,
    parse_policy,
)

DAY = 86400.0
WEEK = 604800.0

EXAMPLE = """\
rules:
  - match: "**/tune/**"           # never delete tuning files
    delete_after: never
  - match: "**/bias_group_map*.npy"
    keep_newest: 3                # keep the 3 newest matching files of the archive
    delete_after: 86400
  - match: "**"
    delete_after: 604800
"""


# ------------------------------------------------------------------ pure rules


@pytest.mark.parametrize(("pattern", "path", "hit"), [
    ("**", "a/b/c.g3", True),
    ("*.g3", "c.g3", True),
    ("*.g3", "a/c.g3", False),             # * does not cross /
    ("a/*/c.g3", "a/b/c.g3", True),
    ("a/*/c.g3", "a/b/x/c.g3", False),
    ("a/**/c.g3", "a/b/x/c.g3", True),      # ** spans directories
    ("a/**/c.g3", "a/c.g3", True),          # ... or none
    ("**/tune/**", "tune/x.npy", True),
    ("**/tune/**", "smurf/17000/tune/x.npy", True),
    ("**/tune/**", "smurf/tuned/x.npy", False),
    ("**/bias_group_map*.npy", "s/bias_group_map_3.npy", True),
    ("**/bias_group_map*.npy", "s/bias_group_map_3.npy.bak", False),
    ("f?.g3", "f1.g3", True),
    ("f?.g3", "f/.g3", False),
    ("f[0-2].g3", "f1.g3", True),
    ("f[!0-2].g3", "f1.g3", False),
])
def test_glob_matching(pattern: str, path: str, hit: bool) -> None:
    assert (glob_regex(pattern).match(path) is not None) is hit


def test_first_matching_rule_decides() -> None:
    policy = parse_policy(EXAMPLE, "p.yaml")
    assert policy.rule_for("x/tune/bias_group_map1.npy").match == "**/tune/**"
    assert policy.rule_for("x/bias_group_map1.npy").match == "**/bias_group_map*.npy"
    assert policy.rule_for("x/y.g3").match == "**"
    assert policy.rule_for("./x//y.g3").match == "**"  # matched in its canonical form


def test_decide_never_keep_newest_age_and_space() -> None:
    policy = parse_policy(EXAMPLE, "p.yaml")
    now = 10 * WEEK

    def cand(i: int, path: str, age: float, verified: bool = True) -> Candidate:
        return Candidate(i, path, now - age, verified, True, size=100, filesystem=7)

    rows = [cand(1, "a/tune/t.npy", 9 * WEEK), cand(2, "a/bias_group_map1.npy", 2 * DAY),
            cand(3, "a/x.g3", WEEK + 1), cand(4, "a/y.g3", DAY), cand(5, "a/z.g3", 1),
            cand(6, "a/u.g3", 9 * WEEK, verified=False)]
    verdicts = decide(rows, policy, now, kept_newest={2})
    assert [v.delete for v in verdicts] == [False, False, True, False, False, False]
    assert "never" in verdicts[0].reason
    assert "newest" in verdicts[1].reason
    assert "not verified" in verdicts[5].reason
    need = {7: 150}
    early = decide(rows, policy, now, kept_newest={2}, need=need)
    assert [(v.delete, v.for_space) for v in early] == [
        (False, False), (False, False), (True, False), (True, True), (True, True),
        (False, False)]
    assert need == {7: -50}


def test_newest_kept_counts_only_rows_its_rule_decides() -> None:
    policy = parse_policy(EXAMPLE, "p.yaml")
    rows = [(9, "a/bias_group_map9.npy"), (8, "a/tune/bias_group_map8.npy"),
            (7, "a/bias_group_map7.npy"), (6, "a/other.g3"), (5, "a/bias_group_map5.npy"),
            (4, "a/bias_group_map4.npy")]
    assert newest_kept(policy, rows) == {9, 7, 5}


@pytest.mark.parametrize(("text", "line", "words"), [
    ("rules:\n  - match: '**'\n    delete_after: [1\n", 4, "not valid YAML"),
    ("rules:\n  - match: '**'\n    delete_afer: 10\n", 3, "unknown key 'delete_afer'"),
    ("rules:\n  - match: '**'\n    delete_after: 1\nkeep: 2\n", 4, "unknown key 'keep'"),
    ("rules:\n  - match: 'a/[bc'\n    delete_after: 10\n", 2, "bad glob"),
    ("rules:\n  - match: '**'\n    delete_after: 10\n  - match: '**'\n"
     "    delete_after: -1\n", 5, "delete_after"),
    ("rules:\n  - match: '**'\n    delete_after: 1\n    keep_newest: yes\n", 4,
     "keep_newest"),
    ("rules:\n  - match: '**'\n", 2, "no 'delete_after'"),
    ("rules: []\n", 1, "non-empty list"),
    ("- match: '**'\n", 1, "mapping with a 'rules' list"),
])
def test_malformed_policy_names_the_line(text: str, line: int, words: str) -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy(text, "/etc/ret.yaml")
    message = str(err.value)
    assert message.startswith(f"/etc/ret.yaml:{line}: "), message
    assert words in message
    assert "\n" not in message


def test_min_free_sizes() -> None:
    assert parse_min_free("1048576").threshold(0) == 1 << 20
    assert parse_min_free("500M").threshold(0) == 500 << 20
    assert parse_min_free("2g").threshold(0) == 2 << 30
    assert parse_min_free("10%").threshold(1000) == 100
    for bad in ("", "x", "10 parsecs", "100%", "-5M"):
        with pytest.raises(ValueError):
            parse_min_free(bad)


def test_published_policy_reads_back() -> None:
    policy = parse_policy(EXAMPLE, "p.yaml")
    back = Policy.from_published(policy.published())
    assert back is not None and back.rules == policy.rules
    assert Policy.delete_after(60).published() == "60.0"  # what older agents read
    assert Policy.from_published("garbage") is None


# ------------------------------------------------------------ with real files


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "retention.yaml"
    path.write_text(EXAMPLE)
    return path


@pytest.fixture
def make_agent(tmp_path: Path, remote_dir: Path, manager: SupRsyncFilesManager,
               clock: Clock, policy_file: Path):
    def make(**overrides) -> Agent:
        overrides.setdefault("retention", parse_policy(policy_file.read_text(),
                                                       str(policy_file)))
        return new_agent(manager, clock, tmp_path, remote_dir, **overrides)

    yield from closing_agents(make)


@pytest.fixture
def add(tmp_path: Path, manager: SupRsyncFilesManager, clock: Clock):
    """Register a real local file under local/ at the clock's time; returns (id, path)."""

    def add_one(remote: str, **kwargs) -> tuple[int, Path]:
        path = write_file(tmp_path / "local" / remote, f"bytes of {remote}\n".encode() * 50)
        row = manager.add_file(str(path), remote, ARCHIVE, timestamp=clock(), **kwargs)
        return row.id, path

    return add_one


def invariants(manager: SupRsyncFilesManager, remote_dir: Path) -> None:
    check_invariants(manager.db_path, {ARCHIVE: remote_dir})


def test_rule_order_and_never(make_agent, add, manager: SupRsyncFilesManager, clock: Clock,
                              remote_dir: Path) -> None:
    tune_id, tune = add("smurf/17000/tune/bias_group_map_1.npy")  # tune wins over bias maps
    data_id, data = add("smurf/17000/data.g3")
    agent = make_agent()
    assert agent.iterate() is True
    clock.advance(DAY + 1)
    assert agent.iterate() is True
    assert tune.exists() and data.exists(), "deleted before its rule's delay"
    clock.advance(WEEK)
    size = data.stat().st_blocks * 512
    assert agent.iterate() is True
    assert not data.exists()
    assert get_row(manager, data_id).removed == clock()
    clock.advance(100 * WEEK)
    assert agent.iterate() is True
    assert tune.exists(), "a file under a 'never' rule was deleted"
    assert get_row(manager, tune_id).removed is None
    session = agent.session.snapshot()["retention"]
    assert session["deleted_bytes_by_rule"] == {"**": size}
    invariants(manager, remote_dir)


def test_keep_newest_as_new_files_arrive(make_agent, add, manager: SupRsyncFilesManager,
                                         clock: Clock, remote_dir: Path) -> None:
    agent = make_agent()
    maps = []
    for n in range(4):
        maps.append(add(f"smurf/bias_group_map_{n}.npy"))
        clock.advance(60)
    assert agent.iterate() is True
    clock.advance(DAY + 1)
    assert agent.iterate() is True
    gone = [p for _, p in maps if not p.exists()]
    assert gone == [maps[0][1]], "not exactly the oldest of the 4 maps was deleted"
    # A new map arrives; until it is verified, the 3 newest verified maps stay.
    maps.append(add("smurf/bias_group_map_4.npy"))
    assert maps[1][1].exists()
    assert agent.iterate() is True  # copies and verifies the new map, then deletes map 1
    assert not maps[1][1].exists()
    assert all(p.exists() for _, p in maps[2:])
    clock.advance(50 * WEEK)
    assert agent.iterate() is True
    assert all(p.exists() for _, p in maps[2:]), "keep_newest does not depend on age"
    assert [get_row(manager, i).removed is None for i, _ in maps] == [
        False, False, True, True, True]
    invariants(manager, remote_dir)


def test_policy_is_published_for_agents_of_other_archives(
        make_agent, add, manager: SupRsyncFilesManager, remote_dir: Path) -> None:
    add("x.g3")
    agent = make_agent()
    assert agent.iterate() is True
    text = manager.read(lambda s: get_meta(s, DELETE_RULE_PREFIX + ARCHIVE))
    assert Policy.from_published(text).rules == agent.config.retention.rules
    invariants(manager, remote_dir)


def test_shared_file_waits_for_the_other_archives_rule(
        make_agent, add, manager: SupRsyncFilesManager, clock: Clock, remote_dir: Path,
        tmp_path: Path) -> None:
    file_id, path = add("shared/data.g3")
    other = manager.add_file(str(path), "shared/data.g3", "other", timestamp=clock())
    mine = make_agent()
    theirs = make_agent(archive_name="other", remote_basedir=str(tmp_path / "remote2"),
                        retention=parse_policy("rules:\n  - match: '**/*.g3'\n"
                                               "    delete_after: never\n", "o.yaml"))
    assert theirs.iterate() is True and mine.iterate() is True
    clock.advance(2 * WEEK)
    assert mine.iterate() is True
    assert path.exists(), "deleted although the other archive never deletes it"
    assert get_row(manager, file_id).removed is None
    assert get_row(manager, other.id).removed is None
    check_invariants(manager.db_path, {ARCHIVE: remote_dir, "other": tmp_path / "remote2"})


def test_empty_dirs_removed_up_to_local_root(make_agent, add, manager: SupRsyncFilesManager,
                                             clock: Clock, remote_dir: Path,
                                             tmp_path: Path) -> None:
    root = tmp_path / "local"
    _, gone = add("a/b/c/old.g3")
    _, kept_dir_file = add("k/old.g3")
    stranger = write_file(root / "k" / "notes.txt", b"not registered\n")
    _, fresh = add("f/g/old.g3")
    agent = make_agent(remove_empty_dirs=True, local_root=str(root),
                       retention=Policy.delete_after(10))
    assert agent.iterate() is True
    long_ago = time.time() - QUIET - 60
    for folder in (root / "a", root / "a/b", root / "a/b/c", root / "k", root / "f"):
        os.utime(folder, (long_ago, long_ago))
    os.utime(root, (long_ago, long_ago))
    # f/g was written into a moment ago: a producer may be about to write there again.
    clock.advance(11)
    assert agent.iterate() is True
    assert not gone.exists() and not kept_dir_file.exists() and not fresh.exists()
    assert not (root / "a").exists(), "the emptied dirs a/b/c, a/b, a were not removed"
    assert root.is_dir(), "--local-root itself was removed"
    assert stranger.read_bytes() == b"not registered\n"
    assert (root / "k").is_dir()
    assert (root / "f" / "g").is_dir(), "a dir modified by a producer an hour ago was removed"
    assert agent.session.snapshot()["retention"]["removed_dirs"] == 3
    invariants(manager, remote_dir)


def test_remove_empty_dirs_requires_local_root(tmp_path: Path) -> None:
    result = run_cli("run", "--archive-name", ARCHIVE, "--remote-basedir", str(tmp_path),
                     "--suprsync-file-root", str(tmp_path / "srf"), "--db",
                     str(tmp_path / "c.db"), "--delete-local-after", "10",
                     "--remove-empty-dirs", "--once")
    assert result.returncode == 1
    assert "--remove-empty-dirs needs --local-root" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_malformed_policy_refused_at_start(tmp_path: Path) -> None:
    bad = tmp_path / "ret.yaml"
    bad.write_text("rules:\n  - match: '**'\n    delete_after: 10\n    kep_newest: 2\n")
    result = run_cli("run", "--archive-name", ARCHIVE, "--remote-basedir", str(tmp_path),
                     "--suprsync-file-root", str(tmp_path / "srf"), "--db",
                     str(tmp_path / "c.db"), "--retention", str(bad), "--once")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [f"suprsync run: error: --retention {bad}:4: unknown key 'kep_newest' "
                     "(a rule has match, delete_after, keep_newest)"], lines
    assert not (tmp_path / "c.db").exists(), "the agent started before refusing the file"


def test_preview_matches_what_the_next_iteration_deletes(
        tmp_path: Path, remote_dir: Path, manager: SupRsyncFilesManager, clock: Clock,
        policy_file: Path, make_agent, add) -> None:
    clock.now = time.time() - 30 * DAY
    ids = {"tune": add("s/tune/t.npy")[0], "old": add("s/old.g3")[0]}
    for n in range(4):
        ids[f"map{n}"] = add(f"s/bias_group_map_{n}.npy")[0]
    clock.advance(26 * DAY)
    ids["young"] = add("s/young.g3")[0]
    agent = make_agent()
    assert agent.iterate() is True  # copies everything; deletes what is due
    deleted_first = {k for k, i in ids.items() if get_row(manager, i).removed is not None}
    assert deleted_first == {"old", "map0"}
    clock.now = time.time() - 2 * DAY
    ids["young_map"] = add("s/bias_group_map_9.npy")[0]
    # Verified, so it counts as newest.
    steps.copy(agent.manager, agent.transport, agent.clock, agent.settings(), agent.memory)
    clock.now = time.time()
    result = run_cli("retention", ARCHIVE, "--db", manager.db_path, "--retention",
                     str(policy_file), "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    would = {d["id"] for d in shown["delete"]}
    assert {d["rule"] for d in shown["delete"]} == {"**/bias_group_map*.npy"}
    kept = {k["local_path"]: k["reason"] for k in shown["keep"]}
    assert any("never" in why for path, why in kept.items() if path.endswith("t.npy"))
    assert shown["filesystems"] and shown["filesystems"][0]["free"] > 0
    text = run_cli("retention", ARCHIVE, "--db", manager.db_path, "--retention",
                   str(policy_file))
    assert text.returncode == 0 and "delete " in text.stdout and "keep " in text.stdout
    before = {i for i in ids.values() if get_row(manager, i).removed is None}
    clock.now = time.time()
    assert agent.iterate() is True
    after = {i for i in ids.values() if get_row(manager, i).removed is None}
    assert before - after == would == {ids["map1"]}
    invariants(manager, remote_dir)


def test_ocs_agent_arguments_take_the_retention_flags(tmp_path: Path, policy_file: Path) -> None:
    from suprsync.ocs_agent import make_parser
    from suprsync.options import config_from_args

    (tmp_path / "data").mkdir()
    ns = make_parser().parse_args([
        "--archive-name", ARCHIVE, "--remote-basedir", str(tmp_path / "remote"),
        "--db-path", str(tmp_path / "c.db"), "--suprsync-file-root", str(tmp_path / "srf"),
        "--retention", str(policy_file), "--min-free", "10%", "--remove-empty-dirs",
        "--local-root", str(tmp_path / "data")])
    config = config_from_args(ns)
    assert config.policy() == parse_policy(EXAMPLE, str(policy_file))
    assert config.min_free.percent == 10
    assert config.remove_empty_dirs and config.local_root == str(tmp_path / "data")


def test_keep_newest_and_candidate_pages_on_both_backends(catalog_url: str, clock: Clock,
                                                          tmp_path: Path) -> None:
    """LIKE pre-filter (its _ escaped) and keyset pages on sqlite and PostgreSQL."""
    policy = parse_policy(EXAMPLE, "p.yaml")
    manager = SupRsyncFilesManager(catalog_url, clock=clock, create_all=True)
    try:
        made = {}
        for n, remote in enumerate(["s/bias_group_map_1.npy", "s/biasXgroupXmap_2.npy",
                                    "s/bias_group_map_3.npy", "s/bias_group_map_4.npy",
                                    "s/BIAS_GROUP_MAP_5.npy", "s/bias_group_map_6.npy",
                                    "s/other.g3"]):
            path = write_file(tmp_path / remote, remote.encode())
            made[remote] = manager.add_file(str(path), remote, ARCHIVE,
                                            timestamp=clock() + n).id
        unverified = made.pop("s/bias_group_map_6.npy")
        manager.write(lambda s: s.execute(update(SupRsyncFile)
                                          .where(SupRsyncFile.id != unverified)
                                          .values(remote_md5sum=SupRsyncFile.local_md5sum)))
        assert kept_newest(manager, ARCHIVE, policy) == {
            made["s/bias_group_map_4.npy"], made["s/bias_group_map_3.npy"],
            made["s/bias_group_map_1.npy"]}
        pages, after = [], None
        while rows := manager.read(lambda s, a=after: candidate_rows(s, ARCHIVE, a, None, 2)):
            pages.append([r.id for r in rows])
            after = (float(rows[-1].timestamp), rows[-1].id)
        assert [i for page in pages for i in page] == sorted(made.values())
        assert max(len(p) for p in pages) == 2
    finally:
        manager.close()
