"""The README's "Install into a virtual environment" section against the checkout (host
only, no guest): the files it installs exist, and its offline download list
is the build backend plus the dependencies of pyproject.toml, less what
Debian provides."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

from readme import install_doc

REPO = Path(__file__).resolve().parent.parent.parent
#: Dependencies that the README takes from Debian packages instead of PyPI.
FROM_DEBIAN = {"systemd-python": "python3-systemd"}


def _name(req: str) -> str:
    m = re.match(r"[A-Za-z0-9._-]+", req)
    assert m, req
    return re.sub(r"[-_.]+", "-", m.group(0)).lower()


def test_download_list_is_pyproject() -> None:
    doc = install_doc(REPO / "README.md")
    words = shlex.split(doc.wheelhouse.replace("\\\n", " "))
    downloaded = sorted(w for w in words[words.index("download"):]
                        if not w.startswith("-") and w not in ("download", "wheelhouse"))
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    wanted = [r for r in project["build-system"]["requires"] + project["project"]["dependencies"]
              if _name(r) not in FROM_DEBIAN]
    assert downloaded == sorted(wanted), (
        "README's pip download list differs from pyproject.toml's build-system.requires +"
        f" dependencies (less {sorted(FROM_DEBIAN)})")


def test_debian_packages_are_installed_by_the_readme() -> None:
    doc = install_doc(REPO / "README.md")
    for package in FROM_DEBIAN.values():
        assert package in doc.install.splitlines()[0]
    assert "--system-site-packages" in doc.install


def test_installed_files_exist() -> None:
    doc = install_doc(REPO / "README.md")
    for line in doc.install.splitlines():
        words = shlex.split(line)
        if words and words[0] in ("install", "cp") and "-d" not in words:
            source = words[-2]
            assert (REPO / source).is_file(), f"README installs {source}, which does not exist"


def test_readme_installs_the_package_make_deb_builds() -> None:
    """The README's package block installs the file `make deb` builds: the
    version of debian/changelog, whose upstream part is pyproject.toml's."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"^## Install the Debian package\s*$.*?^```sh\n(.*?)^```", text,
                      re.MULTILINE | re.DOTALL)
    assert block, "README has no sh block in '## Install the Debian package'"
    lines = block.group(1).splitlines()
    assert lines[0] == "make deb"
    changelog = (REPO / "debian" / "changelog").read_text().splitlines()[0]
    m = re.match(r"wanbalanced \(([^)]+)\) ", changelog)
    assert m, changelog
    version = m.group(1)
    upstream = version.rsplit("-", 1)[0]
    assert upstream == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert re.fullmatch(rf"apt install \./build/deb/wanbalanced_{re.escape(version)}_[a-z0-9]+\.deb",
                        lines[1]), lines[1]
