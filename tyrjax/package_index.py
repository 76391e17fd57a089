"""Files fetched from the Python package index that pip is configured to use, checked by sha256.

The index is the one pip's configuration names (`index-url` and `extra-index-url`, from pip's
config files or `PIP_INDEX_URL` / `PIP_EXTRA_INDEX_URL`), read through its simple API
(PEP 503 HTML or PEP 691 JSON; `http(s)://` or a local `file://` mirror). A file is found by
its exact name on the project's page and downloaded as bytes: no package code runs, not even
an sdist's build backend. Every file is pinned to a sha256; a download is written beside its
target and renamed into place only once it matches.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import ssl
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from tyrjax.errors import TyrjaxError

PIP_DEFAULT_INDEX = "https://pypi.org/simple"
_ACCEPT = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.1"
_TIMEOUT_S = 60
_CHUNK = 1 << 20


@dataclass(frozen=True)
class PinnedFile:
    """One file of one project on the index, and the sha256 it must have."""

    project: str
    filename: str
    sha256: str


@dataclass(frozen=True)
class IndexFile:
    """One file listed on a project's simple-API page; `sha256` is None when the page gives none."""

    filename: str
    url: str
    sha256: str | None


@dataclass(frozen=True)
class IndexSettings:
    """Where pip looks for packages: the main index, the extra ones, and the CA bundle to trust."""

    index_url: str = PIP_DEFAULT_INDEX
    extra_index_urls: tuple[str, ...] = ()
    cert: str | None = None

    @property
    def urls(self) -> tuple[str, ...]:
        return (self.index_url, *self.extra_index_urls)


def normalise_project(name: str) -> str:
    """PEP 503 normalised project name: the path segment of its simple-API page."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pip_config(listing: str) -> dict[str, str]:
    """`pip config list` output (`section.key='value'` lines) as a dict."""
    values = {}
    for line in listing.splitlines():
        key, sep, value = line.partition("=")
        if sep and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            values[key.strip()] = value[1:-1]
    return values


def settings_from_config(values: dict[str, str]) -> IndexSettings:
    """The index settings `pip download` would use: the environment over a `download` section over `global`."""

    def setting(key: str) -> str | None:
        for section in (":env:", "download", "global"):
            if f"{section}.{key}" in values:
                return values[f"{section}.{key}"]
        return None

    return IndexSettings(
        index_url=setting("index-url") or PIP_DEFAULT_INDEX,
        extra_index_urls=tuple((setting("extra-index-url") or "").split()),
        cert=setting("cert"),
    )


def pip_index_settings() -> IndexSettings:
    """Ask this interpreter's pip for its configuration; without pip, read pip's environment variables."""
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60
        )
        listing = result.stdout if result.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        listing = None
    if listing is None:
        env = {"index-url": "PIP_INDEX_URL", "extra-index-url": "PIP_EXTRA_INDEX_URL", "cert": "PIP_CERT"}
        listing = "\n".join(f":env:.{k}='{os.environ[v]}'" for k, v in env.items() if v in os.environ)
    return settings_from_config(parse_pip_config(listing))


class _Anchors(HTMLParser):
    """Every `<a href=...>text</a>` of a page, as (href, text)."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href, self._text = dict(attrs).get("href"), []

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._href is not None:
            self.links.append((self._href, "".join(self._text).strip()))
            self._href = None


def _sha256_fragment(url: str) -> str | None:
    fragment = urllib.parse.urlsplit(url).fragment
    name, _, value = fragment.partition("=")
    return value.lower() if name == "sha256" and value else None


def parse_simple_page(body: bytes, content_type: str, page_url: str) -> list[IndexFile]:
    """The files listed on a project's simple-API page, with absolute URLs (PEP 691 JSON or PEP 503 HTML)."""
    if "json" in content_type:
        page = json.loads(body)
        return [
            IndexFile(f["filename"], urllib.parse.urljoin(page_url, f["url"]), f.get("hashes", {}).get("sha256"))
            for f in page.get("files", [])
        ]
    parser = _Anchors()
    parser.feed(body.decode("utf-8", errors="replace"))
    files = []
    for href, text in parser.links:
        url = urllib.parse.urljoin(page_url, href)
        name = text or Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
        files.append(IndexFile(name, urllib.parse.urldefrag(url).url, _sha256_fragment(url)))
    return files


def _open(url: str, settings: IndexSettings, accept: str | None = None):
    """urlopen for http(s) and file URLs; a `file://` directory serves its index.html, as pip reads it."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        path = Path(urllib.request.url2pathname(parts.path))
        if path.is_dir():
            url = (path / "index.html").as_uri()
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    context = ssl.create_default_context(cafile=settings.cert) if parts.scheme == "https" and settings.cert else None
    return urllib.request.urlopen(request, timeout=_TIMEOUT_S, context=context)


def project_files(project: str, index_url: str, settings: IndexSettings) -> list[IndexFile]:
    """The files of `project` on one index; empty when the index does not have the project."""
    page_url = f"{index_url.rstrip('/')}/{normalise_project(project)}/"
    try:
        with _open(page_url, settings, _ACCEPT) as response:
            return parse_simple_page(response.read(), response.headers.get("Content-Type", ""), page_url)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return []
        raise TyrjaxError(f"could not read {page_url} (HTTP {exc.code}: {exc.reason}); check pip's index settings") from exc
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, FileNotFoundError):
            return []
        raise TyrjaxError(f"could not read {page_url} ({exc.reason}); check the network or pip's index settings") from exc


def locate(pinned: PinnedFile, settings: IndexSettings) -> IndexFile | None:
    """The pinned file on the first configured index that lists it, or None if none does."""
    for index_url in settings.urls:
        for listed in project_files(pinned.project, index_url, settings):
            if listed.filename == pinned.filename:
                if listed.sha256 is not None and listed.sha256 != pinned.sha256:
                    raise TyrjaxError(
                        f"{pinned.filename} on {index_url} has sha256 {listed.sha256}, not the pinned "
                        f"{pinned.sha256}; that index serves a different file"
                    )
                return listed
    return None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: Path, sha256: str) -> Path:
    """`path` if its sha256 is `sha256`; otherwise delete it and raise a TyrjaxError naming it."""
    actual = file_sha256(path)
    if actual != sha256:
        path.unlink(missing_ok=True)
        raise TyrjaxError(
            f"{path} has sha256 {actual}, not the pinned {sha256}; it was deleted: retry to download it again"
        )
    return path


def _default_mode() -> int:
    """The mode a new file gets from open(): 0o666 less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def download(url: str, target: Path, sha256: str, settings: IndexSettings) -> Path:
    """`url` into `target`: written beside it, checked against `sha256`, then renamed into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    partial = Path(partial)
    try:
        with os.fdopen(fd, "wb") as out, _open(url, settings) as response:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
    except (OSError, urllib.error.URLError) as exc:
        partial.unlink(missing_ok=True)
        raise TyrjaxError(f"could not download {url} ({exc}); check the network or pip's index settings") from exc
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    actual = file_sha256(partial)
    if actual != sha256:
        partial.unlink(missing_ok=True)
        raise TyrjaxError(
            f"{target.name} downloaded from {url} has sha256 {actual}, not the pinned {sha256}; "
            "the download was deleted: retry, or check that the index serves the original file"
        )
    partial.chmod(_default_mode())
    partial.replace(target)
    return target


def fetch_pinned(pinned: PinnedFile, target: Path, settings: IndexSettings | None = None) -> Path:
    """`target` holding the pinned file: an existing copy once verified, else a fresh download."""
    if target.is_file():
        return verify_file(target, pinned.sha256)
    settings = settings or pip_index_settings()
    listed = locate(pinned, settings)
    if listed is None:
        raise TyrjaxError(
            f"{pinned.filename} ({pinned.project}) is on none of the configured package indexes "
            f"({', '.join(settings.urls)}); set pip's index-url to an index that has it"
        )
    return download(listed.url, target, pinned.sha256, settings)
