"""The documentation site as a reader sees it: built with ``mkdocs build --strict``, opened from disk in headless
Chromium (Playwright's Python package driving the system's Chromium; Playwright's own browser download is not
used).

Checked on key pages: no reStructuredText role left as text (``:func:``), no maths left as source (``$…$``,
``\\(``, ``\\[``) outside code, equations typeset by MathJax (``mjx-container`` elements), and every link of the
navigation opens a page (a file, not a folder listing: the site works from ``file://``). Skipped, with the
reason, where the docs extra, Playwright or a Chromium binary is missing (``.ci/run`` installs Debian's
``chromium`` when it can).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
# page -> whether it holds equations (the home page's, docstrings' display formulas, a notebook's $…$)
KEY_PAGES = {"index.html": True, "api/ope.html": True, "api/tabular.html": True, "api/estimators.html": False,
             "api/prior.html": True, "reproduce.html": False, "solutions/04_off_policy_evaluation.html": True}
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--allow-file-access-from-files"]

# The text a reader sees in the article, without code, typeset maths and scripts.
VISIBLE_PROSE = """() => {
  const root = document.querySelector("article") || document.body;
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT, {
    acceptNode: (node) => node.parentElement.closest("pre, code, mjx-container, script, style, .highlight, .jp-CodeCell")
      ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT,
  });
  const parts = [];
  while (walker.nextNode()) parts.push(walker.currentNode.textContent);
  return parts.join(" ");
}"""


def _chromium() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("the docs extra (mkdocs) is not installed")
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)], cwd=ROOT,
                           capture_output=True, text=True, timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert build.returncode == 0, build.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def browser():
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("Playwright's Python package is not installed (the test extra installs it)")
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no Chromium binary: install Debian's `chromium` (apt-get install chromium) or set CHROMIUM")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=FLAGS)
        yield browser
        browser.close()


def _open(browser, path: Path):
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    if page.evaluate("() => Boolean(window.MathJax && window.MathJax.startup && window.MathJax.startup.promise)"):
        page.evaluate("() => window.MathJax.startup.promise")  # typesetting done
    return page, errors


@pytest.mark.parametrize("name", KEY_PAGES)
def test_key_page_renders_roles_and_maths(site, browser, name):
    page, errors = _open(browser, site / name)
    try:
        assert page.evaluate("() => typeof window.MathJax === 'object' && Boolean(MathJax.typesetPromise)"), \
            "MathJax did not load (it is shipped in javascripts/vendor/mathjax)"
        prose = page.evaluate(VISIBLE_PROSE)
        for role in (":func:", ":class:", ":meth:", ":mod:", ":data:", ":attr:"):
            assert role not in prose, f"{name}: a literal {role} role: …{prose[prose.find(role) - 80:][:200]}…"
        for source in ("\\(", "\\[", "$$"):
            assert source not in prose, f"{name}: maths left as source {source!r}: …{prose[prose.find(source) - 80:][:200]}…"
        dollars = [p for p in prose.split(" ") if p.count("$") >= 2]
        assert not dollars, f"{name}: inline maths left as source: {dollars[:5]}"
        if KEY_PAGES[name]:
            assert page.locator("mjx-container").count() > 0, f"{name}: no equation typeset by MathJax"
        assert page.locator("mjx-container [data-mjx-error], mjx-merror").count() == 0, f"{name}: a TeX error"
        assert not [e for e in errors if "MathJax" in e], errors
    finally:
        page.close()


def test_every_nav_link_opens_a_page(site, browser):
    page, _ = _open(browser, site / "index.html")
    hrefs = page.evaluate("""() => [...document.querySelectorAll("nav.md-nav--primary a.md-nav__link[href]")]
                                    .map(a => a.href)""")
    page.close()
    targets = sorted({unquote(urlparse(h).path) for h in hrefs if h.startswith("file:")})
    assert len(targets) >= 30, targets  # home, guides, course notebooks, API pages
    for target in targets:
        path = Path(target)
        assert path.is_file() and path.suffix == ".html", f"nav link to {target}: not a page (opened from disk)"
        page, _ = _open(browser, path)
        try:
            assert page.locator("article h1").count() >= 1, f"{target}: no page title"
        finally:
            page.close()
