"""The README's "Install into a virtual environment" section, as commands to run.

Used by the guest script (it installs exactly as the README says) and by the
host tests (the wheelhouse is made with the README's own ``pip download``
command).  Standard library only: it also runs under the guest's Debian
Python.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SECTION = "Install into a virtual environment"
#: The line of the install block that the offline variant replaces.
ONLINE_PIP = "/opt/wanbalanced/bin/pip install ."
#: Placeholder for the wheelhouse in the offline variant.
WHEELHOUSE_PLACEHOLDER = "/path/to/wheelhouse"

_FENCE = re.compile(r"^```sh\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class InstallDoc:
    install: str  #: the install commands, run in the checkout
    start: str  #: check the configuration, enable and start the unit
    wheelhouse: str  #: make ./wheelhouse on a machine with PyPI
    offline_pip: str  #: the line replacing ONLINE_PIP without PyPI

    def offline_install(self, wheelhouse: str) -> str:
        """The install block with the offline pip line, for ``wheelhouse``."""
        return self.install.replace(
            ONLINE_PIP, self.offline_pip.strip().replace(WHEELHOUSE_PLACEHOLDER, wheelhouse)
        )


def section(text: str, title: str = SECTION) -> str:
    """The body of ``## title`` up to the next level-2 heading."""
    m = re.search(rf"^## {re.escape(title)}\s*$(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    if m is None:
        raise ValueError(f"README has no '## {title}' section")
    return m.group(1)


def install_doc(readme: Path) -> InstallDoc:
    """The four ``sh`` blocks of the section, checked for what we rely on."""
    blocks = _FENCE.findall(section(readme.read_text(encoding="utf-8")))
    if len(blocks) != 4:
        raise ValueError(f"expected 4 sh blocks in '## {SECTION}', found {len(blocks)}")
    doc = InstallDoc(*blocks)
    if doc.install.count(ONLINE_PIP + "\n") != 1:
        raise ValueError(f"the install block must have the line {ONLINE_PIP!r} once")
    if "pip download" not in doc.wheelhouse or "wheelhouse" not in doc.wheelhouse:
        raise ValueError("the third block must make ./wheelhouse with pip download")
    if WHEELHOUSE_PLACEHOLDER not in doc.offline_pip or doc.offline_pip.count("\n") != 1:
        raise ValueError(f"the fourth block must be one pip line with {WHEELHOUSE_PLACEHOLDER}")
    return doc
