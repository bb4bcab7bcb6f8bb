// The workbook's code editor: CodeMirror 6 with Python highlighting and line numbers, bundled by
// scripts/build_workbook_editor.sh into ../static/editor.js (committed, so nobody needs npm to run it).
//
// It enhances every <textarea data-editor="python">. The textarea stays the source of truth for the
// page's own scripts and for forms: each edit is copied into it, and a script (or a test) that sets its
// value and fires "input" is copied back. The code is kept per exercise in localStorage, so a reload
// does not lose it; "Reset to starter code" restores the page's original text (undoable with Ctrl+Z).
import {EditorView, basicSetup} from "codemirror";
import {keymap} from "@codemirror/view";
import {indentWithTab} from "@codemirror/commands";
import {python} from "@codemirror/lang-python";

const PREFIX = "nanoserve-workbook-code:";

function storageKey(textarea) {
  if (textarea.dataset.editorKey) return PREFIX + textarea.dataset.editorKey;
  const ex = textarea.closest("[data-id]");
  return PREFIX + (ex ? ex.dataset.id : location.pathname) + ":" + (textarea.id || textarea.name);
}

function load(key) {
  try { return localStorage.getItem(key); } catch (e) { return null; }
}

function save(key, text, starter) {
  try {
    if (text === starter) localStorage.removeItem(key); else localStorage.setItem(key, text);
  } catch (e) { /* storage full or disabled: the editor still works, only without keeping code */ }
}

function enhance(textarea) {
  if (textarea.dataset.editorReady) return textarea._nanoEditor;
  textarea.dataset.editorReady = "1";
  const starter = textarea.defaultValue;
  const key = storageKey(textarea);
  const kept = load(key);
  if (kept !== null) textarea.value = kept;
  const wrap = document.createElement("div");
  wrap.className = "code-editor";
  textarea.parentNode.insertBefore(wrap, textarea);
  let syncing = false;
  const view = new EditorView({
    doc: textarea.value,
    parent: wrap,
    extensions: [
      basicSetup,
      python(),
      keymap.of([
        {key: "Mod-Enter", run: () => { if (textarea.form) textarea.form.requestSubmit(); return true; }},
        indentWithTab,
      ]),
      EditorView.lineWrapping,
      EditorView.contentAttributes.of({"aria-label": textarea.getAttribute("aria-label") || "code editor"}),
      EditorView.updateListener.of(u => {
        if (!u.docChanged || syncing) return;
        textarea.value = u.state.doc.toString();
        save(key, textarea.value, starter);
      }),
    ],
  });
  // Edits made to the textarea itself (scripts, tests, autofill) flow into the editor.
  textarea.addEventListener("input", () => {
    syncing = true;
    view.dispatch({changes: {from: 0, to: view.state.doc.length, insert: textarea.value}});
    syncing = false;
    save(key, textarea.value, starter);
  });
  textarea.classList.add("editor-source");
  textarea.setAttribute("aria-hidden", "true");
  textarea.tabIndex = -1;
  const bar = document.createElement("div");
  bar.className = "editor-bar";
  const reset = document.createElement("button");
  reset.type = "button";
  reset.className = "button secondary small editor-reset";
  reset.textContent = "Reset to starter code";
  reset.addEventListener("click", () => {
    view.dispatch({changes: {from: 0, to: view.state.doc.length, insert: starter}});
    view.focus();
  });
  const note = document.createElement("span");
  note.className = "muted small editor-note";
  note.textContent = kept !== null && kept !== starter ? "Your code from last time (kept in this browser)."
                                                       : "Your code is kept in this browser.";
  bar.append(reset, note);
  // A toolbar above the form, not inside it: the form's first button stays its submit button.
  if (textarea.form) textarea.form.before(bar); else wrap.before(bar);
  textarea._nanoEditor = view;
  return view;
}

function enhanceAll(root) {
  for (const t of (root || document).querySelectorAll("textarea[data-editor]")) enhance(t);
}

window.nanoEditor = {enhance, enhanceAll};
if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", () => enhanceAll());
else enhanceAll();
