// nanoserve workbook: submit attempts, show feedback and the planner's derivation, keyboard shortcuts.
"use strict";

function renderMath(el) {
  if (window.renderMathInElement) {
    window.renderMathInElement(el, {delimiters: [
      {left: "\\(", right: "\\)", display: false}, {left: "$$", right: "$$", display: true}],
      throwOnError: false});
  }
}

const PAGE_OPENED_MS = Date.now();

function setText(id, value) {
  const el = document.getElementById(id);
  if (el && value !== undefined && value !== null) el.textContent = value;
}

async function submitAttempt(payload) {
  const ex = document.getElementById("exercise");
  const fb = document.getElementById("feedback");
  fb.hidden = false;
  fb.className = "feedback pending";
  fb.textContent = ex.dataset.type === "build" ? "Running hidden tests…" : "Checking…";
  let data;
  try {
    const resp = await fetch("/api/attempt", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify(Object.assign({id: ex.dataset.id, variant: Number(ex.dataset.variant),
                                          elapsed_ms: Date.now() - PAGE_OPENED_MS}, payload)),
    });
    data = await resp.json();
    if (!resp.ok) throw new Error((data.error && data.error.message) || resp.statusText);
  } catch (err) {
    fb.className = "feedback wrong";
    fb.textContent = "Could not check: " + err.message;
    return;
  }
  fb.className = "feedback " + (data.correct ? "right" : (data.counts ? "wrong" : "invalid"));
  fb.textContent = data.message;
  if (data.details && data.details.length) renderCases(fb, data.details);
  if (data.counts && data.correct) {
    showAnswer(data);
  }
  if (data.counts) {
    setText("streak", data.streak);
    setText("best-streak", data.best_streak);
    setText("mastery-count", data.mastered);
  }
}

// Every hidden test of a build run, failing ones first and each with what went wrong (not only the first).
// The answer panel: opened by a right answer or a reveal, never sent with the page.
function showAnswer(data) {
  const after = document.getElementById("after");
  after.hidden = false;
  after.open = true;
  setText("expected", data.expected ? "Answer: " + data.expected : "");
  setText("derivation", data.derivation || "");
  document.getElementById("derivation").hidden = !data.derivation;
  setText("explanation", data.explanation || "");
  renderMath(after);
}

function renderCases(fb, details) {
  const ran = details.some(c => c.passed || c.error || c.got !== null && c.got !== undefined);
  if (!ran) return;           // nothing ran (a syntax error or a timeout): the message says why
  const failing = details.filter(c => !c.passed);
  const head = document.createElement("p");
  head.className = "cases-head";
  head.textContent = failing.length ? failing.length + " of " + details.length + " tests failing:"
                                    : "All " + details.length + " tests passed:";
  fb.appendChild(head);
  const ul = document.createElement("ul");
  ul.className = "cases";
  for (const c of failing.concat(details.filter(c => c.passed))) {
    const li = document.createElement("li");
    li.className = c.passed ? "case-pass" : "case-fail";
    let text = (c.passed ? "✓ " : "✗ ") + "(" + c.args.map(a => JSON.stringify(a)).join(", ") + ")";
    if (!c.passed) {
      text += c.error ? " → " + c.error : " → returned " + JSON.stringify(c.got);
      if (!c.error && c.expected !== undefined) text += ", expected " + JSON.stringify(c.expected);
    }
    li.textContent = text;
    ul.appendChild(li);
  }
  fb.appendChild(ul);
}

// The CodeMirror bundle is large, so only pages with an editor textarea load it.
function editorSetup() {
  if (!document.querySelector("textarea[data-editor]") || window.nanoEditor) return;
  const s = document.createElement("script");
  s.src = "/static/editor.js";
  document.head.appendChild(s);
}

// Narrow screens: the header's links fold behind a Menu button so the header stays one line.
function menuSetup() {
  const btn = document.getElementById("menu-toggle");
  const top = document.getElementById("top");
  if (!btn || !top) return;
  btn.addEventListener("click", () => {
    const open = top.classList.toggle("open");
    btn.setAttribute("aria-expanded", String(open));
  });
}

// A link to /#ch-… opens that (collapsed) chapter.
function openHashTarget() {
  const id = decodeURIComponent(location.hash.slice(1));
  const el = id && document.getElementById(id);
  if (el && el.tagName === "DETAILS") { el.open = true; el.scrollIntoView(); }
}

// Checklist: a self-check is saved as soon as it is picked.
function checklistSetup() {
  const status = document.getElementById("checklist-status");
  for (const item of document.querySelectorAll(".check-item")) {
    item.addEventListener("change", async ev => {
      if (ev.target.type !== "radio") return;
      const resp = await fetch("/api/checklist", {method: "POST", headers: {"Content-Type": "application/json"},
        body: JSON.stringify({item: item.dataset.item, level: Number(ev.target.value)})});
      const data = await resp.json();
      item.dataset.saved = resp.ok ? String(data.level) : "";
      if (status) status.textContent = resp.ok ? "Saved: " + data.label + "." : "Not saved: " + data.error.message;
    });
  }
}

function debugSetup() {
  for (const btn of document.querySelectorAll("#debug-code .line")) {
    btn.addEventListener("click", () => {
      for (const b of document.querySelectorAll("#debug-code .line")) b.classList.remove("picked");
      btn.classList.add("picked");
      submitAttempt({line: Number(btn.dataset.line)});
    });
  }
}

function designMove(li, dir) {
  const list = li.parentElement;
  if (dir < 0 && li.previousElementSibling) list.insertBefore(li, li.previousElementSibling);
  if (dir > 0 && li.nextElementSibling) list.insertBefore(li.nextElementSibling, li);
  li.focus();
}

function designSetup() {
  const list = document.getElementById("design-list");
  if (!list) return;
  list.addEventListener("click", ev => {
    const li = ev.target.closest("li");
    if (!li) return;
    if (ev.target.classList.contains("up")) designMove(li, -1);
    if (ev.target.classList.contains("down")) designMove(li, 1);
  });
  list.addEventListener("keydown", ev => {
    const li = ev.target.closest("li");
    if (!li || !ev.altKey) return;
    if (ev.key === "ArrowUp") { designMove(li, -1); ev.preventDefault(); }
    if (ev.key === "ArrowDown") { designMove(li, 1); ev.preventDefault(); }
  });
}

function exerciseSetup() {
  const ex = document.getElementById("exercise");
  if (!ex) return;
  const form = document.getElementById("answer-form");
  const type = ex.dataset.type;
  if (form) {
    form.addEventListener("submit", ev => {
      ev.preventDefault();
      if (type === "derive") submitAttempt({answer: document.getElementById("answer").value});
      else if (type === "trace") {
        const picked = form.querySelector("input[name=choice]:checked");
        submitAttempt({choice: picked ? Number(picked.value) : null, shuffle: Number(ex.dataset.shuffle)});
      } else if (type === "build" || type === "debug") submitAttempt({code: document.getElementById("code").value});
      else if (type === "design") {
        submitAttempt({order: Array.from(document.querySelectorAll("#design-list li")).map(li => li.dataset.step)});
      }
    });
  }
  const code = document.getElementById("code");
  if (code) {
    code.addEventListener("keydown", ev => {
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); form.requestSubmit(); }
      if (ev.key === "Tab") {  // indent instead of leaving the editor
        ev.preventDefault();
        const s = code.selectionStart;
        code.setRangeText("    ", s, code.selectionEnd, "end");
      }
    });
  }
  if (type === "debug") debugSetup();
  if (type === "design") designSetup();
  document.addEventListener("keydown", ev => {
    if (ev.key === "Escape" && document.activeElement) { document.activeElement.blur(); return; }
    const tag = (ev.target.tagName || "").toLowerCase();
    if (tag === "input" && ev.target.type === "text" || tag === "textarea" || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (ev.target.isContentEditable) return;      // typing in the code editor, not a shortcut
    if (ev.key === "n") { const a = document.getElementById("next-link"); if (a) location.href = a.href; }
    if (ev.key === "v") { const a = document.getElementById("variant-link"); if (a) location.href = a.href; }
    if (ev.key === "h") { const b = document.getElementById("hint-btn"); if (b && !b.disabled) b.click(); }
    if (type === "trace" && /^[1-8a-h]$/.test(ev.key)) {
      const idx = /[1-8]/.test(ev.key) ? Number(ev.key) - 1 : ev.key.charCodeAt(0) - 97;
      const radio = document.querySelectorAll("input[name=choice]")[idx];
      if (radio) { radio.checked = true; radio.focus(); }
    }
    if (type === "trace" && ev.key === "Enter" && tag !== "button") form.requestSubmit();
    if (ev.key === "?") alert("Enter: submit · Esc: leave the answer box · n: next exercise · v: new variant · h: hints\n" +
      "Trace: 1-4 / a-d pick an option · Design: Alt+↑/↓ moves the focused step · Build: Ctrl+Enter runs");
  });
}

// Hints one at a time, then an explicit reveal (two clicks: the first says what it costs).
async function postJSON(url, payload) {
  const resp = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"},
                                 body: JSON.stringify(payload)});
  const data = await resp.json();
  if (!resp.ok) throw new Error((data.error && data.error.message) || resp.statusText);
  return data;
}

function hintsSetup() {
  const ex = document.getElementById("exercise");
  const btn = document.getElementById("hint-btn");
  const reveal = document.getElementById("reveal-btn");
  if (!ex) return;
  const target = {id: ex.dataset.id, variant: Number(ex.dataset.variant)};
  if (btn) btn.addEventListener("click", async () => {
    const data = await postJSON("/api/hint", target);
    const li = document.createElement("li");
    li.textContent = data.hint;
    document.getElementById("hint-list").appendChild(li);
    renderMath(li);
    btn.firstChild.textContent = "Next hint (h) ";
    setText("hint-count", data.n + "/" + data.total);
    if (data.n >= data.total) btn.disabled = true;
  });
  if (reveal) reveal.addEventListener("click", async () => {
    if (!reveal.dataset.armed) {
      reveal.dataset.armed = "1";
      reveal.textContent = "Reveal and forfeit the credit for this variant?";
      return;
    }
    const data = await postJSON("/api/reveal", target);
    showAnswer(data);
    reveal.disabled = true;
    reveal.textContent = "Answer revealed";
    setText("reveal-note", "Revealed: a right answer on this variant earns no mastery; try a new variant.");
  });
}

function importSetup() {
  const input = document.getElementById("import-file");
  if (!input) return;
  input.addEventListener("change", async () => {
    const file = input.files[0];
    if (!file) return;
    const body = await file.text();
    const post = (query) => fetch("/api/import" + query, {method: "POST", body: body,
                                                         headers: {"Content-Type": "application/json"}});
    // First a preview (the server validates the whole file and changes nothing), then a confirmation.
    let resp = await post("");
    let data = await resp.json();
    if (resp.ok && !data.applied) {
      const p = data.preview;
      const ok = confirm("Replace the history of " + p.profile + " (" + p.replaces.attempts + " attempts, " +
        p.replaces.cards + " review cards) with this file's " + p.with.attempts + " attempts and " +
        p.with.cards + " review cards?");
      if (!ok) { document.getElementById("import-status").textContent = "Import cancelled; nothing changed."; return; }
      resp = await post("?confirm=" + encodeURIComponent(data.confirm));
      data = await resp.json();
    }
    document.getElementById("import-status").textContent = resp.ok
      ? "Imported " + data.attempts + " attempts into " + data.imported + "." : "Import failed: " + data.error.message;
    if (resp.ok) setTimeout(() => location.reload(), 600);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  renderMath(document.body);
  exerciseSetup();
  hintsSetup();
  importSetup();
  editorSetup();
  menuSetup();
  checklistSetup();
  openHashTarget();
  window.addEventListener("hashchange", openHashTarget);
});
