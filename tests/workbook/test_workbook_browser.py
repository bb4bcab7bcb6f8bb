"""End-to-end in headless Chromium (Debian's /usr/bin/chromium driven by Playwright): answer a derive
exercise wrong then right, order a design exercise, solve a build exercise, and see mastery and the
streak update. Screenshots go to a folder printed at the start (set WORKBOOK_SCREENSHOTS to choose it).
"""

from __future__ import annotations


def test_learner_session(server, page, shots):
    from nanoserve.workbook.bank import default_bank, solve

    bank = default_bank()
    # 1. Derive: wrong, then right (Enter submits).
    e = bank.get("000-0.5")
    page.goto(f"{server}/ex/{e.id}")
    assert page.locator("#streak").inner_text() == "0"
    page.fill("#answer", "20 GB")
    page.press("#answer", "Enter")
    page.wait_for_selector("#feedback.wrong")
    assert "too high" in page.inner_text("#feedback")
    assert page.locator("#streak").inner_text() == "1"
    assert page.locator("#mastery-count").inner_text() == "0"
    page.screenshot(path=str(shots / "derive_wrong.png"), full_page=True)
    page.fill("#answer", f"{solve(e, 0).value:g} GB")
    page.press("#answer", "Enter")
    page.wait_for_selector("#feedback.right")
    assert page.locator("#mastery-count").inner_text() == "1"
    assert "params · bytes_per_param / tp" in page.inner_text("#derivation")
    page.screenshot(path=str(shots / "derive_right.png"), full_page=True)

    # A unit slip is explained and not counted.
    page.fill("#answer", "3 ms")
    page.press("#answer", "Enter")
    page.wait_for_selector("#feedback.invalid")
    assert "unit slip" in page.inner_text("#feedback")

    # 2. Design: put the steps in order with the arrow buttons.
    d = bank.get("000-0.4")
    page.goto(f"{server}/ex/{d.id}")
    for i, step in enumerate(d.order):
        for _ in range(len(d.order)):
            items = page.locator("#design-list li")
            texts = [items.nth(k).get_attribute("data-step") for k in range(items.count())]
            pos = texts.index(step)
            if pos == i:
                break
            items.nth(pos).locator("button.up").click()
    page.screenshot(path=str(shots / "design_ordered.png"), full_page=True)
    page.click("#answer-form button")
    page.wait_for_selector("#feedback.right")
    assert page.locator("#mastery-count").inner_text() == "2"

    # 3. Build: write the function in the browser; hidden tests run in the sandbox.
    b = bank.get("000-1.5")
    page.goto(f"{server}/ex/{b.id}")
    page.fill("#code", "import os\n" + b.solution)
    page.click("#answer-form button")
    page.wait_for_selector("#feedback.invalid")
    assert "refused" in page.inner_text("#feedback")
    page.fill("#code", b.solution)
    page.press("#code", "Control+Enter")
    page.wait_for_selector("#feedback.right")
    assert "hidden tests passed" in page.inner_text("#feedback")
    assert page.locator("#mastery-count").inner_text() == "3"
    page.screenshot(path=str(shots / "build_passed.png"), full_page=True)

    # 4. Debug: fix the buggy line in the editor and run the tests.
    from nanoserve.workbook.checker import fixed_code

    page.goto(f"{server}/ex/000-3.6")
    page.fill("#code", fixed_code(bank.get("000-3.6")))
    page.click("#answer-form button")
    page.wait_for_selector("#feedback.right")
    page.screenshot(path=str(shots / "debug_clicked.png"), full_page=True)

    # 5. Keyboard: 'v' opens a new variant with fresh numbers.
    page.goto(f"{server}/ex/{e.id}")
    page.press("#answer", "Escape")        # leave the answer box, then shortcut keys act
    page.keyboard.press("v")
    page.wait_for_url(f"{server}/ex/{e.id}?v=1")
    assert "Variant 1" in page.inner_text(".variant")

    # Math is typeset by the bundled KaTeX (no CDN).
    page.goto(f"{server}/ex/000-6.5")
    page.wait_for_selector(".prompt .katex")
    page.screenshot(path=str(shots / "math_katex.png"))

    # 6. Chapter map and progress pages show mastery and the streak.
    page.goto(server + "/")
    assert page.inner_text("#ch-000-0 .ch-mastery") == "2 / 5"      # 0.5 and 0.4
    assert page.inner_text("#ch-000-1 .ch-mastery") == "1 / 6"
    page.screenshot(path=str(shots / "chapter_map.png"))
    page.goto(server + "/profile")
    assert page.inner_text("#profile-streak") == "1"
    assert page.inner_text("#profile-mastered") == "4"
    page.screenshot(path=str(shots / "progress.png"), full_page=True)
    page.goto(server + "/review")
    assert "000-0.5" in page.content() or "Per-GPU" in page.content() or "70B Model Weight" in page.content()
    page.screenshot(path=str(shots / "review.png"), full_page=True)
