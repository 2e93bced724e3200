"""Unit tests: rsync argument lists, ssh command lines and md5sum output parsing."""

from __future__ import annotations

import hashlib
import shlex
import subprocess
from pathlib import Path

import pytest

from suprsync.transport import SshOptions, TransferOptions
from suprsync.transport.rsync import files_from, rsync_argv
from suprsync.transport.ssh import parse_md5sum, remote_command

SRC = "/stage/dir"
DST = "/remote base/dir/"


def _argv(options: TransferOptions | None = None, **kwargs) -> list[str]:
    return rsync_argv(options or TransferOptions(), SRC, DST, **kwargs)


def _options_part(argv: list[str]) -> list[str]:
    """Everything between the program name and the ``--`` that ends the options."""
    return argv[1:argv.index("--")]


# ------------------------------------------------------------------ rsync argv


def test_argv_always_has_the_core_flags() -> None:
    argv = _argv()
    assert argv[0] == "rsync"
    opts = _options_part(argv)
    for flag in ("--perms", "--times", "--copy-links", "--from0", "--files-from=-"):
        assert flag in opts, flag


def test_argv_paths_come_after_double_dash() -> None:
    argv = _argv(TransferOptions(compression=True, bwlimit="100"), force=True,
                 remote_shell="ssh -p 22")
    assert argv[-3] == "--"
    assert argv[-2] == SRC + "/"
    assert argv[-1] == DST
    assert argv.count("--") == 1


def test_argv_source_dir_gets_exactly_one_trailing_slash() -> None:
    argv = rsync_argv(TransferOptions(), "/stage/dir///", DST)
    assert argv[-2] == "/stage/dir/"


def test_argv_default_chmod() -> None:
    opts = _options_part(_argv())
    assert "--chmod=g+rwX,o+rX" in opts


def test_argv_custom_chmod() -> None:
    opts = _options_part(_argv(TransferOptions(chmod="u=rw,go=")))
    assert "--chmod=u=rw,go=" in opts
    assert [a for a in opts if a.startswith("--chmod")] == ["--chmod=u=rw,go="]


def test_argv_no_chmod_when_disabled() -> None:
    opts = _options_part(_argv(TransferOptions(chmod=None)))
    assert not [a for a in opts if a.startswith("--chmod")]


def test_argv_compress_only_with_compression() -> None:
    assert "--compress" in _options_part(_argv(TransferOptions(compression=True)))
    plain = _options_part(_argv(TransferOptions(compression=False)))
    assert "--compress" not in plain
    assert "-z" not in plain


def test_argv_bwlimit_only_when_given() -> None:
    assert "--bwlimit=250" in _options_part(_argv(TransferOptions(bwlimit="250")))
    assert not [a for a in _options_part(_argv()) if a.startswith("--bwlimit")]


def test_argv_ignore_times_only_when_forced() -> None:
    assert "--ignore-times" in _options_part(_argv(force=True))
    assert "--ignore-times" not in _options_part(_argv(force=False))


def test_argv_protect_args_and_remote_shell_only_for_ssh() -> None:
    local = _options_part(_argv())
    assert "--protect-args" not in local
    assert "-e" not in local

    shell = "ssh -o BatchMode=yes -p 2222"
    remote = _options_part(_argv(remote_shell=shell))
    assert "--protect-args" in remote
    i = remote.index("-e")
    assert remote[i + 1] == shell


def test_files_from_is_nul_separated_and_keeps_hostile_names() -> None:
    names = ["a b", "new\nline", "-dash", "ünï", "back\\slash"]
    data = files_from(names)
    assert data.endswith(b"\0")
    assert data.split(b"\0")[:-1] == [n.encode() for n in names]


# ------------------------------------------------------------------ ssh argv


def test_ssh_options_argv() -> None:
    argv = SshOptions(host="u@h", key="/k ey", port=2222, known_hosts="/kh file").argv()
    assert argv[0] == "ssh"
    assert "u@h" not in argv
    assert "IdentityFile=\"/k ey\"" in argv
    assert "IdentitiesOnly=yes" in argv
    assert argv[argv.index("-p") + 1] == "2222"
    # ssh splits an unquoted -o value on whitespace: a path with a space must be quoted.
    (known,) = [a for a in argv if a.startswith("UserKnownHostsFile=")]
    assert known.split("=", 1)[1] == '"/kh file"'
    assert "BatchMode=yes" in argv
    assert "StrictHostKeyChecking=yes" in argv


def test_ssh_option_paths_escape_percent_quotes_and_backslashes() -> None:
    argv = SshOptions(host="h", known_hosts='/a%d/b"c\\d').argv()
    (known,) = [a for a in argv if a.startswith("UserKnownHostsFile=")]
    assert known == 'UserKnownHostsFile="/a%%d/b\\"c\\\\d"'


def test_ssh_option_path_with_dollar_brace_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot take a path"):
        SshOptions(host="h", known_hosts="/a/${HOME}/k").argv()


def test_remote_command_quotes_every_word() -> None:
    words = ["cd", "--", "/base dir/$(touch x)/`id`/it's \"q\"\n/-x"]
    line = remote_command(*words)
    assert shlex.split(line) == words


# ------------------------------------------------------------------ md5sum parsing

MD5_A = "0123456789abcdef0123456789abcdef"
MD5_B = "fedcba9876543210fedcba9876543210"


def test_parse_plain_lines() -> None:
    out = f"{MD5_A}  a/b c.dat\n{MD5_B}  -lead\n".encode()
    assert parse_md5sum(out) == {"a/b c.dat": MD5_A, "-lead": MD5_B}


def test_parse_binary_mode_line() -> None:
    assert parse_md5sum(f"{MD5_A} *x.bin\n".encode()) == {"x.bin": MD5_A}


def test_parse_escaped_lines() -> None:
    out = (f"\\{MD5_A}  new\\nline\n"
           f"\\{MD5_B}  back\\\\slash\n").encode()
    assert parse_md5sum(out) == {"new\nline": MD5_A, "back\\slash": MD5_B}


def test_parse_uppercase_digest_is_lowered() -> None:
    assert parse_md5sum(f"{MD5_A.upper()}  f\n".encode()) == {"f": MD5_A}


def test_parse_ignores_junk_lines() -> None:
    out = (b"hello world\n"
           b"\n"
           b"md5sum: missing: No such file or directory\n"
           b"abc  short-digest\n"
           + f"{MD5_A}  good\n".encode()
           + f"{MD5_B}no-separator\n".encode())
    assert parse_md5sum(out) == {"good": MD5_A}


def test_parse_non_utf8_name_round_trips() -> None:
    raw = b"caf\xe9"
    out = MD5_A.encode() + b"  " + raw + b"\n"
    (name,) = parse_md5sum(out)
    assert name.encode("utf-8", "surrogateescape") == raw


def test_parse_real_md5sum_output_for_hostile_names(tmp_path: Path) -> None:
    names = ["plain.dat", "sp ace", "new\nline", "back\\slash", "-dash", "ünï 日本",
             "q'uo\"te", "$(touch nope)", "`touch nope`"]
    expected = {}
    for i, name in enumerate(names):
        data = f"content {i}".encode()
        (tmp_path / name).write_bytes(data)
        expected[name] = hashlib.md5(data).hexdigest()
    result = subprocess.run(["md5sum", "--", *names], cwd=tmp_path, capture_output=True,
                            check=True, timeout=30)
    assert parse_md5sum(result.stdout) == expected
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize("name", ["new\nline", "back\\slash", "both\\\nx"])
def test_parse_escaped_names_from_real_md5sum(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"x")
    result = subprocess.run(["md5sum", "--", name], cwd=tmp_path, capture_output=True,
                            check=True, timeout=30)
    assert result.stdout.startswith(b"\\")
    assert parse_md5sum(result.stdout) == {name: hashlib.md5(b"x").hexdigest()}
