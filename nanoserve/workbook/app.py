"""The workbook web app: FastAPI, server-rendered Jinja2 pages, a little vanilla JavaScript.

Pages: chapter map (mastery per chapter), one page per exercise (all five types, instant feedback,
the planner's derivation after an attempt, "new variant"), review queue (FSRS), profile (streaks,
per-skill mastery, export/import). The profile is a cookie naming a local profile; nothing leaves the
machine and every asset (KaTeX included) is served from static/.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from nanoserve.errors import InvalidRequestError
from nanoserve.workbook import session
from nanoserve.workbook.bank import SEEDS, Bank, BankError, default_bank, render
from nanoserve.workbook.checker import check, design_shuffle
from nanoserve.workbook.checklist import ChecklistItem, default_checklist
from nanoserve.workbook.progress import SELF_CHECK_LEVELS, Progress

HERE = Path(__file__).parent
DEFAULT_PROFILE = "learner"


def create_app(db_path: str | Path = ":memory:", bank: Bank | None = None,
               checklist: list[ChecklistItem] | None = None) -> FastAPI:
    bank = bank or default_bank()
    checklist = checklist if checklist is not None else default_checklist()
    checklist_by_id = {i.id: i for i in checklist}
    progress = Progress(db_path)
    app = FastAPI(title="nanoserve workbook", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=HERE / "templates")
    app.state.bank, app.state.progress = bank, progress
    chapters = bank.chapters()
    chapter_ids = {f"{s}-{c}": [e.id for e in exs] for (s, c), exs in chapters.items()}

    def profile_of(request: Request) -> str:
        name = request.cookies.get("profile") or DEFAULT_PROFILE
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
        return templates.TemplateResponse(request, name, {**header(profile), **ctx})

    @app.exception_handler(InvalidRequestError)
    async def bad_request(request: Request, exc: InvalidRequestError) -> JSONResponse:
        return JSONResponse({"error": {"message": exc.message, "param": exc.param}}, status_code=400)

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
    def exercise(request: Request, exercise_id: str, v: int = 0) -> HTMLResponse:
        e = bank.get(exercise_id)
        r = render(e, max(0, v))
        nxt = bank.next_after(e.id)
        profile = profile_of(request)
        return page(request, "exercise.html", e=e, r=r, variant=max(0, v), next_id=nxt.id if nxt else None,
                    shuffled=design_shuffle(e, v) if e.type == "design" else [],
                    solved=progress.is_mastered(profile, e.id))

    @app.post("/api/attempt")
    async def attempt(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InvalidRequestError("the body must be JSON", "body") from None
        if not isinstance(body, dict):
            raise InvalidRequestError("the body must be a JSON object", "body")
        e = bank.get(str(body.get("id", "")))
        try:
            variant = int(body.get("variant", 0))
        except (TypeError, ValueError):
            raise InvalidRequestError("variant must be an integer", "variant") from None
        if variant < 0:
            raise InvalidRequestError("variant must be ≥ 0", "variant")
        try:
            verdict = check(e, variant, body)
        except BankError as ex:   # a bank entry the planner cannot solve yet: say so, keep serving
            msg = f"this exercise is broken: {ex}"
            return JSONResponse({"correct": False, "counts": False, "message": msg})
        profile = profile_of(request)
        out = verdict.to_dict()
        if verdict.counts:
            o = progress.record_attempt(profile, e.id, variant, verdict.answer_text, verdict.correct)
            out.update(streak=o.streak, best_streak=o.best_streak, rating=o.rating,
                       due=o.due.isoformat() if o.due else None, newly_mastered=o.newly_mastered)
        out.update(header(profile))
        out["chapter_done"], out["chapter_total"] = progress.mastery(
            profile, {"c": chapter_ids[f"{e.seed}-{e.chapter}"]})["c"]
        return JSONResponse(out)

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
        return page(request, "review_card.html", e=e, r=render(e, card.variant), variant=card.variant,
                    next_id=None, shuffled=design_shuffle(e, card.variant) if e.type == "design" else [],
                    solved=progress.is_mastered(profile, e.id),
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
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InvalidRequestError("the body must be JSON", "body") from None
        if not isinstance(body, dict) or str(body.get("item")) not in checklist_by_id:
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
        resp = RedirectResponse(str(form.get("back") or "/profile"), status_code=303)
        resp.set_cookie("profile", name, samesite="strict", max_age=10 * 365 * 86400)
        return resp

    @app.get("/api/export")
    def export(request: Request) -> Response:
        profile = profile_of(request)
        progress.profile_id(profile)
        data = json.dumps(progress.export_json(profile), indent=1)
        return Response(data, media_type="application/json",
                        headers={"Content-Disposition": f'attachment; filename="workbook-{profile}.json"'})

    @app.post("/api/import")
    async def import_(request: Request) -> JSONResponse:
        try:
            data = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InvalidRequestError("the file is not JSON", "file") from None
        name = progress.import_json(data, profile_of(request))
        return JSONResponse({"imported": name, "attempts": len(progress.attempts(name))})

    return app
