"""Links planted in the work directory never make the pipeline write outside it.

Every artifact is written to a temporary name and renamed over the target: a rename replaces a
symbolic link, it does not follow it. The one name written in place (the download's `.part`,
appended to on resume) is checked: a link there is removed, not written through.

Also here: the gallery honours the umask. Elsewhere: umask for the data pipeline
(tests/reliability/test_reliability_concurrency.py::test_files_follow_the_users_umask),
credentials (tests/reliability/test_reliability_inputs.py::test_credentials_and_home_path_are_written_nowhere),
HTML escaping (tests/evaluation/test_gallery.py::test_html_escapes_malicious_id).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from segpipe.data.download import download_archive, resolve_source
from segpipe.data.extract import extract_archive
from segpipe.fsutil import atomic_write_json, file_lock
from tests.faults import sha
from tests.httpserver import LoopbackServer
from tests.synthetic import make_pets_archives, make_pets_tree

NAME = "images.tar.gz"
PRECIOUS = b"precious, outside WORK\n"


@pytest.fixture()
def outside(tmp_path) -> Path:
    """A directory outside WORK holding a file that must never change."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "precious.txt").write_bytes(PRECIOUS)
    return d


def untouched(outside: Path) -> bool:
    return sorted(p.name for p in outside.iterdir()) == ["precious.txt"] and (
        (outside / "precious.txt").read_bytes() == PRECIOUS)


def test_link_planted_at_the_part_file_is_not_written_through(tmp_path, outside):
    payload = os.urandom(100_000)
    dest = tmp_path / "work" / "downloads"
    dest.mkdir(parents=True)
    (dest / f"{NAME}.part").symlink_to(outside / "precious.txt")
    with LoopbackServer({NAME: payload}) as srv:
        result = download_archive(resolve_source(srv.url), NAME, dest, expected_sha256=sha(payload), progress=False)
        assert "Range" not in srv.gets(NAME)[0].headers  # the link's target was not taken for a partial download
    assert untouched(outside)
    assert result.path.read_bytes() == payload and not result.path.is_symlink()


def test_link_planted_at_the_archive_name_is_quarantined_not_followed(tmp_path, outside):
    payload = os.urandom(50_000)
    dest = tmp_path / "work" / "downloads"
    dest.mkdir(parents=True)
    (dest / NAME).symlink_to(outside / "precious.txt")  # wrong content: it gets moved aside
    with LoopbackServer({NAME: payload}) as srv:
        result = download_archive(resolve_source(srv.url), NAME, dest, expected_sha256=sha(payload), progress=False)
    assert untouched(outside)
    assert result.path.read_bytes() == payload and not result.path.is_symlink()
    (bad,) = (dest / "quarantine").iterdir()
    assert bad.is_symlink()  # the link itself was moved, its target left alone


def test_link_planted_at_the_extraction_dir_is_replaced(tmp_path, outside):
    root = tmp_path / "src"
    make_pets_archives(root, n_per_breed=1, include_odd=False)
    dest = tmp_path / "work" / "extracted" / "digest"
    dest.parent.mkdir(parents=True)
    dest.symlink_to(outside, target_is_directory=True)
    result = extract_archive(root / "annotations.tar.gz", dest)
    assert untouched(outside)
    assert not dest.is_symlink() and (result.dest / "annotations" / "list.txt").is_file()


def test_links_planted_in_a_dataset_dir_are_replaced_by_the_atomic_renames(tmp_path, outside):
    import tensorflow  # noqa: F401 - fails, not skips, on a broken install
    from segpipe.data.tfrecords import verify_dataset
    from tests.faults import write_dataset

    tree = make_pets_tree(tmp_path / "tree", n_per_breed=2, include_odd=False)
    archives = {"images.tar.gz": "a" * 64, "annotations.tar.gz": "b" * 64}
    planted = sorted(p.name for p in write_dataset(tree.images_dir, tree.annotations_dir, tmp_path / "probe",
                                                   archives).iterdir())  # every name the dataset will have
    assert "manifest.json" in planted and sum(n.endswith(".tfrecord") for n in planted) >= 3
    out = tmp_path / "work" / "datasets" / "key"
    out.mkdir(parents=True)
    for name in planted:
        (out / name).symlink_to(outside / "precious.txt")
    write_dataset(tree.images_dir, tree.annotations_dir, out, archives)
    assert untouched(outside)
    assert verify_dataset(out) == []
    assert [n for n in planted if (out / n).is_symlink()] == []


def test_atomic_write_replaces_a_dangling_link_without_creating_its_target(tmp_path, outside):
    link = tmp_path / "work" / "state.json"
    link.parent.mkdir()
    link.symlink_to(outside / "would-be-created.json")
    atomic_write_json(link, {"ok": True})
    assert untouched(outside) and not link.is_symlink() and link.read_text().strip().startswith("{")


def test_link_planted_at_a_lock_file_creates_nothing_outside(tmp_path, outside):
    lock = tmp_path / "work" / "downloads" / f".{NAME}.lock"
    lock.parent.mkdir(parents=True)
    lock.symlink_to(outside / "created-by-lock")
    with pytest.raises(OSError, match="refusing to follow the symbolic link at lock file") as info:
        with file_lock(lock, timeout=5):
            pass  # pragma: no cover - the link is refused before the lock is taken
    assert info.value.errno == errno.ELOOP and str(lock) in str(info.value)
    assert untouched(outside) and lock.is_symlink()  # refused, not followed, nothing created outside


def test_gallery_honours_the_umask(tmp_path):
    """Under umask 027 the gallery is not world-readable: its directories are rwxr-x---
    (it was always 0755 before) and its files at most rw-r-----."""
    from segpipe.gallery.render import render_gallery
    from tests.evaluation.test_gallery import make_item

    previous = os.umask(0o027)
    try:
        index = render_gallery([make_item("a", 1, "worst"), make_item("b", 2)], tmp_path / "gallery", title="umask")
    finally:
        os.umask(previous)
    gallery = index.parent
    dirs = [gallery, *(p for p in gallery.rglob("*") if p.is_dir())]
    files = [p for p in gallery.rglob("*") if p.is_file()]
    assert len(files) >= 4  # index.html, items.json, a contact sheet, the tiles
    assert {oct(p.stat().st_mode & 0o777) for p in dirs} == {oct(0o750)}
    assert [p.name for p in files if p.stat().st_mode & 0o027] == []  # nothing for others, no group write
