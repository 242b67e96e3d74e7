"""The personas page as a browser shows it: headless Chromium (Debian's ``chromium``, which ``.ci/run`` installs)
loads the page, and the tests read the document it built (cards, flows, lifecycle rows)."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars")


@dataclass
class Card:
    segment: str
    text: str = ""

    @property
    def users(self) -> int:
        found = re.search(r"\s([\d,]+)\s+users", self.text)
        assert found, self.text
        return int(found[1].replace(",", ""))


@dataclass
class Shown:
    """What the browser's document holds."""

    cards: list[Card] = field(default_factory=list)
    flows: list[tuple[str, str, int, bool]] = field(default_factory=list)  # from, to, users, made by a model update
    events: list[str] = field(default_factory=list)  # lifecycle rows' kinds, newest first
    scripts: int = 0
    fetches: list[str] = field(default_factory=list)  # any src/href: the page must need nothing else

    def flow(self, source: str, target: str, by_model: bool) -> int:
        return sum(n for a, b, n, m in self.flows if (a, b, m) == (source, target, by_model))


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.shown = Shown()
        self._card_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.shown.fetches += [a[k] for k in ("src", "href") if k in a]
        self.shown.scripts += tag == "script"
        if tag == "article" and a.get("class") == "card":
            self.shown.cards.append(Card(a["data-segment"]))
            self._card_depth = 1
        elif self._card_depth:
            self._card_depth += 1
        if tag == "g" and a.get("class") == "flow":
            self.shown.flows.append((a["data-from"], a["data-to"], int(a["data-users"]), a["data-by-model"] == "1"))
        if tag == "tr" and a.get("class") == "event-row":
            self.shown.events.append(a["data-kind"])

    def handle_endtag(self, tag: str) -> None:
        if self._card_depth:
            self._card_depth -= 1

    def handle_data(self, data: str) -> None:
        if self._card_depth:
            self.shown.cards[-1].text += " " + data  # (an element's text apart from the one before)


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("no chromium: .ci/run installs Debian's chromium (apt-get install chromium)")
    return found


def shown(page: Path, screenshot: Path | None = None) -> Shown:
    """The document headless Chromium built from the page file (and a screenshot of it, if asked)."""
    url = page.resolve().as_uri()
    dom = subprocess.run(
        [chromium(), *FLAGS, "--dump-dom", url], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert dom.lstrip().lower().startswith("<!doctype html>"), dom[:300]
    if screenshot is not None:
        subprocess.run(
            [chromium(), *FLAGS, "--window-size=1100,1300", f"--screenshot={screenshot}", url],
            capture_output=True,
            timeout=60,
            check=True,
        )
    reader = _Reader()
    reader.feed(dom)
    return reader.shown
