"""Destination URLs, the registry of kinds, and the flags that name a destination (pure)."""

from __future__ import annotations

import argparse

import pytest

from suprsync.options import ConfigError, add_run_arguments, config_from_args
from suprsync.transport import (
    Access,
    Capabilities,
    Destination,
    DestinationError,
    TransferOptions,
    Transport,
    make_transport,
    open_destination,
    parse_destination,
)
from suprsync.transport.registry import KIND_MODULES, kinds


@pytest.mark.parametrize(("url", "expected"), [
    ("/srv/archive", Destination("file", "/srv/archive")),
    ("/srv//archive/", Destination("file", "/srv/archive")),
    ("file:///srv/archive", Destination("file", "/srv/archive")),
    ("file://localhost/srv/a%20b", Destination("file", "/srv/a b")),
    ("ssh://archive.example.org/data/arch",
     Destination("ssh", "/data/arch", host="archive.example.org")),
    ("ssh://so@archive:2222/data/arch",
     Destination("ssh", "/data/arch", host="archive", user="so", port=2222)),
    ("SSH://[::1]:22/d", Destination("ssh", "/d", host="[::1]", port=22)),
    ("rsync://backup@daemon/archive", Destination("rsync", "", host="daemon", user="backup",
                                                   module="archive")),
    ("rsync://daemon:8730/archive/site/a/", Destination("rsync", "site/a", host="daemon",
                                                        port=8730, module="archive")),
])
def test_urls_name_their_destination(url: str, expected: Destination) -> None:
    assert parse_destination(url) == expected


@pytest.mark.parametrize(("url", "says"), [
    ("", "empty"),
    ("relative/dir", "neither an absolute path nor a URL"),
    ("./dir", "neither an absolute path nor a URL"),
    ("host:/dir", "neither an absolute path nor a URL"),
    ("ftp://host/dir", "unknown destination scheme 'ftp'"),
    ("file://otherhost/dir", "names a host"),
    ("file://dir", "names a host"),
    ("ssh://host", "absolute path"),
    ("ssh://host/", "absolute path"),
    ("ssh://host:0/d", "port '0'"),
    ("ssh://host:99999/d", "port '99999'"),
    ("ssh://host:ab/d", "port 'ab'"),
    ("ssh://-oProxyCommand=x/d", "cannot start with '-'"),
    ("ssh://-u@host/d", "is not a user name"),
    ("ssh://a b/d", "no valid"),
    ("rsync://host", "names no module"),
    ("rsync://host/mod/../x", "'..'"),
    ("/srv/a\nb", "NUL or newline"),
])
def test_bad_urls_say_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(DestinationError) as caught:
        parse_destination(url)
    assert says in str(caught.value)


def test_the_original_flags_name_the_same_destinations() -> None:
    assert Destination.from_flags("/srv/a") == parse_destination("/srv/a")
    assert Destination.from_flags("/srv/a", "so@archive") == \
        parse_destination("ssh://so@archive/srv/a")
    # The original took a path relative to the login's home; so does the flag form.
    assert Destination.from_flags("data/a", "archive").path == "data/a"


def test_every_kind_module_registers_a_kind() -> None:
    registered = kinds()
    assert {"file", "ssh"} <= set(registered)
    assert len(registered) >= len(KIND_MODULES)


def test_opening_gives_a_transport_of_the_interface_only(tmp_path) -> None:
    local = open_destination(str(tmp_path), TransferOptions())
    remote = open_destination("ssh://so@archive:2222/srv/a", TransferOptions(),
                              Access(key="/k", known_hosts="/kh"))
    for transport in (local, remote):
        assert isinstance(transport, Transport)
    assert remote.describe() == "so@archive:/srv/a"
    assert local.capabilities.remote_shell is False
    assert remote.capabilities.remote_shell is True


def test_a_port_given_twice_must_agree() -> None:
    with pytest.raises(DestinationError, match="two ports"):
        open_destination("ssh://h:2222/d", TransferOptions(), Access(port=22))
    open_destination("ssh://h:2222/d", TransferOptions(), Access(port=2222))


def test_a_scheme_without_an_installed_kind_is_refused_by_name(monkeypatch) -> None:
    from suprsync.transport import registry

    monkeypatch.setattr(registry, "_kinds", {k: v for k, v in kinds().items()
                                             if k != "rsync"})
    with pytest.raises(DestinationError, match="rsync:// are not supported"):
        open_destination("rsync://h/mod", TransferOptions())


def test_make_transport_keeps_the_flag_form(tmp_path) -> None:
    assert make_transport(str(tmp_path), TransferOptions()).describe() == str(tmp_path)


def _run_flags(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    return parser.parse_args(["--archive-name", "a", "--db-path", "/tmp/c.db",
                              "--suprsync-file-root", "/tmp/srf", *flags])


@pytest.mark.parametrize(("flags", "url"), [
    (["--remote-basedir", "/srv/a"], "/srv/a"),
    (["--destination", "/srv/a"], "/srv/a"),
    (["--destination", "file:///srv/a"], "/srv/a"),
    (["--remote-basedir", "/srv/a", "--ssh-host", "so@h", "--ssh-port", "2222"],
     "ssh://so@h:2222/srv/a"),
    (["--destination", "ssh://so@h:2222/srv/a"], "ssh://so@h:2222/srv/a"),
    (["--destination", "ssh://so@h/srv/a", "--ssh-port", "2222"], "ssh://so@h:2222/srv/a"),
])
def test_both_flag_forms_open_the_same_destination(flags: list[str], url: str) -> None:
    config = config_from_args(_run_flags(*flags))
    expected = open_destination(url, config.transfer_options(), Access(port=None))
    transport = config.open_transport()
    assert type(transport) is type(expected)
    assert transport.describe() == expected.describe()
    assert getattr(transport, "ssh", None) == getattr(expected, "ssh", None)


def test_ssh_options_apply_to_an_ssh_url() -> None:
    config = config_from_args(_run_flags("--destination", "ssh://so@h/srv/a", "--ssh-key",
                                         "/k", "--ssh-known-hosts", "/kh", "--ssh-option",
                                         "Ciphers=aes128-ctr", "--no-ssh-reuse-connection"))
    ssh = config.open_transport().ssh  # type: ignore[attr-defined]
    assert (ssh.host, ssh.key, ssh.known_hosts, ssh.extra_options, ssh.reuse_connection) == \
        ("so@h", "/k", "/kh", ("Ciphers=aes128-ctr",), False)


@pytest.mark.parametrize(("flags", "says"), [
    ([], "no destination given"),
    (["--destination", "/a", "--remote-basedir", "/a"], "not both"),
    (["--destination", "ssh://h/a", "--ssh-host", "h"], "--ssh-host cannot go with"),
    (["--destination", "relative"], "--destination: destination 'relative' is neither"),
    (["--destination", "gopher://h/a"], "unknown destination scheme"),
    (["--destination", "ssh://h:22/a", "--ssh-port", "2222"], "port 22 but --ssh-port is 2222"),
])
def test_bad_destination_flags_are_one_clear_error(flags: list[str], says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_args(_run_flags(*flags))
    assert says in str(caught.value)


class _NoHashKind(Transport):
    """A kind that computes no far-side hash (only its capabilities matter here)."""

    capabilities = Capabilities(hashes=frozenset(), rereads=False)

    def describe(self) -> str:
        return f"nohash:{self.remote_basedir}"

    def prepare(self) -> None:
        raise AssertionError("not reached")

    send = checksums = stat = list_files = prepare  # type: ignore[assignment]


@pytest.fixture
def no_hash_rsync_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    """rsync:// opens a kind that computes no md5."""
    from suprsync.transport import registry

    fake = registry.Kind("rsync", lambda d, o, a: _NoHashKind(d.path, o))
    monkeypatch.setattr(registry, "_kinds", {**kinds(), "rsync": fake})


def test_steps_that_need_a_far_side_md5_are_refused_for_a_kind_without_one(
        no_hash_rsync_kind: None, tmp_path) -> None:
    from suprsync.audit import AuditError, transport_from_args
    from suprsync.options import add_audit_arguments, check_environment

    url = "rsync://h/mod/base"
    flags = _run_flags("--destination", url, "--verify-before-delete")
    flags.suprsync_file_root = str(tmp_path / "srf")
    with pytest.raises(ConfigError, match="--verify-before-delete: .* computes no md5"):
        check_environment(config_from_args(flags))
    flags.verify_before_delete = False
    check_environment(config_from_args(flags))

    parser = argparse.ArgumentParser()
    add_audit_arguments(parser)
    with pytest.raises(AuditError, match="--md5: nohash:base computes no md5"):
        transport_from_args(parser.parse_args(["a", "--destination", url, "--md5"]))
    assert transport_from_args(parser.parse_args(["a", "--destination", url])).describe() == \
        "nohash:base"


@pytest.mark.parametrize("url", ["/srv/a", "file:///srv/a", "rsync://h/mod/base"])
def test_remote_shell_no_for_a_destination_without_ssh_is_refused(url: str) -> None:
    """--remote-shell no restricts an ssh key to rsync; any other kind would ignore it
    without a word, so run and audit refuse it, unless an ssh destination takes it."""
    from suprsync.audit import AuditError, transport_from_args
    from suprsync.options import add_audit_arguments

    with pytest.raises(ConfigError, match="--remote-shell no is for ssh destinations"):
        config_from_args(_run_flags("--destination", url, "--remote-shell", "no"))
    parser = argparse.ArgumentParser()
    add_audit_arguments(parser)
    with pytest.raises(AuditError, match="--remote-shell no is for ssh destinations"):
        transport_from_args(parser.parse_args(["a", "--destination", url,
                                               "--remote-shell", "no"]))
    mixed = config_from_args(_run_flags("--destination", url, "--destination-id",
                                        "d=ssh://so@h/srv/d", "--remote-shell", "no"))
    assert mixed.remote_shell is False
    assert config_from_args(_run_flags("--destination", url)).remote_shell is True


@pytest.mark.parametrize("url", ["/srv/a", "file:///srv/a", "ssh://so@h/srv/a"])
def test_a_password_file_for_a_destination_that_takes_none_is_refused(url: str,
                                                                       tmp_path) -> None:
    """--rsync-password-file is read only by rsync:// daemons; given with any other
    destination it would be ignored without a word, so run and audit refuse it."""
    from suprsync.audit import AuditError, transport_from_args
    from suprsync.options import add_audit_arguments

    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    with pytest.raises(ConfigError, match="--rsync-password-file .* only for rsync://"):
        config_from_args(_run_flags("--destination", url, "--rsync-password-file",
                                    str(secret)))
    parser = argparse.ArgumentParser()
    add_audit_arguments(parser)
    with pytest.raises(AuditError, match="--rsync-password-file .* only for rsync://"):
        transport_from_args(parser.parse_args(["a", "--destination", url,
                                               "--rsync-password-file", str(secret)]))
    ok = config_from_args(_run_flags("--destination", "rsync://h/mod/base",
                                     "--rsync-password-file", str(secret)))
    assert ok.rsync_password_file == str(secret)
    # With several destinations it is for the rsync:// ones, wherever they stand.
    further = config_from_args(_run_flags("--destination", url, "--destination-id",
                                          "d=rsync://h/mod/base", "--rsync-password-file",
                                          str(secret)))
    assert further.rsync_password_file == str(secret)
    daemon, = further.open_more_transports()
    assert daemon.describe() == "rsync://h/mod/base"
    assert daemon.password_file == str(secret)
    with pytest.raises(ConfigError, match="--rsync-password-file .* only for rsync://"):
        config_from_args(_run_flags("--destination", url, "--destination-id", "d=/srv/d",
                                    "--rsync-password-file", str(secret)))
