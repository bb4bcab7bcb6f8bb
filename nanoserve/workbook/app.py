"""The workbook web app: FastAPI, server-rendered Jinja2 pages, a little vanilla JavaScript.

Pages: chapter map (mastery per chapter), one page per exercise (all five types, instant feedback,
the planner's derivation after an attempt, "new variant"), review queue (FSRS), profile (streaks,
per-skill mastery, export/import). The profile is a cookie naming a local profile; nothing leaves the
machine and every asset (KaTeX included) is served from static/.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from nanoserve.errors import InvalidRequestError
from nanoserve.workbook import session
from nanoserve.workbook.bank import SEEDS, Bank, BankError, default_bank, parse_variant, render
from nanoserve.workbook.chapters import chapter_notes
from nanoserve.workbook.checker import check, design_shuffle, trace_order
from nanoserve.workbook.checklist import ChecklistItem, default_checklist
from nanoserve.workbook.limits import BodyLimitMiddleware, loads_bounded, same_site_path
from nanoserve.workbook.progress import FIXED_REVEAL_FORGET_S, SELF_CHECK_LEVELS, Progress
from nanoserve.workbook.teaching import hints, reveal

HERE = Path(__file__).parent
DEFAULT_PROFILE = "learner"


def create_app(db_path: str | Path = ":memory:", bank: Bank | None = None,
               checklist: list[ChecklistItem] | None = None) -> FastAPI:
    bank = bank or default_bank()
    checklist = checklist if checklist is not None else default_checklist()
    checklist_by_id = {i.id: i for i in checklist}
    progress = Progress(db_path)
    app = FastAPI(title="nanoserve workbook", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimitMiddleware)
    import_key = secrets.token_bytes(32)      # signs import confirmations; a restart voids them
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=HERE / "templates")
    app.state.bank, app.state.progress = bank, progress
    chapters = bank.chapters()
    chapter_ids = {f"{s}-{c}": [e.id for e in exs] for (s, c), exs in chapters.items()}

    def profile_of(request: Request) -> str:
        name = unquote(request.cookies.get("profile") or "") or DEFAULT_PROFILE   # quoted: any Unicode name
        try:
            progress.profile_id(name)
        except InvalidRequestError:
            name = DEFAULT_PROFILE
        return name

    def header(profile: str) -> dict[str, Any]:
        done = progress.mastered(profile)
        return {"profile": profile, "profiles": progress.profiles() or [profile],
                "streak": progress.streak(profile), "best_streak": progress.best_streak(profile),
                "mastered": len(done & set(bank.by_id)), "total": len(bank.exercises),
                "due": len(progress.due_reviews(profile))}

    def page(request: Request, name: str, **ctx: Any) -> HTMLResponse:
        profile = profile_of(request)
        head = header(profile)
        # A page variable named like a header field would replace it in base.html (the Review
        # badge once printed the due exercises' repr, answers included).
        assert not head.keys() & ctx.keys(), f"page variables shadow the header: {head.keys() & ctx.keys()}"
        return templates.TemplateResponse(request, name, {**head, **ctx})

    @app.exception_handler(InvalidRequestError)
    async def bad_request(request: Request, exc: InvalidRequestError) -> JSONResponse:
        return JSONResponse({"error": {"message": exc.message, "param": exc.param,
                                       "type": "invalid_request_error"}}, status_code=400)

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request) -> HTMLResponse:
        profile = profile_of(request)
        done = progress.mastered(profile)
        seeds = []
        for seed, title in SEEDS.items():
            rows = []
            for (s, c), exs in chapters.items():
                if s != seed:
                    continue
                n_done = sum(e.id in done for e in exs)
                rows.append({"key": f"{s}-{c}", "chapter": c, "title": exs[0].chapter_title, "exercises": exs,
                             "done": n_done, "total": len(exs), "pct": round(100 * n_done / len(exs))})
            if rows:
                seeds.append({"seed": seed, "title": title, "chapters": rows})
        return page(request, "index.html", seeds=seeds, done=done, **home_extras(profile))

    def home_extras(profile: str) -> dict[str, Any]:
        """Home page: where to continue, how many reviews wait, how far the checklist is."""
        last = progress.last_attempt(profile)
        resume = None
        if last and last["exercise_id"] in bank.by_id:
            e = bank.by_id[last["exercise_id"]]
            nxt = bank.next_after(e.id) if last["correct"] else None
            resume = {"last": e, "last_right": bool(last["correct"]), "go": nxt or e}
        checks = progress.self_checks(profile)
        sure = sum(checks.get(i.id) == len(SELF_CHECK_LEVELS) - 1 for i in checklist)
        return {"resume": resume, "first_exercise": bank.exercises[0] if bank.exercises else None,
                "review_count": len(session.review_queue(progress, bank, profile, limit=10**6)),
                "checklist_sure": sure, "checklist_total": len(checklist)}

    @app.get("/ex/{exercise_id}", response_class=HTMLResponse)
    def exercise(request: Request, exercise_id: str, v: str = "0") -> HTMLResponse:
        e = bank.get(exercise_id)
        v = parse_variant(v)      # 1e30, Infinity, -1, abc: a 400 naming `variant`
        nxt = bank.next_after(e.id)
        return page(request, "exercise.html", **exercise_context(e, v, profile_of(request)),
                    next_id=nxt.id if nxt else None)

    def exercise_context(e: Any, v: int, profile: str) -> dict[str, Any]:
        """What an exercise page shows, on its own page or as a review-session card."""
        r = render(e, v)
        # Trace options are shuffled per showing; the attempt sends the seed back and the grader maps it.
        shuffle = secrets.randbelow(2**31)
        trace = [(i, r.options[i]) for i in trace_order(e, v, shuffle)] if e.type == "trace" else []
        all_hints = hints(e, v)
        used, revealed = progress.aids(profile, e.id, v)
        return dict(e=e, r=r, variant=v, shuffled=design_shuffle(e, v) if e.type == "design" else [],
                    solved=progress.is_mastered(profile, e.id), shuffle=shuffle, trace_options=trace,
                    n_hints=len(all_hints), shown_hints=all_hints[:used], revealed=revealed,
                    chapter_key=f"{e.seed}-{e.chapter}",
                    has_notes=chapter_notes(f"{e.seed}-{e.chapter}") is not None)

    @app.post("/api/attempt")
    async def attempt(request: Request) -> JSONResponse:
        body = loads_bounded(await request.body())
        if not isinstance(body, dict):
            raise InvalidRequestError("the body must be a JSON object", "body")
        e = bank.get(str(body.get("id", ""))[:200])
        variant = parse_variant(body.get("variant", 0))
        try:
            # Builds run a subprocess for up to seconds and answers are parsed: off the event loop.
            verdict = await run_in_threadpool(check, e, variant, body)
        except BankError as ex:   # a bank entry the planner cannot solve yet: say so, keep serving
            msg = f"this exercise is broken: {ex}"
            return JSONResponse({"correct": False, "counts": False, "message": msg})
        profile = profile_of(request)
        out = verdict.to_dict()
        if not verdict.correct:     # the answer is earned by a right answer or forfeited by a reveal
            out.update(expected="", derivation="", explanation="")
        if verdict.counts:
            o = progress.record_attempt(profile, e.id, variant, verdict.answer_text, verdict.correct,
                                        elapsed_s=_elapsed_s(body), forget_after_s=_forget_after(e))
            # `next_review`, not `due`: header()'s `due` (the count of due reviews) shares this dict.
            out.update(streak=o.streak, best_streak=o.best_streak, rating=o.rating,
                       next_review=o.due.isoformat() if o.due else None, newly_mastered=o.newly_mastered,
                       hints_used=o.hints, revealed=o.revealed)
        out.update(header(profile))
        out["chapter_done"], out["chapter_total"] = progress.mastery(
            profile, {"c": chapter_ids[f"{e.seed}-{e.chapter}"]})["c"]
        return JSONResponse(out)

    def aid_target(body: Any) -> tuple[Any, int]:
        if not isinstance(body, dict):
            raise InvalidRequestError("the body must be a JSON object", "body")
        return bank.get(str(body.get("id", ""))[:200]), parse_variant(body.get("variant", 0))

    @app.post("/api/hint")
    async def hint(request: Request) -> JSONResponse:
        """The next hint (or hint n); recorded, so the attempt after it is rated as helped."""
        e, variant = aid_target(loads_bounded(await request.body()))
        all_hints = hints(e, variant)
        if not all_hints:
            return JSONResponse({"hint": "", "n": 0, "total": 0})
        profile = profile_of(request)
        used = progress.aids(profile, e.id, variant)[0]
        n = min(len(all_hints), used + 1)
        progress.use_hint(profile, e.id, variant, n)
        return JSONResponse({"hint": all_hints[n - 1], "n": n, "total": len(all_hints)})

    @app.post("/api/reveal")
    async def reveal_(request: Request) -> JSONResponse:
        """The answer and its working, on demand; forfeits this variant's credit (recorded)."""
        e, variant = aid_target(loads_bounded(await request.body()))
        try:
            shown = reveal(e, variant)
        except BankError as ex:
            return JSONResponse({"error": {"message": f"this exercise is broken: {ex}", "param": "id"}},
                                status_code=400)
        profile = profile_of(request)
        rating = progress.reveal(profile, e.id, variant)
        return JSONResponse({**shown, "rating": rating, "revealed": True})

    @app.get("/chapter/{key}", response_class=HTMLResponse)
    def chapter(request: Request, key: str) -> HTMLResponse:
        notes = chapter_notes(key)
        seed, _, ch = key.partition("-")
        exs = chapters.get((seed, ch))
        if notes is None or not exs:
            raise InvalidRequestError(f"no chapter notes for {key!r}", "chapter")
        return page(request, "chapter.html", key=key, notes=notes, exercises=exs,
                    seed_title=SEEDS.get(seed, seed), done=progress.mastered(profile_of(request)))

    @app.get("/review", response_class=HTMLResponse)
    def review(request: Request) -> HTMLResponse:
        profile = profile_of(request)
        now = datetime.now(UTC)
        due = [(bank.by_id[i], d) for i, d in progress.due_reviews(profile, now) if i in bank.by_id]
        upcoming = [(bank.by_id[i], d) for i, d in progress.next_due(profile)
                    if i in bank.by_id and d > now][:20]
        return page(request, "review.html", due_cards=due, upcoming=upcoming, now=now)

    # review sessions and the checklist -------------------------------------------------------------
    @app.get("/review/start")
    def review_start(request: Request, item: str = "") -> RedirectResponse:
        """Build a queue (every due card, or one checklist item's due and weak exercises) and start it."""
        profile = profile_of(request)
        if item:
            if item not in checklist_by_id:
                raise InvalidRequestError(f"no checklist item {item[:40]!r}", "item")
            cards = session.practice_queue(progress, bank, profile, list(checklist_by_id[item].exercise_ids))
        else:
            cards = session.review_queue(progress, bank, profile)
        if not cards:
            return RedirectResponse("/review", status_code=303)
        t = int(datetime.now(UTC).timestamp())
        url = f"/review/session?q={session.encode(cards)}&i=0&t={t}" + (f"&item={item}" if item else "")
        return RedirectResponse(url, status_code=303)

    @app.get("/review/session", response_class=HTMLResponse)
    def review_session(request: Request, q: str = "", i: int = 0, t: int = 0, item: str = "") -> HTMLResponse:
        cards = session.decode(q, bank)
        if not cards:
            raise InvalidRequestError("an empty review session", "q")
        i = min(max(0, i), len(cards))
        base = f"/review/session?q={q}&t={t}" + (f"&item={item}" if item in checklist_by_id else "")
        practising = checklist_by_id.get(item)
        if i == len(cards):
            results = session.summarize(progress, profile_of(request), cards, session.started_at(t))
            tally = {k: sum(r.outcome == k for r in results) for k in ("right", "missed", "skipped")}
            return page(request, "review_done.html", results=results, tally=tally, by_id=bank.by_id,
                        practising=practising, restart_item=item if practising else "")
        card = cards[i]
        e = bank.by_id[card.exercise_id]
        profile = profile_of(request)
        return page(request, "review_card.html", **exercise_context(e, card.variant, profile), next_id=None,
                    card=card, card_index=i, card_total=len(cards), session_base=base, practising=practising)

    @app.get("/checklist", response_class=HTMLResponse)
    def checklist_page(request: Request) -> HTMLResponse:
        profile = profile_of(request)
        checks = progress.self_checks(profile)
        counts = progress.mastery(profile, {i.id: list(i.exercise_ids) for i in checklist})
        sections: dict[str, list[dict[str, Any]]] = {}
        for it in checklist:
            n, tot = counts[it.id]
            sections.setdefault(it.section, []).append(
                {"item": it, "level": checks.get(it.id), "solved": n, "total": tot})
        return page(request, "checklist.html", sections=sections, levels=SELF_CHECK_LEVELS,
                    checked=len(checks), item_total=len(checklist))

    @app.post("/api/checklist")
    async def checklist_set(request: Request) -> JSONResponse:
        body = loads_bounded(await request.body())
        if not isinstance(body, dict) or str(body.get("item"))[:200] not in checklist_by_id:
            raise InvalidRequestError("name a checklist item", "item")
        level = body.get("level")
        if not isinstance(level, int) or isinstance(level, bool):
            raise InvalidRequestError("level must be an integer", "level")
        profile = profile_of(request)
        progress.set_self_check(profile, str(body["item"]), level)
        return JSONResponse({"item": body["item"], "level": level, "label": SELF_CHECK_LEVELS[level]})

    @app.get("/profile", response_class=HTMLResponse)
    def profile_page(request: Request) -> HTMLResponse:
        profile = profile_of(request)
        skills = progress.mastery(profile, bank.skills())
        by_seed = {s: [e.id for e in bank.exercises if e.seed == s] for s in SEEDS}
        per_seed = progress.mastery(profile, by_seed)
        recent = list(reversed(progress.attempts(profile)))[:15]
        return page(request, "profile.html", skills=skills, per_seed=per_seed, seeds=SEEDS, recent=recent,
                    days=progress.practice_days(profile)[-60:])

    @app.post("/profile/select")
    async def select_profile(request: Request) -> Response:
        # A plain urlencoded form, parsed here: no python-multipart dependency for one field.
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode(errors="replace")).items()}
        name = str(form.get("name", "")).strip()
        progress.profile_id(name)           # creates it; raises a clear 400 for a bad name
        resp = RedirectResponse(same_site_path(form.get("back")), status_code=303)
        resp.set_cookie("profile", quote(name, safe=""), samesite="strict", max_age=10 * 365 * 86400)
        return resp

    @app.get("/api/export")
    def export(request: Request) -> Response:
        profile = profile_of(request)
        progress.profile_id(profile)
        data = json.dumps(progress.export_json(profile), indent=1)
        safe_name = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in profile)
        return Response(data, media_type="application/json",
                        headers={"Content-Disposition": f'attachment; filename="workbook-{safe_name}.json"'})

    @app.post("/api/import")
    async def import_(request: Request, confirm: str = "") -> JSONResponse:
        """Two steps: without `confirm`, validate the whole file and answer with a preview (what it
        replaces) and a confirmation token; with that token, apply it in one transaction."""
        raw = await request.body()
        data = loads_bounded(raw, "file", max_int_digits=1000)
        profile = profile_of(request)
        plan = await run_in_threadpool(progress.plan_import, data, profile)
        token = hmac.new(import_key, profile.encode() + b"\0" + hashlib.sha256(raw).digest(),
                         "sha256").hexdigest()
        if not confirm:
            return JSONResponse({"applied": False, "preview": plan.preview(), "confirm": token})
        if not hmac.compare_digest(confirm.encode(errors="replace"), token.encode()):
            raise InvalidRequestError("the confirmation does not match this file and profile; "
                                      "import it again", "confirm")
        name = await run_in_threadpool(progress.apply_import, plan)
        return JSONResponse({"applied": True, "imported": name, "attempts": len(progress.attempts(name))})

    return app


def _elapsed_s(body: dict[str, Any]) -> float | None:
    """Seconds since the exercise was opened, as the page measured it (Easy needs it); None if absent."""
    try:
        ms = float(body.get("elapsed_ms"))
    except (TypeError, ValueError):
        return None
    return ms / 1000 if 0 <= ms < 1e10 else None


def _forget_after(e: Any) -> float | None:
    """Exercises with variants forfeit a revealed variant for good (there are fresh ones); exercises with
    one fixed answer count again a day after the reveal."""
    return None if e.variants or e.type == "design" else FIXED_REVEAL_FORGET_S
