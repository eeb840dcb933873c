"""The built book in a real browser with the network blocked, as a reader opens it.

Every HTML page of ``_build/html`` (search and index pages aside) is opened as a file:// URL in
headless Chromium driven by Selenium, with Chrome's network emulation set offline and every
host name unresolvable. For each page: no JavaScript console error, every image loaded, the
math typeset by MathJax (served from the book's own ``_static``), exercise solutions folded
until clicked, every kernel-free panel (matplotlib animation HTML) scrubbed to another frame,
and on chapter pages the launch buttons (Colab, Binder, Thebe "Live Code") pointing at the
repository of ``_config.yml``. (That every chapter page holds a panel and no widget state is
read from the HTML alone, without a browser, in ``tests/test_executed_notebooks.py``.) Screenshots of every page at 1280 and 400 pixels wide go to
``<build>/screenshots/``; a summary line (pages, checks per kind, seconds) ends the run.

Run it alone after ``make book``::

    .venv/bin/python -m pytest tests/test_browser.py

``BOOK_BUILD_DIR`` names another build folder (the one holding ``html/``; default ``_build``).
The browser is Debian's ``chromium`` with ``chromium-driver`` (``CHROME_BIN`` and
``CHROMEDRIVER`` override the paths). Without them the tests are skipped with a loud reason,
or fail when ``BOOK_BROWSER_REQUIRED=1`` (as in ``.ci/run``, which installs them).
"""
from __future__ import annotations

import base64
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BUILD = Path(os.environ.get("BOOK_BUILD_DIR") or ROOT / "_build").resolve()
HTML = BUILD / "html"
SHOTS = BUILD / "screenshots"
#: Window widths of the screenshots (pixels): a laptop and a phone.
WIDTHS = (1280, 400)
#: Pages that are not chapters of the book.
SKIP_PAGES = {"search.html", "genindex.html", "py-modindex.html"}
#: Screenshots stop at this height (pixels); the longest chapters are taller at 400 wide.
MAX_SHOT_HEIGHT = 16000
#: Longest time one page may take to settle (scripts, MathJax, images), in seconds.
PAGE_TIMEOUT = 30


def _browser_paths() -> tuple[str | None, str | None]:
    names = [os.environ["CHROME_BIN"]] if os.environ.get("CHROME_BIN") else [
        "chromium", "chromium-browser", "google-chrome"]
    chrome = next((p for p in map(shutil.which, names) if p), None)
    driver = shutil.which(os.environ.get("CHROMEDRIVER") or "chromedriver")
    return chrome, driver


def _no_browser(reason: str):
    message = (f"BROWSER TEST NOT RUN: {reason}. Install Chromium and its driver "
               "(Debian: apt-get install -y chromium chromium-driver) or set CHROME_BIN and "
               "CHROMEDRIVER.")
    if os.environ.get("BOOK_BROWSER_REQUIRED") == "1":
        pytest.fail(message + " BOOK_BROWSER_REQUIRED=1 makes this a failure.", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium with the network blocked: emulated offline, no host name resolves."""
    chrome, driver_path = _browser_paths()
    if not chrome or not driver_path:
        _no_browser(f"Chromium found: {chrome or 'no'}, chromedriver found: {driver_path or 'no'}")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _no_browser("the Python package selenium is not installed (pip install -e '.[test]')")
    options = webdriver.ChromeOptions()
    options.binary_location = chrome
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--hide-scrollbars", "--window-size=1280,900", "--force-device-scale-factor=1",
                # a second lock on the network besides the emulation below
                "--host-resolver-rules=MAP * ~NOTFOUND", "--no-proxy-server",
                "--disable-background-networking", "--disable-component-update"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_script_timeout(PAGE_TIMEOUT)
    driver.set_page_load_timeout(PAGE_TIMEOUT)
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.emulateNetworkConditions", {
        "offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
    yield driver
    driver.quit()


def _severe(driver) -> list[str]:
    """The browser log's SEVERE entries since the last call (console errors, failed loads)."""
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


# Wait until the page has settled: MathJax done, fonts and images loaded (or failed).
_SETTLE_JS = """
const done = arguments[arguments.length - 1];
const waits = [document.fonts ? document.fonts.ready : Promise.resolve()];
if (window.MathJax && MathJax.startup && MathJax.startup.promise) waits.push(MathJax.startup.promise);
for (const img of document.images) {
  img.loading = "eager";
  if (!img.complete) waits.push(new Promise(r => { img.onload = r; img.onerror = r; }));
}
Promise.all(waits).then(() => done(true), e => done(String(e)));
"""

# What the page shows: math, images, panels, solutions, launch buttons.
_INSPECT_JS = r"""
const skip = "pre, code, script, style, textarea, mjx-container, .highlight";
const raw = [];
const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
for (let n = walker.nextNode(); n; n = walker.nextNode()) {
  const el = n.parentElement;
  if (!el || el.closest(skip)) continue;
  const m = n.textContent.match(/\\\(|\\\[|\$\$|\\begin\{/);
  if (m) raw.push(n.textContent.trim().slice(0, 80));
}
const math = [...document.querySelectorAll(".math")];
const launch = {};
for (const a of document.querySelectorAll("a[href]")) {
  if (a.href.includes("colab.research.google.com")) launch.colab = a.href;
  if (a.href.includes("/v2/gh/")) launch.binder = a.href;
}
const thebe = document.querySelector("button[onclick*='initThebe']");
const thebeConfig = document.querySelector("script[type='text/x-thebe-config']");
return {
  math: math.length,
  math_typeset: math.filter(m => m.querySelector("mjx-container")).length,
  mjx: document.querySelectorAll("mjx-container").length,
  merrors: [...document.querySelectorAll("mjx-merror")].map(e => e.textContent.slice(0, 80)),
  raw_math: raw,
  broken_images: [...document.images].filter(i => !(i.complete && i.naturalWidth > 0))
    .map(i => (i.getAttribute("src") || "").slice(0, 100)),
  images: document.images.length,
  panels: document.querySelectorAll("div.animation").length,
  solutions: document.querySelectorAll(".solution.dropdown").length,
  launch: launch,
  thebe_button: thebe ? thebe.textContent.trim() : null,
  thebe_config: thebeConfig ? thebeConfig.textContent : null,
  mathjax_src: [...document.scripts].map(s => s.getAttribute("src") || "")
    .filter(s => s.includes("mathjax")),
};
"""

# MathJax's parts that load on demand (a TeX package, the SVG renderer of its menu) are served
# by the book too. (Its accessibility explorer reads JSON with XMLHttpRequest, which Chrome
# refuses on file:// pages whatever the book does; it works when the book is served.)
_MATHJAX_PARTS_JS = """
const done = arguments[arguments.length - 1];
if (!window.MathJax || !MathJax.loader) { done("no MathJax on the page"); return; }
MathJax.loader.load("[tex]/cancel", "output/svg")
  .then(() => done(true), e => done(String(e && e.message || e)));
"""

# Move each panel's slider to another frame; report whether the frame image changed.
_SCRUB_JS = """
const done = arguments[arguments.length - 1];
const panels = [...document.querySelectorAll("div.animation")];
const out = [];
(async () => {
  for (const [i, panel] of panels.entries()) {
    const slider = panel.querySelector("input[type=range]");
    const img = panel.querySelector("img");
    if (!slider || !img) { out.push({panel: i, ok: false, why: "no slider or no image"}); continue; }
    const last = parseInt(slider.max), before = img.src;
    const target = parseInt(slider.value) === last ? 0 : last;
    slider.value = String(target);
    slider.dispatchEvent(new Event("input", {bubbles: true}));
    await new Promise(r => img.complete ? r() : (img.onload = img.onerror = r));
    const changed = img.src !== before, drawn = img.complete && img.naturalWidth > 0;
    out.push({panel: i, frames: last + 1, ok: changed && drawn && last >= 1,
              why: !changed ? "frame image unchanged" : !drawn ? "frame image not drawn"
                   : last < 1 ? "one frame only" : ""});
  }
})().then(() => done(out), e => done([{panel: -1, ok: false, why: String(e)}]));
"""


# Display equations whose box runs past the window's right edge (cut off on a phone); a wide
# equation must scroll inside its own box instead.
_WIDE_MATH_JS = r"""
return [...document.querySelectorAll('mjx-container[display="true"]')].filter(m => {
  const spills = m.scrollWidth > m.clientWidth + 1;
  const scrolls = ["auto", "scroll"].includes(getComputedStyle(m).overflowX);
  return m.getBoundingClientRect().right > window.innerWidth + 1 || (spills && !scrolls);
}).map(m => (m.getAttribute("aria-label") || m.textContent || "").slice(0, 60));
"""


def _settle(driver) -> None:
    result = driver.execute_async_script(_SETTLE_JS)
    assert result is True, f"the page did not settle: {result}"


def _screenshot(driver, path: Path, width: int) -> None:
    """Full-page PNG at ``width`` CSS pixels (at most ``MAX_SHOT_HEIGHT`` tall)."""
    driver.set_window_size(width, 900)
    _settle(driver)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    # a viewport as tall as the page, so that the picture is the page as laid out
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": min(height, MAX_SHOT_HEIGHT), "deviceScaleFactor": 1,
        "mobile": False})
    try:
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    path.write_bytes(base64.b64decode(shot["data"]))


def _solutions(driver) -> list[str]:
    """Each dropdown solution: hidden before a click on its title, shown after; problems found."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    problems = []
    for sol in driver.find_elements(By.CSS_SELECTOR, ".solution.dropdown"):
        name = sol.get_attribute("id")
        body = sol.find_elements(By.CSS_SELECTOR, ":scope > :not(.admonition-title)")
        if not body:
            problems.append(f"{name}: no content")
            continue
        if any(b.is_displayed() for b in body):
            problems.append(f"{name}: shown before any click")
            continue
        title = sol.find_element(By.CSS_SELECTOR, ":scope > .admonition-title")
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", title)
        title.click()
        # the content fades in (a CSS transition of 0.3 s)
        try:
            WebDriverWait(driver, 5).until(lambda d: any(b.is_displayed() for b in body))
        except TimeoutException:
            problems.append(f"{name}: still hidden 5 s after a click on its title")
    return problems


@dataclass
class Page:
    """What the browser found on one page."""

    name: str
    facts: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)
    panels: list = field(default_factory=list)
    solutions: list = field(default_factory=list)


def _pages() -> list[Path]:
    return sorted(p for p in HTML.rglob("*.html")
                  if p.name not in SKIP_PAGES
                  and not {"_static", "_sources", "_images", "reports"} & set(p.relative_to(HTML).parts))


def _chapters() -> list[str]:
    """The chapter pages (``notebooks/*.html``) in the order of the table of contents."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [c["file"] for part in toc.get("parts", []) for c in part.get("chapters", [])]
    return [f + ".html" for f in files if f.startswith("notebooks/")]


@pytest.fixture(scope="module")
def book(browser):
    """Open every page once, run every check, keep the findings (one crawl for all tests)."""
    if not (HTML / "index.html").is_file():
        pytest.fail(f"no built book at {HTML}: run `make book` first (or set BOOK_BUILD_DIR to the "
                    "folder that holds html/)", pytrace=False)
    t0 = time.perf_counter()
    SHOTS.mkdir(parents=True, exist_ok=True)
    _severe(browser)
    found, spent = {}, {"open": 0.0, "check": 0.0, "screenshots": 0.0}
    for path in _pages():
        name = path.relative_to(HTML).as_posix()
        page = found[name] = Page(name)
        t = time.perf_counter()
        browser.set_window_size(WIDTHS[0], 900)
        browser.get(path.as_uri())
        _settle(browser)
        spent["open"] += time.perf_counter() - t
        page.facts = browser.execute_script(_INSPECT_JS)
        # the page as a reader first sees it, before the checks click and scrub
        t = time.perf_counter()
        for width in WIDTHS:
            _screenshot(browser, SHOTS / f"{name.replace('/', '__')[:-5]}-{width}.png", width)
            if width == min(WIDTHS):
                browser.set_window_size(width, 900)
                page.facts["wide_math"] = browser.execute_script(_WIDE_MATH_JS)
        spent["screenshots"] += time.perf_counter() - t
        t = time.perf_counter()
        browser.set_window_size(WIDTHS[0], 900)
        page.panels = browser.execute_async_script(_SCRUB_JS)
        page.solutions = _solutions(browser)
        spent["check"] += time.perf_counter() - t
        if page.facts["math"] and "mathjax_parts" not in RUN:
            RUN["mathjax_parts"] = browser.execute_async_script(_MATHJAX_PARTS_JS)
        page.errors = _severe(browser)
    RUN.update(pages=len(found), seconds=time.perf_counter() - t0, spent=spent)
    return found


#: Pages that passed each kind of check, and the crawl's timing, for the summary line.
PASSED: dict[str, int] = {}
RUN: dict = {}


def _tally(kind: str, results: dict[str, list]) -> dict[str, list]:
    """Record how many pages passed ``kind``; return the failing ones."""
    PASSED[kind] = sum(1 for problems in results.values() if not problems)
    return {name: problems for name, problems in results.items() if problems}


@pytest.mark.book
def test_no_console_errors_offline(book):
    failing = _tally("console", {name: page.errors for name, page in book.items()})
    assert book and not failing, f"console errors with the network blocked: {failing}"


@pytest.mark.book
def test_every_image_loads(book):
    failing = _tally("images", {n: p.facts["broken_images"] for n, p in book.items()})
    assert not failing, f"images that did not load (naturalWidth 0): {failing}"


@pytest.mark.book
def test_wide_equations_scroll_on_a_phone(book):
    failing = _tally("wide math", {n: p.facts.get("wide_math", []) for n, p in book.items()})
    assert not failing, (f"display equations cut off at the right edge of a {min(WIDTHS)}-pixel window "
                         f"(they must scroll in their own box, _static/math.css): {failing}")


@pytest.mark.book
def test_math_is_typeset_offline(book):
    results = {}
    for name, page in book.items():
        f, problems = page.facts, []
        if f["math"] and f["math_typeset"] < f["math"]:
            problems.append(f"{f['math'] - f['math_typeset']} of {f['math']} formulas not typeset")
        if f["math"] and not f["mjx"]:
            problems.append("no MathJax output (mjx-container) on a page with math")
        problems += [f"TeX error: {e}" for e in f["merrors"]]
        problems += [f"raw TeX in the text: {t!r}" for t in f["raw_math"]]
        if f["math"] and not all(s.startswith("../") or s.startswith("_static") for s in f["mathjax_src"]):
            problems.append(f"MathJax not served from the book: {f['mathjax_src']}")
        results[name] = problems
    pages_with_math = sum(1 for p in book.values() if p.facts["math"])
    failing = _tally("math", results)
    assert pages_with_math > 0, "no page has math: is the book built from this repository?"
    assert RUN["mathjax_parts"] is True, f"MathJax parts loaded on demand: {RUN['mathjax_parts']}"
    assert not failing, f"math not typeset: {failing}"


@pytest.mark.book
def test_solutions_fold_until_clicked(book):
    failing = _tally("solutions", {n: p.solutions for n, p in book.items()})
    assert sum(p.facts["solutions"] for p in book.values()) > 0, "no dropdown solution found"
    assert not failing, f"solutions not folded, or not shown after a click: {failing}"


@pytest.mark.book
def test_every_panel_responds_to_its_slider(book):
    failing = _tally("panels", {n: [p for p in page.panels if not p["ok"]] for n, page in book.items()})
    assert not failing, f"kernel-free panels whose frame did not change: {failing}"


@pytest.mark.book
def test_launch_buttons_point_at_the_repository(book):
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    url, branch = config["repository"]["url"].rstrip("/"), config["repository"]["branch"]
    org_repo = url.split("github.com/")[1]
    results = {}
    for name in _chapters():
        if name not in book:
            results[name] = ["chapter page missing from the build"]
            continue
        f, problems = book[name].facts, []
        nb = name[:-5] + ".ipynb"
        colab = f"https://colab.research.google.com/github/{org_repo}/blob/{branch}/{nb}"
        binder = f"https://mybinder.org/v2/gh/{org_repo}/{branch}?urlpath=lab/tree/{nb}"
        if f["launch"].get("colab") != colab:
            problems.append(f"Colab link {f['launch'].get('colab')!r}, expected {colab!r}")
        if f["launch"].get("binder") != binder:
            problems.append(f"Binder link {f['launch'].get('binder')!r}, expected {binder!r}")
        config_text = f["thebe_config"] or ""
        if not f["thebe_button"] or f'repo: "{org_repo}"' not in config_text \
                or f'ref: "{branch}"' not in config_text:
            problems.append(f"Thebe button {f['thebe_button']!r} or its configuration does not "
                            f"name {org_repo}@{branch}")
        results[name] = problems
    failing = _tally("launch", results)
    assert results, "the table of contents lists no chapter under notebooks/"
    assert not failing, f"launch buttons: {failing}"


@pytest.mark.book
def test_summary(book, capsys):
    """Print pages, checks passed per kind and seconds (runs after the checks above)."""
    line = (f"browser test: {RUN['pages']} pages in {RUN['seconds']:.1f} s ("
            + ", ".join(f"{step} {s:.1f} s" for step, s in RUN["spent"].items())
            + "); pages passing each check: "
            + ", ".join(f"{kind} {n}" for kind, n in PASSED.items())
            + "; panels per chapter: "
            + ", ".join(f"{Path(c).stem} {book[c].facts['panels'] if c in book else '-'}"
                        for c in _chapters())
            + f"; screenshots in {SHOTS}")
    with capsys.disabled():
        print("\n" + line)
    assert RUN["pages"] == len(book) > 0


# The checks themselves, on pages made here: they see a blocked load and a dead panel.

def _open_html(driver, tmp_path: Path, html: str) -> None:
    page = tmp_path / "page.html"
    page.write_text(f"<!DOCTYPE html><html><body>{html}</body></html>")
    _severe(driver)
    driver.get(page.as_uri())
    _settle(driver)


def test_the_network_is_blocked_and_a_failed_load_is_seen(browser, tmp_path):
    cdn = "https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js"
    _open_html(browser, tmp_path, f'<img src="https://example.org/a.png"><script src="{cdn}"></script>')
    facts = browser.execute_script(_INSPECT_JS)
    errors = _severe(browser)
    assert facts["broken_images"] == ["https://example.org/a.png"]
    assert len(errors) >= 2 and all(re.search(r"ERR_(INTERNET_DISCONNECTED|NAME_NOT_RESOLVED)", e)
                                    for e in errors), errors


def test_the_panel_check_scrubs_a_static_panel_and_sees_a_dead_one(browser, tmp_path):
    from matplotlib.figure import Figure

    from leakutils.widgets import static_panel

    def show(value):
        fig = Figure(figsize=(2, 1))
        fig.text(0.5, 0.5, f"frame {value}")
        return fig

    panel = static_panel(lambda k: k, show, "k", [1, 2, 3], dpi=40)
    _open_html(browser, tmp_path, panel.html)
    live = browser.execute_async_script(_SCRUB_JS)
    assert [(p["frames"], p["ok"]) for p in live] == [(3, True)], live
    assert not _severe(browser)
    # the same panel with its slider's handler removed must be reported
    _open_html(browser, tmp_path, panel.html.replace("oninput=", "data-oninput="))
    dead = browser.execute_async_script(_SCRUB_JS)
    assert [(p["ok"], p["why"]) for p in dead] == [(False, "frame image unchanged")], dead


def test_the_math_check_sees_raw_tex_outside_code(browser, tmp_path):
    _open_html(browser, tmp_path, r"<p>typeset: \(x^2\)</p><pre>in code: \(y\)</pre><p>$$z$$</p>")
    facts = browser.execute_script(_INSPECT_JS)
    assert facts["raw_math"] == [r"typeset: \(x^2\)", "$$z$$"], facts["raw_math"]


def test_the_wide_math_check_sees_an_equation_cut_off_on_a_phone(browser, tmp_path):
    # a display equation as MathJax lays it out: a block as wide as the column, content wider
    wide = ('<mjx-container display="true" style="display:block">'
            '<span style="display:inline-block;width:1500px">a wide formula</span></mjx-container>')
    css = (ROOT / "_static" / "math.css").read_text()
    browser.set_window_size(min(WIDTHS), 900)
    try:
        _open_html(browser, tmp_path, wide)
        assert browser.execute_script(_WIDE_MATH_JS) == ["a wide formula"]
        # the book's style sheet makes the same equation scroll inside its own box
        _open_html(browser, tmp_path, f"<style>{css}</style>{wide}")
        assert browser.execute_script(_WIDE_MATH_JS) == []
    finally:
        browser.set_window_size(WIDTHS[0], 900)
