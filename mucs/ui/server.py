"""Serving the app: every route behind the login (LoginWall), run-folder files sent whole, and `launch`."""
import os

from mucs.explorer.serving import send_file
from mucs.sources.data import MAX_IMAGE_BYTES
from mucs.ui.common import CSS, theme

# What the login page itself needs (GET/HEAD), and the login: every other route answers 401 until the
# client has logged in (LoginWall). Gradio protects only some of its routes (not /gradio_api/cancel,
# /reset, /heartbeat, /app_id, /user, /token, /runs, /startup-events, ...), so the wall stands in front
# of all of them, including routes a later Gradio adds.
PUBLIC_EXACT = {"/", "/login", "/login/", "/favicon.ico", "/manifest.json", "/robots.txt", "/theme.css",
                "/gradio_api/theme.css", "/config", "/config/", "/pwa_icon"}
PUBLIC_PREFIXES = ("/assets/", "/static/", "/svelte/", "/pwa_icon/")
FILE_ROUTE = "/gradio_api/file="


# Gradio's "Use via API" page asks this route whether an MCP server runs (to show an MCP tab); the app
# runs none (mcp_server=False), so it gets an explicit answer instead of a missing route's bare 404
MCP_PROBE = "/gradio_api/mcp/schema"


class LoginWall:
    """ASGI middleware: with --auth, every HTTP and websocket request but the login page's (PUBLIC_*)
    needs the session cookie that POST /login sets. Also refuses `file=` paths to hidden entries
    (staging folders, the marker) of the run folders `roots`, and sends their other files itself
    (serving.send_file: Gradio's route measures a file by its path, then opens it again)."""

    def __init__(self, app, roots=()):
        self.app, self.roots = app, [os.path.realpath(r) for r in roots if r]

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            path = scope.get("path", "")
            refusal = None
            if not self._logged_in(scope) and not self._public(scope, path):
                refusal = (401, "Not authenticated")
            elif path == MCP_PROBE:
                refusal = (404, "MCP is off in this app: use its Python, JavaScript or HTTP API")
            else:
                target = self._run_file(path)
                if target == "":
                    refusal = (404, "File not found")
                elif target and path.startswith(FILE_ROUTE) and scope["type"] == "http" and \
                        scope.get("method") in ("GET", "HEAD") and await send_file(scope, send, target):
                    return None   # sent from the inode it opened: a run replaced meanwhile changes nothing
            if refusal is not None:
                if scope["type"] == "websocket":
                    return await send({"type": "websocket.close", "code": 1008})
                from starlette.responses import JSONResponse
                return await JSONResponse({"detail": refusal[1]}, status_code=refusal[0])(scope, receive, send)
        return await self.app(scope, receive, send)

    @staticmethod
    def _public(scope, path: str) -> bool:
        if scope["type"] != "http":
            return False
        if path == "/gradio_api/startup-events":   # Gradio's own call at launch: open until it has run once
            return getattr(scope.get("app"), "startup_events_triggered", True) is False
        return (path in PUBLIC_EXACT or path.startswith(PUBLIC_PREFIXES)) and (
            scope.get("method") in ("GET", "HEAD") or path in ("/login", "/login/"))

    @staticmethod
    def _logged_in(scope) -> bool:
        app = scope.get("app")
        if app is None or (getattr(app, "auth", None) is None and getattr(app, "auth_dependency", None) is None):
            return True   # no --auth: nothing to check
        from http.cookies import CookieError, SimpleCookie
        cookies = SimpleCookie()
        for name, value in scope.get("headers", ()):
            if name == b"cookie":
                try:
                    cookies.load(value.decode("latin-1"))
                except CookieError:
                    return False
        cid = getattr(app, "cookie_id", "")
        tokens = getattr(app, "tokens", {})
        return any(c in cookies and tokens.get(cookies[c].value) is not None
                   for c in (f"access-token-{cid}", f"access-token-unsecure-{cid}"))

    def _run_file(self, path: str):
        """For a `file=` request of an entry of the run folders: its real path, or "" for a hidden entry
        (staging folders, the marker: refused); None for any other path (left to Gradio's checks)."""
        for route in ("/gradio_api/file=", "/gradio_api/file/", "/file="):
            if path.startswith(route) and "\0" not in path:
                target = os.path.realpath(path[len(route):])
                for root in self.roots:
                    if target.startswith(root + os.sep):
                        hidden = any(part.startswith(".") for part in os.path.relpath(target, root).split(os.sep))
                        return "" if hidden else target
        return None


def launch(demo, ex, host="127.0.0.1", port=7860, auth=None, **kwargs):
    """Queue and serve `demo` with the app's options (local fonts, upload size limit, history paths,
    every route behind the login: LoginWall)."""
    from starlette.middleware import Middleware
    demo.queue(default_concurrency_limit=4)
    allowed = [ex.store.root] + ([ex.store.examples] if ex.store.examples else [])
    return demo.launch(server_name=host, server_port=port, auth=auth, max_file_size=MAX_IMAGE_BYTES, theme=theme(),
                       css=CSS, allowed_paths=allowed, footer_links=["api", "settings"], show_error=True,
                       ssr_mode=False, mcp_server=False, share=False,
                       app_kwargs={"middleware": [Middleware(LoginWall, roots=allowed)]}, **kwargs)
