#!/usr/bin/env bash
# Rebuild nanoserve/workbook/static/editor.js (CodeMirror 6 + Python) from nanoserve/workbook/editor/.
# The bundle is committed, so running the workbook or its tests never needs node; run this only after
# changing entry.js or the pinned versions in package.json / package-lock.json.
set -euo pipefail
cd "$(dirname "$0")/../nanoserve/workbook/editor"
npm ci --no-audit --no-fund
npm run build
ls -l ../static/editor.js
