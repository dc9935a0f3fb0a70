"""Hostile and broken inputs: bad images through the whole flow, hostile archives, bad parameters,
credentials in the source URL.

Already covered elsewhere (RELIABILITY.md points there): wrong checksum (test_download, test_extract,
test_prepare_flow), unsafe archive members (test_extract), each bad image kind (test_validate).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from segpipe_app.cli.main import main
from segpipe.data.extract import ArchiveError, UnsafeArchiveError, extract_archive
from tests.faults import decoded_contents, leftover_temps, sha
from tests.httpserver import LoopbackServer
from tests.synthetic import make_pets_archives, make_pets_tree
from tests.data.test_validate import CONVERTED_REASONS, SKIPPED

SECRET = "s3cr3t-pa55"


def run_prepare_flow(source: str, work: Path, storage: Path, **overrides):
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    from segpipe_app.flows.prepare_data import prepare_data_flow
    from segpipe.config import build_config

    with temporary_settings(updates={PREFECT_LOCAL_STORAGE_PATH: str(storage)}):
        return prepare_data_flow(config=build_config("tiny", {"data.source": source, **overrides}), work_dir=str(work))


@pytest.fixture(scope="module")
def flow_run(prefect_api, tmp_path_factory):
    """One `prepare-data` run over archives holding every bad image kind, from a URL with a password,
    with Prefect's results kept in WORK/prefect-results as the CLI does."""
    root = tmp_path_factory.mktemp("inputs")
    digests = make_pets_archives(root / "src", plain_tar_for_images=True)
    info = make_pets_tree(root / "tree")
    files = {name: (root / "src" / name).read_bytes() for name in (*digests, "SHA256SUMS")}
    work = root / "work"
    with LoopbackServer(files) as srv:
        url = f"http://reader:{SECRET}@127.0.0.1:{srv.port}/"
        ref = run_prepare_flow(url, work, work / "prefect-results")
        auth = srv.gets("images.tar.gz")[0].headers.get("Authorization", "")
    return {"ref": ref, "info": info, "work": work, "auth": auth}


# --------------------------------------------------------------------------- bad images, end to end


def test_flow_completes_and_reports_every_bad_image(flow_run):
    from segpipe.data.tfrecords import verify_dataset

    ref, info = flow_run["ref"], flow_run["info"]
    dataset = Path(ref.path)
    assert verify_dataset(dataset) == []
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["num_examples"] == len(info.valid) == sum(ref.num_examples.values())
    assert manifest["validation"]["skipped"] == len(info.skipped) == len(SKIPPED)
    assert manifest["validation"]["converted"] == len(info.converted) == len(CONVERTED_REASONS)

    validation = json.loads((dataset / "validation.json").read_text())
    skipped = {r["id"]: r for r in validation["skipped"]}
    for kind, (where, words) in SKIPPED.items():
        row = skipped[info.kinds[kind]]
        assert words in row["reason"] and row["file"].startswith("images/" if where == "images" else "annotations/")
    converted = {r["id"]: r["reason"] for r in validation["converted"]}
    assert converted == {info.kinds[k]: reason for k, reason in CONVERTED_REASONS.items()}
    assert {r["id"] for r in validation["missing"]} == set(info.missing)

    report = (dataset / "validation.md").read_text()
    for kind in (*SKIPPED, *CONVERTED_REASONS):
        assert f"| {info.kinds[kind]} |" in report, kind
    for kind, (_, words) in SKIPPED.items():
        assert words in report


def test_credentials_and_home_path_are_written_nowhere(flow_run):
    """The password in the source URL is used (HTTP Basic) but never written under WORK; nor is $HOME."""
    work = flow_run["work"]
    assert flow_run["auth"].startswith("Basic ")  # it did reach the server
    needles = [SECRET.encode()]
    home = os.path.expanduser("~")
    if home not in ("", "/") and not str(work).startswith(home):
        needles.append(home.encode() + b"/")
    archives = {work / "downloads" / "images.tar.gz", work / "downloads" / "annotations.tar.gz"}
    scanned, hits, sources_seen = 0, [], 0
    for path in work.rglob("*"):
        if path.is_file() and path not in archives:
            data = decoded_contents(path)
            scanned += 1
            hits += [(str(path.relative_to(work)), n.decode()) for n in needles if n in data]
            sources_seen += b"http://127.0.0.1:" in data  # the source as recorded, password removed
    assert scanned > 50 and sources_seen >= 2  # the scan does read inside Prefect's encoded results
    assert hits == []


# --------------------------------------------------------------------------- hostile archives (beyond test_extract)


def test_archive_truncated_mid_member_leaves_nothing(tmp_path):
    """A cut .tar.gz whose first members are whole: the members already written must go too."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for i in range(50):
            data = os.urandom(4096)
            member = tarfile.TarInfo(f"images/x{i}.jpg")
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    archive = tmp_path / "cut.tar.gz"
    whole = gzip.compress(raw.getvalue())
    archive.write_bytes(whole[: len(whole) * 2 // 3])
    dest = tmp_path / "work" / "extracted" / "d"
    with pytest.raises(ArchiveError, match="delete it so that it is downloaded again"):
        extract_archive(archive, dest)
    assert not dest.exists() and leftover_temps(tmp_path / "work") == []


def test_hostile_archive_stops_the_flow_before_anything_is_trusted(prefect_api, tmp_path):
    """A verified (checksum-matching) archive with a '..' member: the flow fails naming the member,
    nothing is written outside WORK, nothing is marked complete, no dataset."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, data in [("annotations/list.txt", b"a_1 1 1 1\n"), ("annotations/../../../escaped.txt", b"evil")]:
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    root = tmp_path / "src"
    make_pets_archives(root, n_per_breed=1, include_odd=False)
    (root / "annotations.tar.gz").write_bytes(raw.getvalue())
    files = {n: (root / n).read_bytes() for n in ("images.tar.gz", "annotations.tar.gz")}
    files["SHA256SUMS"] = "".join(f"{sha(d)}  {n}\n" for n, d in files.items()).encode()
    work = tmp_path / "deep" / "er" / "work"
    with LoopbackServer(files) as srv, pytest.raises(UnsafeArchiveError, match=r"path traversal") as info:
        run_prepare_flow(srv.url, work, tmp_path / "results")
    assert "annotations/../../../escaped.txt" in str(info.value)
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not list(work.glob("extracted/*/annotations"))  # the hostile archive left nothing
    assert not list(work.glob("datasets/*/manifest.json"))


# --------------------------------------------------------------------------- bad parameters (beyond test_cli)


@pytest.mark.parametrize(
    "argv, field",
    [
        (["run", "--model", "nope"], "model.name"),
        (["run", "--preset", "tiny", "--epochs", "-1"], "train.epochs"),
        (["train", "--preset", "tiny", "--img-size", "30"], "train.img_size"),
        (["run", "--model", "deeplabv3plus", "--img-size", "100"], "train.img_size"),
        (["prepare", "--seed", str(2**32)], "data.seed"),
        (["run", "--train-seed", "-5"], "train.seed"),
        (["prepare", "--workers", "0"], "data.workers"),
        (["prepare", "--shard-size-mb", "-1"], "data.shard_size_mb"),
        (["prepare", "--download-timeout", "0"], "data.download_timeout_s"),
        (["prepare", "--source", "  "], "data.source"),
        (["prepare", "--split", "random", "--val-fraction", "0.6", "--test-fraction", "0.5"],
         "val_fraction + test_fraction"),
        (["run", "--set", "train.no_such_field=1"], "train.no_such_field"),
    ],
)
def test_bad_parameters_are_rejected_before_any_work(argv, field, tmp_path, capsys):
    work = tmp_path / "work"
    assert main([*argv, "--work-dir", str(work)]) == 2
    assert field in capsys.readouterr().err
    assert not work.exists()


def test_unknown_preset_is_rejected_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["prepare", "--preset", "nope", "--work-dir", str(tmp_path / "work")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--preset" in err and "'nope'" in err and "cpu-quick" in err
    assert not (tmp_path / "work").exists()


def test_bad_config_file_values_name_the_field(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"data": {"seed": -1}, "train": {"epochs": 0}}))
    assert main(["prepare", "--config", str(cfg), "--work-dir", str(tmp_path / "work")]) == 2
    err = capsys.readouterr().err
    assert "data.seed" in err and "train.epochs" in err and not (tmp_path / "work").exists()


@pytest.mark.parametrize("how", ["config-file", "set"])
def test_a_preset_named_in_a_config_file_or_set_is_not_silently_ignored(how, tmp_path, capsys):
    """A preset in --config or --set is honoured, an unknown one rejected; --preset wins over both."""

    def argv(preset: str) -> list[str]:
        cfg = tmp_path / f"{preset}.json"
        cfg.write_text(json.dumps({"preset": preset}))
        return ["config", "--config", str(cfg)] if how == "config-file" else ["config", "--set", f"preset={preset}"]

    assert main(argv("nope")) == 2
    err = capsys.readouterr().err
    assert "unknown preset 'nope'" in err and "cpu-quick" in err
    assert main(argv("tiny")) == 0
    assert json.loads(capsys.readouterr().out)["preset"] == "tiny"
    assert main([*argv("tiny"), "--preset", "cpu-quick"]) == 0
    assert json.loads(capsys.readouterr().out)["preset"] == "cpu-quick"


def _restoring_env():
    saved = dict(os.environ)

    def restore() -> None:
        os.environ.clear()
        os.environ.update(saved)

    return restore


def test_missing_source_directory_is_rejected_before_any_work(prefect_api, tmp_path, capsys):
    """`--source` a directory that does not exist: exit 2 with a clear message before Prefect starts
    and before WORK is created."""
    restore = _restoring_env()
    try:
        rc = main(["prepare", "--preset", "tiny", "--source", str(tmp_path / "nope"),
                   "--work-dir", str(tmp_path / "w")])
    finally:
        restore()
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("segpipe prepare: data.source (--source): ")
    assert f"{tmp_path / 'nope'} does not exist" in err and "images.tar.gz and annotations.tar.gz" in err
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("present", [(), ("images.tar.gz",)])
def test_a_source_directory_without_both_archives_is_rejected_before_any_work(tmp_path, capsys, present):
    """`--source` an existing directory that lacks an archive (the wrong folder, a half-copied one): exit 2 naming
    what is missing, before Prefect starts and before WORK is created."""
    src = tmp_path / "src"
    src.mkdir()
    for name in present:
        (src / name).write_bytes(b"present")
    rc = main(["prepare", "--preset", "tiny", "--source", str(src), "--work-dir", str(tmp_path / "w")])
    err = capsys.readouterr().err
    missing = " and no ".join(n for n in ("images.tar.gz", "annotations.tar.gz") if n not in present)
    assert rc == 2 and err.startswith("segpipe prepare: data.source (--source): ")
    assert f"source directory {src} has no {missing};" in err, err
    assert not (tmp_path / "w").exists()
