"""Download stage against a loopback HTTP server and local directories (no network)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import requests

from segpipe.data.download import (
    ChecksumMismatchError,
    Source,
    SourceError,
    TransientDownloadError,
    download_archive,
    expected_digests,
    is_transient,
    parse_sha256sums,
    resolve_source,
    source_fingerprint,
    verify_archive,
)
from tests.httpserver import Fault, LoopbackServer, closed_port_url, etag
from tests.threads import run_at_once

NAME = "images.tar.gz"
SIZE = 300_000
CHUNK = 16 * 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture()
def payload() -> bytes:
    return os.urandom(SIZE)


@pytest.fixture()
def other() -> bytes:
    return os.urandom(50_000)


@pytest.fixture()
def server(payload: bytes, other: bytes):
    with LoopbackServer({NAME: payload, "annotations.tar.gz": other}) as srv:
        yield srv


def fetch(srv_or_source, dest: Path, expected: str | None, **kw):
    source = srv_or_source if isinstance(srv_or_source, Source) else resolve_source(srv_or_source.url)
    kw.setdefault("timeout", 5)
    kw.setdefault("progress", False)
    return download_archive(source, NAME, dest, expected_sha256=expected, chunk_size=CHUNK, **kw)


def test_full_http_download_with_checksum(server, payload, tmp_path):
    calls = []
    result = fetch(server, tmp_path, sha(payload), on_progress=lambda done, total: calls.append((done, total)))
    assert result.path == tmp_path / NAME
    assert result.path.read_bytes() == payload
    assert (result.sha256, result.size, result.resumed_from) == (sha(payload), SIZE, 0)
    assert result.source_url == server.url + NAME
    assert not (tmp_path / (NAME + ".part")).exists()
    assert calls[-1] == (SIZE, SIZE)
    assert server.gets(NAME)[0].headers.get("Accept-Encoding") == "identity"


def test_existing_good_file_is_not_downloaded_again(server, payload, tmp_path):
    fetch(server, tmp_path, sha(payload))
    again = fetch(server, tmp_path, sha(payload))
    assert again.cached and again.sha256 == sha(payload)
    assert len(server.gets(NAME)) == 1


def test_existing_bad_file_is_quarantined_and_replaced(server, payload, tmp_path):
    (tmp_path / NAME).write_bytes(b"stale junk")
    result = fetch(server, tmp_path, sha(payload))
    assert result.path.read_bytes() == payload
    bad = tmp_path / "quarantine" / f"{NAME}.{sha(b'stale junk')[:12]}.bad"
    assert bad.read_bytes() == b"stale junk"


def test_resume_after_the_server_cuts_the_body(server, payload, tmp_path):
    server.faults[NAME] = Fault(cut_after=100_000, times=1)
    with pytest.raises(TransientDownloadError, match="127.0.0.1"):
        fetch(server, tmp_path, sha(payload))
    part = tmp_path / (NAME + ".part")
    assert part.read_bytes() == payload[:100_000]
    assert not (tmp_path / NAME).exists()

    result = fetch(server, tmp_path, sha(payload))
    first, second = server.gets(NAME)
    assert "Range" not in first.headers
    assert second.headers["Range"] == "bytes=100000-"
    assert second.headers["If-Range"] == etag(payload)  # resume only if the file is unchanged
    assert second.status == 206
    assert result.resumed_from == 100_000
    assert result.sha256 == sha(payload) and result.path.read_bytes() == payload
    assert server.bytes_sent(NAME) == SIZE  # not 2x: only the missing tail was sent again
    assert not part.exists()


def test_server_ignoring_range_restarts_cleanly(server, payload, tmp_path):
    (tmp_path / (NAME + ".part")).write_bytes(payload[:70_000])
    server.faults[NAME] = Fault(ignore_range=True)
    result = fetch(server, tmp_path, sha(payload))
    req = server.gets(NAME)[0]
    assert req.headers["Range"] == "bytes=70000-" and req.status == 200
    assert result.resumed_from == 0
    assert result.path.read_bytes() == payload and result.sha256 == sha(payload)


def test_changed_remote_file_is_not_spliced_onto_an_old_part(server, payload, tmp_path):
    server.faults[NAME] = Fault(cut_after=60_000, times=1)
    with pytest.raises(TransientDownloadError):
        fetch(server, tmp_path, None)
    new = os.urandom(SIZE)
    server.files[NAME] = new  # the ETag changes; If-Range makes the server send the whole new file
    result = fetch(server, tmp_path, None)
    assert server.gets(NAME)[1].headers["If-Range"] and server.gets(NAME)[1].status == 200
    assert result.path.read_bytes() == new and result.sha256 == sha(new) and result.resumed_from == 0


def test_complete_part_with_416_is_finished_without_a_body(server, payload, tmp_path):
    (tmp_path / (NAME + ".part")).write_bytes(payload)
    result = fetch(server, tmp_path, sha(payload))
    assert server.gets(NAME)[0].status == 416
    assert server.bytes_sent(NAME) == 0
    assert result.path.read_bytes() == payload and result.resumed_from == SIZE


def test_503_then_success_across_two_calls_keeps_the_part(server, payload, tmp_path):
    server.faults[NAME] = Fault(cut_after=40_000, times=1)
    with pytest.raises(TransientDownloadError):
        fetch(server, tmp_path, sha(payload))
    server.faults[NAME] = Fault(status=503, times=1)
    with pytest.raises(TransientDownloadError, match="503") as info:
        fetch(server, tmp_path, sha(payload))
    assert is_transient(info.value)
    assert (tmp_path / (NAME + ".part")).stat().st_size == 40_000
    result = fetch(server, tmp_path, sha(payload))
    assert result.resumed_from == 40_000 and result.path.read_bytes() == payload
    assert [r.status for r in server.gets(NAME)] == [200, 503, 206]


def test_stalled_server_times_out_as_transient(server, payload, tmp_path):
    server.faults[NAME] = Fault(stall=3, times=1)
    with pytest.raises(TransientDownloadError, match="--source"):
        fetch(server, tmp_path, sha(payload), timeout=0.5)


def test_checksum_mismatch_quarantines_and_names_both_digests(server, payload, tmp_path):
    wrong = "0" * 64
    with pytest.raises(ChecksumMismatchError) as info:
        fetch(server, tmp_path, wrong)
    msg = str(info.value)
    assert wrong in msg and sha(payload) in msg and NAME in msg and "127.0.0.1" in msg
    assert not is_transient(info.value) and isinstance(info.value, ValueError)
    assert not (tmp_path / NAME).exists() and not (tmp_path / (NAME + ".part")).exists()
    bad = tmp_path / "quarantine" / f"{NAME}.{sha(payload)[:12]}.bad"
    assert info.value.quarantined == bad and bad.read_bytes() == payload


def test_404_is_a_source_error_not_transient(server, tmp_path):
    server.faults[NAME] = Fault(status=404)
    with pytest.raises(SourceError, match="404") as info:
        fetch(server, tmp_path, None)
    assert not is_transient(info.value)


def test_unreachable_source_is_transient_and_mentions_source_flag(tmp_path):
    url = closed_port_url()
    with pytest.raises(TransientDownloadError) as info:
        fetch(resolve_source(url), tmp_path, None)
    msg = str(info.value)
    assert url + NAME in msg and NAME in msg
    assert msg.endswith("check your network or point --source at a mirror or a local directory "
                        "holding images.tar.gz and annotations.tar.gz")


@pytest.mark.parametrize("first", ["missing", "closed"])
def test_mirror_fallback(server, payload, tmp_path, first):
    bad = server.url + "nothing-here/" if first == "missing" else closed_port_url()
    source = Source("http", (bad, server.url))
    result = fetch(source, tmp_path, sha(payload))
    assert result.source_url == server.url + NAME and result.path.read_bytes() == payload


def test_local_directory_and_file_url_sources(payload, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / NAME).write_bytes(payload)
    for i, spec in enumerate([str(src), src.as_uri()]):
        source = resolve_source(spec)
        assert source == Source("local", (str(src.resolve()),))
        dest = tmp_path / f"dest{i}"
        result = fetch(source, dest, sha(payload))
        assert result.path.read_bytes() == payload and result.sha256 == sha(payload)
        assert result.source_url == str(src.resolve() / NAME)
    with pytest.raises(SourceError, match="annotations.tar.gz not found"):
        download_archive(resolve_source(str(src)), "annotations.tar.gz", tmp_path / "d", expected_sha256=None)


def test_two_concurrent_downloads_fetch_once(server, payload, tmp_path):
    server.faults[NAME] = Fault(stall=0.3, times=1)
    results = run_at_once(lambda: fetch(server, tmp_path, sha(payload)), 2)
    assert sorted(r.cached for r in results) == [False, True]
    assert len(server.gets(NAME)) == 1


def test_sha256sums_over_http(server, payload, other):
    source = resolve_source(server.url)
    assert expected_digests(source, 5) == {"images.tar.gz": None, "annotations.tar.gz": None}
    server.files["SHA256SUMS"] = f"# comment\n{sha(payload)}  images.tar.gz\n{sha(other).upper()} *annotations.tar.gz\n".encode()
    assert expected_digests(source, 5) == {"images.tar.gz": sha(payload), "annotations.tar.gz": sha(other)}
    server.files["SHA256SUMS"] = b"not a checksum line\n"
    with pytest.raises(SourceError, match=r"SHA256SUMS line 1 is malformed.*sha256sum format"):
        expected_digests(source, 5)


def test_sha256sums_local(payload, tmp_path):
    source = resolve_source(str(tmp_path))
    assert expected_digests(source) == {"images.tar.gz": None, "annotations.tar.gz": None}
    (tmp_path / "SHA256SUMS").write_text(f"{sha(payload)}  ./images.tar.gz\n")
    assert expected_digests(source) == {"images.tar.gz": sha(payload), "annotations.tar.gz": None}
    (tmp_path / "SHA256SUMS").write_text(f"{sha(payload)[:20]}  images.tar.gz\n")
    with pytest.raises(SourceError, match="malformed"):
        expected_digests(source)


def test_parse_sha256sums_formats():
    a, b = "a" * 64, "B" * 64
    assert parse_sha256sums(f"{a}  x.tar.gz\n\n{b} *y z.tar.gz\r\n", "f") == {"x.tar.gz": a, "y z.tar.gz": b.lower()}
    with pytest.raises(SourceError, match="f line 2"):
        parse_sha256sums(f"{a}  x\n{a}x\n", "f")


# Recorded independently of segpipe (copied here, not from segpipe.data.download): the sha256s that
# tensorflow-datasets and torchvision's prototype datasets check for the Oxford-IIIT Pet archives, their
# sizes, and the md5s torchvision's OxfordIIITPet checks.
PUBLISHED = {
    "images.tar.gz": (791_918_971, "67195c5e1c01f1ab5f9b6a5d22b8c27a580d896ece458917e61d459337fa318d",
                      "5c4f3ee8e5d25df40f4fd59a7f44e54c"),
    "annotations.tar.gz": (19_173_078, "52425fb6de5c424942b7626b428656fcbd798db970a937df61750c0f1d358e91",
                           "95a8c909bbe2e81eed6a22bccdf3f68f"),
}


def test_official_digests_are_the_published_ones_and_need_no_network():
    from segpipe.data.download import OFFICIAL_DIGESTS, OFFICIAL_MD5S, OFFICIAL_SIZES

    source = resolve_source("official")
    assert source.locations == ("https://www.robots.ox.ac.uk/~vgg/data/pets/data/",
                                "https://thor.robots.ox.ac.uk/datasets/pets/") and source.is_official
    assert OFFICIAL_DIGESTS == expected_digests(source) == {name: sha for name, (_, sha, _) in PUBLISHED.items()}
    assert source_fingerprint(source) == {name: f"sha256:{sha}" for name, (_, sha, _) in PUBLISHED.items()}
    assert OFFICIAL_SIZES == {name: size for name, (size, _, _) in PUBLISHED.items()}
    assert OFFICIAL_MD5S == {name: md5 for name, (_, _, md5) in PUBLISHED.items()}


def test_source_fingerprint_http_and_local(server, payload, other, tmp_path):
    fp = source_fingerprint(resolve_source(server.url), 5)
    assert fp[NAME].startswith(server.url + NAME + f"|{SIZE}|\"")
    server.files[NAME] = payload[::-1]
    assert source_fingerprint(resolve_source(server.url), 5)[NAME] != fp[NAME]
    server.files["SHA256SUMS"] = f"{sha(payload)}  images.tar.gz\n".encode()
    assert source_fingerprint(resolve_source(server.url), 5)[NAME] == f"sha256:{sha(payload)}"

    (tmp_path / NAME).write_bytes(payload)
    with pytest.raises(SourceError, match=r"source directory .* has no annotations\.tar\.gz; expected"):
        source_fingerprint(resolve_source(str(tmp_path)))
    (tmp_path / "annotations.tar.gz").write_bytes(other)
    assert source_fingerprint(resolve_source(str(tmp_path))) == {
        NAME: f"sha256:{sha(payload)}", "annotations.tar.gz": f"sha256:{sha(other)}"
    }


def test_resolve_source_forms_and_errors(tmp_path):
    assert resolve_source("http://example.org/pets").locations == ("http://example.org/pets/",)
    assert resolve_source(" https://example.org/p/ ").locations == ("https://example.org/p/",)
    creds = resolve_source("https://user:s3cret@example.org/pets/")
    assert "s3cret" not in creds.describe() and "example.org/pets/" in creds.describe()
    assert creds.locations == ("https://user:s3cret@example.org/pets/",)  # still usable for requests
    for bad, needle in [
        ("ftp://example.org/pets/", "unsupported source"),
        ("http:///nohost", "no host"),
        ("https://example.org/pets/images.tar.gz", "base URL"),
        (str(tmp_path / "missing"), "does not exist"),
        ("file://otherhost/data", "local path"),
        ("", "unsupported source"),
    ]:
        with pytest.raises(SourceError, match=needle) as info:
            resolve_source(bad)
        assert "images.tar.gz and annotations.tar.gz" in str(info.value)
    afile = tmp_path / "f.txt"
    afile.write_text("x")
    with pytest.raises(SourceError, match="is not a directory"):
        resolve_source(str(afile))


def test_verify_archive(tmp_path):
    path = tmp_path / "annotations.tar.gz"
    path.write_bytes(b"abc")
    assert verify_archive(path, sha(b"abc").upper()) == sha(b"abc")
    with pytest.raises(ChecksumMismatchError, match=sha(b"abc")):
        verify_archive(path, "f" * 64)
    assert not path.exists()
    assert (tmp_path / "quarantine" / f"annotations.tar.gz.{sha(b'abc')[:12]}.bad").read_bytes() == b"abc"


def test_malformed_expected_digest_never_quarantines(server, payload, tmp_path):
    fetch(server, tmp_path, sha(payload))
    with pytest.raises(ValueError, match="64 hex digits, got 'abc123'"):
        fetch(server, tmp_path, "abc123")
    with pytest.raises(ValueError, match="64 hex digits"):
        verify_archive(tmp_path / NAME, sha(payload)[:-1])
    assert (tmp_path / NAME).read_bytes() == payload and not (tmp_path / "quarantine").exists()


def test_is_transient_classification():
    assert is_transient(TransientDownloadError("x"))
    assert is_transient(requests.ConnectionError("x"))
    assert is_transient(requests.Timeout("x"))
    assert not is_transient(SourceError("x"))
    assert not is_transient(ChecksumMismatchError("x", path=Path("p"), expected="a", actual="b", quarantined=Path("q")))
    assert not is_transient(KeyError("x"))


def test_progress_bar_only_when_asked(server, payload, tmp_path, capsys):
    fetch(server, tmp_path / "a", None, progress=None)  # stderr is not a TTY under pytest: no bar
    assert capsys.readouterr().err == ""
    fetch(server, tmp_path / "b", None, progress=True)
    err = capsys.readouterr().err
    assert f"{NAME}: 0.3/0.3 MB 100.0%" in err and "MB/s" in err and err.endswith("\n")


def test_the_stage_code_key_reaches_every_part_and_their_names_importable_from_download():
    from segpipe.codekeys import module_closure
    from segpipe.data import dataset, download

    parts = {f"segpipe.data.{m}" for m in ("download", "sources", "checksums", "fetch", "progress", "download_errors")}
    assert parts <= set(module_closure(dataset.DOWNLOAD_ENTRY))
    assert {"ChecksumMismatchError", "Source", "download_archive", "resolve_source", "source_fingerprint",
            "verify_archive", "is_transient", "expected_digests"} <= set(download.__all__)
    assert all(hasattr(download, name) for name in download.__all__)
