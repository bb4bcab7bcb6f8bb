"""Practice, editor and small-screen flows in headless Chromium: a review session through two cards to
its summary, the checklist's self-check and "Practise", the CodeMirror editor keeping code across a
reload (with highlighting, line numbers, reset and every failing test listed), the 390 px layout, and
the access basics (labels, aria-live feedback, a skip link, a favicon).

Screenshots go to the `shots` folder; with WORKBOOK_UPDATE_DOCS=1 they are also written to
docs/workbook/ (the committed ones come from such a run).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs" / "workbook"
PAST = datetime.now(UTC) - timedelta(days=30)      # a card reviewed then is due now


def snap(page, shots: Path, name: str, full_page: bool = True) -> None:
    page.screenshot(path=str(shots / name), full_page=full_page)
    if os.environ.get("WORKBOOK_UPDATE_DOCS"):
        page.screenshot(path=str(DOCS / name), full_page=full_page)


def test_review_session_through_two_cards(live, page, shots):
    from nanoserve.workbook.bank import default_bank, solve

    url, app = live
    bank = default_bank()
    pr = app.state.progress
    pr.record_attempt("learner", "000-0.5", 0, "20 GB", False, now=PAST)          # derive, has variants
    pr.record_attempt("learner", "000-1.5", 0, "def f(): 0", False, now=PAST + timedelta(hours=1))  # build

    page.set_viewport_size({"width": 1200, "height": 900})
    page.goto(url + "/")
    assert page.inner_text("#home-due-count") == "2"
    assert "000-1.5" in page.get_attribute("#continue-link", "href")       # the last exercise, not right yet
    snap(page, shots, "home.png", full_page=False)
    page.click("#start-review")
    page.wait_for_selector("#session-bar")
    assert "card 1 of 2" in page.inner_text("#session-bar")
    assert "Fresh numbers" in page.inner_text("#card-kind")
    variant = int(page.get_attribute("#exercise", "data-variant"))
    assert variant >= 1                                                    # never the numbers already seen
    e = bank.get("000-0.5")
    page.fill("#answer", f"{solve(e, variant).value:g} GB")
    page.press("#answer", "Enter")
    page.wait_for_selector("#feedback.right")
    snap(page, shots, "review_card_fresh.png")
    page.click("#next-link")
    page.wait_for_selector("#session-bar[data-card='2']")
    assert "Repeat" in page.inner_text("#card-kind")
    assert page.get_attribute("#exercise", "data-id") == "000-1.5"
    snap(page, shots, "review_card_repeat.png")
    page.click("#next-link")                                               # finish without answering
    page.wait_for_selector("#session-summary")
    assert page.inner_text("#sum-right") == "1" and page.inner_text("#sum-skipped") == "1"
    assert page.locator("#session-results li").count() == 2
    snap(page, shots, "review_summary.png")


def test_checklist_self_check_and_practise(live, page, shots):
    url, _ = live
    page.set_viewport_size({"width": 1200, "height": 900})
    page.goto(url + "/checklist")
    item = page.locator("#item-kv-bytes-per-token")
    assert "KV-cache bytes per token" in item.inner_text()
    item.locator("label.level-2").click()
    page.wait_for_selector("#item-kv-bytes-per-token[data-saved='2']")
    assert "Saved" in page.inner_text("#checklist-status")
    page.reload()
    assert page.locator("#item-kv-bytes-per-token input[value='2']").is_checked()
    snap(page, shots, "checklist.png", full_page=False)
    page.locator("#item-kv-bytes-per-token a.practise").click()
    page.wait_for_selector("#session-bar")
    bar = page.inner_text("#session-bar")
    assert "Practice" in bar and "KV-cache bytes per token" in bar
    assert page.get_attribute("#exercise", "data-id") == "000-5.1"         # the item's first exercise
    snap(page, shots, "checklist_practise.png")


def test_editor_keeps_code_across_a_reload_and_lists_every_failing_test(live, page, shots):
    url, _ = live
    page.set_viewport_size({"width": 1200, "height": 900})
    page.goto(url + "/ex/000-1.5")
    page.wait_for_selector("#exercise .cm-editor")
    assert page.locator(".cm-lineNumbers .cm-gutterElement").count() >= 3      # line numbers
    assert page.locator(".cm-content .cm-line span").count() >= 3              # highlighted tokens
    colours = page.eval_on_selector_all(
        ".cm-content .cm-line span", "els => new Set(els.map(e => getComputedStyle(e).color)).size")
    assert colours >= 2, "Python keywords and names are coloured differently"
    starter = page.input_value("#code")
    page.click(".cm-content")
    page.keyboard.press("Control+End")
    page.keyboard.type("\n# kept: n v h")                       # shortcut letters are just text here
    assert page.url.endswith("/ex/000-1.5")
    assert "# kept: n v h" in page.input_value("#code")              # the form sees the edit
    page.reload()
    page.wait_for_selector("#exercise .cm-editor")
    assert "# kept: n v h" in page.inner_text(".cm-content")
    assert "last time" in page.inner_text(".editor-note")
    page.click(".editor-reset")
    assert page.input_value("#code") == starter
    assert "# kept: n v h" not in page.inner_text(".cm-content")

    # A wrong function: every failing hidden test is listed, not only the first.
    page.fill("#code", "def pipeline_bubble_fraction(pp, m):\n    return 0.5\n")
    page.click("#answer-form button[type=submit]")
    page.wait_for_selector("#feedback.wrong .cases")
    failing = page.locator("#feedback .case-fail").count()
    assert failing >= 2
    assert f"{failing} of" in page.inner_text("#feedback .cases-head")
    assert "return 0.5" in page.inner_text(".cm-content")          # the editor shows the filled code
    snap(page, shots, "editor_failing_tests.png")


PAGES_390 = ["/", "/ex/000-0.5", "/ex/000-1.5", "/ex/000-6.5", "/ex/000-3.6", "/checklist", "/review",
             "/profile"]


def test_390px_layout_has_no_sideways_scroll_and_a_one_line_header(live, page, shots):
    url, _ = live
    page.set_viewport_size({"width": 390, "height": 844})
    for path in PAGES_390:
        page.goto(url + path)
        page.wait_for_load_state("load")
        if path == "/ex/000-1.5":
            page.wait_for_selector(".cm-editor")
        if path == "/ex/000-0.5":                       # the derivation is the widest block
            page.fill("#answer", "1 GB")
            page.press("#answer", "Enter")
            page.wait_for_selector("#feedback.wrong")
            page.evaluate("document.getElementById('after').open = true")
        width = page.evaluate("document.scrollingElement.scrollWidth")
        assert width <= 390, f"{path} scrolls sideways ({width}px)"
        header = page.evaluate("""() => {
            const h = document.querySelector('header.top').getBoundingClientRect();
            const b = document.querySelector('.brand').getBoundingClientRect();
            const m = document.getElementById('menu-toggle').getBoundingClientRect();
            return {h: h.height, brandTop: b.top, menuTop: m.top, menuH: m.height}; }""")
        assert header["h"] <= 56, f"{path}: the header wraps ({header['h']}px)"
        assert abs(header["brandTop"] - header["menuTop"]) < 12 and header["menuH"] > 0
        if path == "/ex/000-0.5":
            snap(page, shots, "mobile_390_derive.png")
        if path == "/":
            snap(page, shots, "mobile_390_home.png", full_page=False)
    page.goto(url + "/")
    assert not page.is_visible("nav a[href='/checklist']")
    page.click("#menu-toggle")
    assert page.is_visible("nav a[href='/checklist']")
    assert page.get_attribute("#menu-toggle", "aria-expanded") == "true"
    snap(page, shots, "mobile_390_menu.png", full_page=False)
    page.set_viewport_size({"width": 1200, "height": 900})


def test_labels_live_feedback_skip_link_and_favicon(live, page):
    url, _ = live
    page.set_viewport_size({"width": 1200, "height": 900})
    page.goto(url + "/ex/000-0.5")
    assert page.eval_on_selector("#answer", "e => e.labels.length") == 1
    assert page.get_attribute("#feedback", "aria-live") == "polite"
    page.goto(url + "/ex/000-1.5")
    page.wait_for_selector(".cm-editor")
    assert page.get_attribute(".cm-content", "aria-label") == "Your Python code"
    page.goto(url + "/checklist")
    assert page.get_attribute("#checklist-status", "aria-live") == "polite"
    page.goto(url + "/")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip-link"
    assert page.is_visible(".skip-link")
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    icon = page.get_attribute("link[rel=icon]", "href")
    assert page.request.get(url + icon).status == 200
    assert "Seed 000" not in page.content()
