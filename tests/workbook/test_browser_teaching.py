"""Teaching flows in headless Chromium: a wrong answer with its named slip, stepped hints, a reveal
without credit, a trace wrong pick with its reason, a debug fix, chapter notes with KaTeX. Screenshots
go to the `shots` folder; with WORKBOOK_UPDATE_DOCS=1 also to docs/workbook/ (the committed ones come from
such a run), so an ordinary test run leaves the repository unchanged."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs" / "workbook"


def snap(page, shots, name):
    page.screenshot(path=str(shots / name), full_page=True)
    if os.environ.get("WORKBOOK_UPDATE_DOCS"):
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shots / name, DOCS / name)


def test_teaching_flows(server, page, shots):
    from nanoserve.workbook.bank import default_bank, solve
    from nanoserve.workbook.checker import fixed_code

    bank = default_bank()
    # A wrong answer whose slip is named; the answer stays hidden.
    e = bank.get("000-5.1")
    page.goto(f"{server}/ex/{e.id}")
    page.fill("#answer", f"{solve(e, 0).value / 2:g} KiB")
    page.press("#answer", "Enter")
    page.wait_for_selector("#feedback.wrong")
    assert "forgot the factor 2 for K and V" in page.inner_text("#feedback")
    assert page.locator("#after").is_hidden()
    snap(page, shots, "teach_named_slip.png")

    # Stepped hints, one per click.
    page.click("#hint-btn")
    page.wait_for_selector("#hint-list li")
    page.click("#hint-btn")
    page.wait_for_function("document.querySelectorAll('#hint-list li').length === 2")
    assert page.locator("#hint-list li").count() == 2
    snap(page, shots, "teach_hints.png")

    # Reveal (two clicks) shows the answer; a right answer after it earns no mastery.
    page.click("#reveal-btn")
    assert "forfeit" in page.inner_text("#reveal-btn")
    page.click("#reveal-btn")
    page.wait_for_selector("#after[open]")
    assert "320 KiB" in page.inner_text("#expected")
    page.fill("#answer", f"{solve(e, 0).value:g} KiB")
    page.press("#answer", "Enter")
    page.wait_for_selector("#feedback.right")
    assert page.locator("#mastery-count").inner_text() == "0"
    snap(page, shots, "teach_reveal_no_credit.png")

    # A trace wrong pick says why it is wrong.
    t = bank.get("000-1.6")
    page.goto(f"{server}/ex/{t.id}")
    texts = [x.strip() for x in page.locator("#answer-form label.option").all_inner_texts()]
    wrong = next(i for i, x in enumerate(texts) if t.options[t.correct] not in x)
    page.locator("input[name=choice]").nth(wrong).check()
    page.click("#answer-form button")
    page.wait_for_selector("#feedback.wrong")
    picked = next(k for k, o in enumerate(t.options) if o in texts[wrong])
    assert t.why[picked] in page.inner_text("#feedback")
    snap(page, shots, "teach_trace_why.png")

    # Debug: the buggy code fails its tests, the fixed code passes.
    d = bank.get("ext-1.2")
    page.goto(f"{server}/ex/{d.id}")
    page.click("#answer-form button")
    page.wait_for_selector("#feedback.wrong")
    assert "tests passed" in page.inner_text("#feedback")
    page.fill("#code", fixed_code(d))
    page.click("#answer-form button")
    page.wait_for_selector("#feedback.right")
    assert "Fixed" in page.inner_text("#feedback")
    snap(page, shots, "teach_debug_fix.png")

    # Chapter notes, linked from the exercise, with KaTeX formulas.
    page.goto(f"{server}/ex/000-5.1")
    page.click("#notes-link")
    page.wait_for_selector(".formula-box .katex")
    snap(page, shots, "teach_chapter_notes.png")
