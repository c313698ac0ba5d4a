"""The people page: a Starlette application over one identity store.

Server-rendered (Jinja2 templates, plain HTML forms, no JavaScript), so it works in any
browser and needs no build step. Every page but the sign-in form needs a session
(:mod:`components.ui.security`); every form posts its CSRF token, and a post without the
session's token is refused with 403 before anything is read from it. Corrections go
through :mod:`components.ui.corrections` (one transaction each, undoable); after each,
the browser is redirected (303) to the page it came from with a one-line message.

Pages: ``/`` the people; ``/people/{id}`` one person's faces, least similar first;
``/faces/{id}`` a face on its photo, box drawn; ``/unknown`` clusters of the unknown
pool with suggestions; ``/history`` recent corrections and undo.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlencode

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from components.identities import store as db
from components.identities.crops import crops_root_for
from components.identities.lifecycle import Policy, policy_for_store
from components.identities.operations import IdentityError, delete_identity
from components.ui import corrections, queries
from components.ui.images import PictureError, Pictures
from components.ui.security import (
    CSRF_FIELD,
    Credentials,
    SignInThrottle,
    csrf_matches,
    new_csrf_token,
    session_secret,
)

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "faces_ui_session"
# Form fields accepted per post: a page shows at most a few hundred faces.
MAX_FORM_FIELDS = corrections.MAX_FACES + 50
log = logging.getLogger("faces.ui")

SECURITY_HEADERS = {
    # Only our own styles and images, no scripts at all, no framing, forms post only to us.
    "content-security-policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` (and no-store on pages) to every answer."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                for name, value in SECURITY_HEADERS.items():
                    if name.encode() not in names:
                        headers.append((name.encode(), value.encode()))
                if b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _safe_back(value: str | None, default: str = "/") -> str:
    """A local path to return to; anything else (another site, a scheme) goes to the default."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value or "\n" in value:
        return default
    return value


def open_store(url: str, *, create: bool = False) -> db.IdentityStore:
    """The store at ``url``; a SQLite file that does not exist is an error (a typo), unless ``create``."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:" and not create:
        if not Path(parsed.database).is_file():
            raise IdentityError(f"no identity store at {parsed.database}; run `faces run` first or pass --db")
    return db.IdentityStore(url)


def create_app(store: db.IdentityStore, settings, *, environ=None, crops_root: str | None = None,
               policy: Policy | None = None) -> Starlette:
    """The people page over ``store``.

    Args:
        store: the identity store.
        settings: :class:`components.settings.Settings` (its ``ui:`` section).
        environ: where the secrets are read (default ``os.environ``).
        crops_root: where relative crop and photo locations start (default: the store's, see
            :func:`components.identities.crops.crops_root_for`).
        policy: the life-cycle policy (default: the store's active model's thresholds).

    Raises:
        ConfigurationError: no API key and no password configured.
    """
    ui = settings.ui
    credentials = Credentials.from_environment(environ)
    policy = policy or policy_for_store(store, settings)
    pictures = Pictures(crops_root if crops_root is not None else crops_root_for(store.url),
                        thumbnail_px=ui.thumbnail_px, cache_size=ui.thumbnail_cache, photo_max_side=ui.photo_max_side)
    unknown = queries.UnknownClusters(policy, ui.suggestions)
    throttle = SignInThrottle()
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals["sorts"] = queries.SORTS

    # -- helpers ---------------------------------------------------------------------------------

    def csrf_token(request: Request) -> str:
        if CSRF_FIELD not in request.session:
            request.session[CSRF_FIELD] = new_csrf_token()
        return request.session[CSRF_FIELD]

    def render(request: Request, name: str, status_code: int = 200, **context) -> Response:
        context.update(csrf=csrf_token(request), user=request.session.get("user"),
                       flash=request.session.pop("flash", None), path=request.url.path,
                       full_path=request.url.path + (f"?{request.url.query}" if request.url.query else ""))
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    def flash(request: Request, text: str, kind: str = "ok") -> None:
        request.session["flash"] = {"kind": kind, "text": text}

    def signed_in(handler):
        async def wrapped(request: Request):
            if not request.session.get("user"):
                if request.method == "GET":
                    wanted = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                    return RedirectResponse("/login?" + urlencode({"next": wanted}), status_code=303)
                raise HTTPException(401, "sign in first")
            return await handler(request)

        wrapped.__name__ = handler.__name__
        return wrapped

    async def checked_form(request: Request):
        """The posted form, when it carries this session's CSRF token (403 otherwise)."""
        form = await request.form(max_fields=MAX_FORM_FIELDS, max_files=0)
        if not csrf_matches(request.session.get(CSRF_FIELD), form.get(CSRF_FIELD)):
            raise HTTPException(403, "this form is stale or was not sent by the people page (no valid CSRF token); "
                                     "reload the page and try again")
        return form

    def actor(request: Request) -> str:
        return f"ui:{request.session.get('user')}"

    def path_id(request: Request, name: str = "id") -> int:
        try:
            return int(request.path_params[name])
        except (KeyError, ValueError):
            raise HTTPException(404, "not found") from None

    def correction(handler):
        """A post that changes the store: CSRF checked, errors shown as a message on the page it came from."""

        async def wrapped(request: Request):
            form = await checked_form(request)
            back = _safe_back(form.get("back"))
            try:
                text, back = handler(request, form, back)
                flash(request, text)
            except IdentityError as error:
                flash(request, str(error), "error")
            except SQLAlchemyError as error:
                log.error("people page: the identity store failed: %s", error.__class__.__name__)
                flash(request, "the identity store failed; nothing was changed (see the server log)", "error")
            return RedirectResponse(back, status_code=303)

        wrapped.__name__ = handler.__name__
        return signed_in(wrapped)

    # -- sign in / out ------------------------------------------------------------------------

    async def login_page(request: Request):
        if request.session.get("user"):
            return RedirectResponse(_safe_back(request.query_params.get("next")), status_code=303)
        return render(request, "login.html", next=_safe_back(request.query_params.get("next")))

    async def login(request: Request):
        form = await checked_form(request)
        client = request.client.host if request.client else "?"
        if throttle.blocked(client):
            return render(request, "login.html", status_code=429, next=_safe_back(form.get("next")),
                          error="too many wrong attempts; wait a minute")
        who = credentials.check(str(form.get("secret") or ""))
        if who is None:
            throttle.failed(client)
            log.warning("people page: a wrong secret was typed from %s", client)  # never the secret itself
            return render(request, "login.html", status_code=401, next=_safe_back(form.get("next")),
                          error="that is neither the API key nor the password")
        throttle.succeeded(client)
        request.session.clear()  # a fresh session: no token planted before sign-in survives
        request.session["user"] = who
        request.session[CSRF_FIELD] = new_csrf_token()
        return RedirectResponse(_safe_back(form.get("next")), status_code=303)

    @signed_in
    async def logout(request: Request):
        await checked_form(request)
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    async def healthz(request: Request):
        return PlainTextResponse("ok")

    # -- pages ------------------------------------------------------------------------------------

    @signed_in
    async def people_page(request: Request):
        params = request.query_params
        sort = params.get("sort", "size")
        search = params.get("q", "")[:200]
        hidden = params.get("hidden") == "1"
        page = queries.people(store, sort=sort, search=search, page=queries.page_number(params.get("page")),
                              per_page=ui.people_per_page, hidden=hidden)
        return render(request, "people.html", page=page, sort=sort if sort in queries.SORTS else "size", q=search,
                      hidden=hidden)

    @signed_in
    async def person_page(request: Request):
        found = queries.person(store, path_id(request), page=queries.page_number(request.query_params.get("page")),
                               per_page=ui.faces_per_page)
        if found is None:
            raise HTTPException(404, f"there is no person #{request.path_params['id']} (deleted, or merged into another)")
        return render(request, "person.html", person=found)

    @signed_in
    async def face_page(request: Request):
        found = queries.face(store, path_id(request))
        if found is None:
            raise HTTPException(404, "there is no such face (deleted with its person?)")
        return render(request, "face.html", face=found)

    @signed_in
    async def unknown_page(request: Request):
        page = unknown.page(store, queries.page_number(request.query_params.get("page")), ui.clusters_per_page)
        return render(request, "unknown.html", page=page, shown=ui.faces_per_cluster)

    @signed_in
    async def history_page(request: Request):
        return render(request, "history.html", corrections=corrections.recent(store, 30))

    @signed_in
    async def thumbnail(request: Request):
        face_id = path_id(request)
        location = queries.crop_location(store, face_id)
        if location is None:
            raise HTTPException(404, "there is no such face")
        try:
            data = pictures.thumbnail(face_id, location)
        except PictureError as error:
            raise HTTPException(404, str(error)) from None
        return Response(data, media_type="image/jpeg", headers={"cache-control": "private, max-age=3600"})

    @signed_in
    async def photo(request: Request):
        found = queries.face(store, path_id(request))
        if found is None:
            raise HTTPException(404, "there is no such face")
        try:
            data = pictures.photo_with_box(found["photo_path"], found["box"])
        except PictureError as error:
            raise HTTPException(404, str(error)) from None
        return Response(data, media_type="image/jpeg", headers={"cache-control": "private, max-age=600"})

    # -- corrections ------------------------------------------------------------------------------

    def _ids(form, name: str) -> list[int]:
        values = []
        for value in form.getlist(name):
            values += [part for part in str(value).split(",") if part.strip()]
        return corrections.faces_of(values)

    def _person_field(form, name: str = "person"):
        value = str(form.get(name) or "").strip().lstrip("#")
        if not value:
            raise corrections.CorrectionError("name the person (its number, shown as #id)")
        return value

    @correction
    def rename(request, form, back):
        result = corrections.rename(store, path_id(request), str(form.get("name") or ""), actor=actor(request))
        return f"renamed #{result['id']} to {result['name']}", back

    @correction
    def merge_selected(request, form, back):
        chosen = list(dict.fromkeys(str(value) for value in form.getlist("person")))
        if len(chosen) < 2:
            raise corrections.CorrectionError("select at least two people to merge")
        # Into the largest (then the oldest): the fewest faces move.
        sizes = {int(row["id"]): row["size"] for row in store.identity_list()}
        try:
            ids = sorted({int(value) for value in chosen}, key=lambda identity: (-sizes.get(identity, 0), identity))
        except ValueError:
            raise corrections.CorrectionError("people are chosen by their numbers") from None
        result = corrections.merge(store, ids[0], ids[1:], actor=actor(request), policy=policy)
        return f"merged {len(result['merged'])} people into #{result['id']} ({result['faces_moved']} faces moved)", back

    @correction
    def merge_into(request, form, back):
        source = path_id(request)
        result = corrections.merge(store, _person_field(form, "into"), [source], actor=actor(request), policy=policy)
        return f"merged #{source} into #{result['id']}", f"/people/{result['id']}"

    @correction
    def move(request, form, back):
        source = path_id(request)
        destination = str(form.get("to") or "")
        if destination == "person":
            to = _person_field(form, "target")
        elif destination in (corrections.NEW, corrections.UNKNOWN):
            to = destination
        else:
            raise corrections.CorrectionError("choose where the faces go: another person, a new person or unknown")
        result = corrections.move(store, _ids(form, "face"), source, to, name=form.get("new_name"), actor=actor(request),
                                  policy=policy)
        where = "the unknown faces" if result["to"] is None else f"#{result['to']}"
        still = queries.person(store, source, per_page=1)
        return f"moved {result['faces_moved']} face(s) to {where}", back if still else "/"

    @correction
    def not_this_person(request, form, back):
        result = corrections.not_this_person(store, path_id(request), actor=actor(request), policy=policy)
        still = queries.person(store, result["from"], per_page=1)
        return (f"face {path_id(request)} is not #{result['from']}: moved to the unknown faces, and remembered",
                back if still else "/")

    @correction
    def hide(request, form, back):
        result = corrections.hide(store, path_id(request), True, actor=actor(request))
        return f"#{result['id']} is hidden", back

    @correction
    def unhide(request, form, back):
        result = corrections.hide(store, path_id(request), False, actor=actor(request))
        return f"#{result['id']} is shown again", back

    @correction
    def delete_person(request, form, back):
        identity = path_id(request)
        if form.get("confirm") != "yes":
            raise corrections.CorrectionError("tick the box to confirm: deleting a person cannot be undone")
        with store.session() as session:
            faces = [int(face) for face in session.scalars(
                select(db.AssignmentRow.face_id).where(db.AssignmentRow.identity_id == identity))]
        result = delete_identity(store, identity, crops_root=pictures.reader.root, actor=actor(request))
        pictures.forget(faces)
        return (f"deleted #{identity}: {result['faces_deleted']} faces, their crops ({result['crops_removed']} removed) "
                "and embeddings"), "/"

    @correction
    def accept(request, form, back):
        result = corrections.accept(store, _ids(form, "face"), _person_field(form), actor=actor(request), policy=policy)
        return f"{result['faces']} face(s) added to #{result['id']}", back

    @correction
    def reject(request, form, back):
        result = corrections.reject(store, _ids(form, "face"), _person_field(form), actor=actor(request))
        return f"remembered: these {result['faces']} face(s) are not #{result['id']}", back

    @correction
    def new_person(request, form, back):
        result = corrections.new_person(store, _ids(form, "cluster"), name=form.get("name"), actor=actor(request),
                                        policy=policy)
        return f"{result['faces']} face(s) became #{result['id']}", back

    @correction
    def undo(request, form, back):
        result = corrections.undo(store, actor=actor(request), policy=policy)
        return f"undone: {result['summary']}", back

    async def http_error(request: Request, error: HTTPException):
        if error.status_code == 401:
            return RedirectResponse("/login", status_code=303)
        return render(request, "error.html", status_code=error.status_code, status=error.status_code, message=error.detail)

    routes = [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/", people_page, methods=["GET"]),
        Route("/people/merge", merge_selected, methods=["POST"]),
        Route("/people/{id:int}", person_page, methods=["GET"]),
        Route("/people/{id:int}/rename", rename, methods=["POST"]),
        Route("/people/{id:int}/merge-into", merge_into, methods=["POST"]),
        Route("/people/{id:int}/move", move, methods=["POST"]),
        Route("/people/{id:int}/hide", hide, methods=["POST"]),
        Route("/people/{id:int}/unhide", unhide, methods=["POST"]),
        Route("/people/{id:int}/delete", delete_person, methods=["POST"]),
        Route("/faces/{id:int}", face_page, methods=["GET"]),
        Route("/faces/{id:int}/thumb.jpg", thumbnail, methods=["GET"]),
        Route("/faces/{id:int}/photo.jpg", photo, methods=["GET"]),
        Route("/faces/{id:int}/not-this-person", not_this_person, methods=["POST"]),
        Route("/unknown", unknown_page, methods=["GET"]),
        Route("/unknown/accept", accept, methods=["POST"]),
        Route("/unknown/reject", reject, methods=["POST"]),
        Route("/unknown/new-person", new_person, methods=["POST"]),
        Route("/history", history_page, methods=["GET"]),
        Route("/undo", undo, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(SessionMiddleware, secret_key=session_secret(environ), session_cookie=SESSION_COOKIE,
                   max_age=ui.session_max_age_s, same_site="strict", https_only=ui.secure_cookie),
    ]
    app = Starlette(routes=routes, middleware=middleware, exception_handlers={HTTPException: http_error})
    app.state.store = store
    return app
