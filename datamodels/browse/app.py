"""The Starlette app of `datamodels serve` and the uvicorn server that runs it.

Routes (GET only; nothing writes): ``/`` the run, ``/tests`` the grid, ``/test/<target>``,
``/train/<position>``, ``/mislabel``, ``/leakage``, ``/methods``, and
``/image/<test|train>/<id>.png`` (an input drawn as PNG; ids are integers, so no path of the
host is ever served). An unknown id or page is a 404 page of one line.

`serve_forever` runs in the foreground (the command line); `start` runs in a daemon thread
and returns a `Served` (the URL, with ``stop()``), which is what ``dm.serve`` gives a
notebook. Pages are rendered in the server's worker threads; `RunReader` serialises its
reads.
"""

from __future__ import annotations

import html
import socket
import threading
import time
from typing import TYPE_CHECKING

from datamodels.browse.images import is_image, png_bytes
from datamodels.browse.layout import STYLE
from datamodels.browse.reader import NotFound, RunReader
from datamodels.browse.views_methods import index_page, methods_page
from datamodels.browse.views_tests import grid_page, test_page
from datamodels.browse.views_train import leakage_page, mislabel_page, train_page
from datamodels.errors import DatamodelsError, MissingDependencyError
from datamodels.store import Run

if TYPE_CHECKING:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, Response

DEFAULT_PORT = 8000
START_TIMEOUT_S = 30.0


def _starlette() -> None:
    """One line when the web app's packages are missing (the ``serve`` extra)."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            "Starlette and uvicorn", "datamodels serve", "pip install 'datamodels[serve]'"
        ) from None


def _one_line_page(status: int, message: str) -> HTMLResponse:
    from starlette.responses import HTMLResponse

    text = html.escape(" ".join(str(message).split()))
    return HTMLResponse(
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{status}</title><style>{STYLE}</style></head><body>"
        f'<p id="error">{text}</p><p><a href="/">the run</a></p></body></html>',
        status_code=status,
    )


def create_app(run: Run | str, k: int = 8) -> Starlette:
    """The app over ``run`` (read-only), showing the top ``k`` of every ranking."""
    _starlette()
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import HTMLResponse, Response
    from starlette.routing import Route

    reader = RunReader(run)
    images: dict[tuple[str, int], bytes] = {}

    def _id(request: Request, name: str) -> int:
        text = request.path_params[name]
        try:
            return int(text)
        except ValueError:
            raise NotFound(f"{name} {text!r} is not an integer id") from None

    def _params(request: Request) -> dict[str, str]:
        return dict(request.query_params)

    def home(request: Request) -> HTMLResponse:
        return HTMLResponse(index_page(reader))

    def tests(request: Request) -> HTMLResponse:
        return HTMLResponse(grid_page(reader, _params(request)))

    def test(request: Request) -> HTMLResponse:
        return HTMLResponse(test_page(reader, _id(request, "target"), k))

    def train(request: Request) -> HTMLResponse:
        return HTMLResponse(train_page(reader, _id(request, "position"), k))

    def mislabel(request: Request) -> HTMLResponse:
        return HTMLResponse(mislabel_page(reader, _params(request)))

    def leakage(request: Request) -> HTMLResponse:
        return HTMLResponse(leakage_page(reader))

    def methods(request: Request) -> HTMLResponse:
        return HTMLResponse(methods_page(reader, _params(request)))

    def image(request: Request) -> Response:
        split, ident = request.path_params["split"], _id(request, "ident")
        if split not in ("test", "train"):
            raise NotFound(f"no split {split!r}: images are test or train")
        key = (split, ident)
        if key not in images:
            if split == "test":
                inputs, row = reader.inputs("test"), int(reader.test_row(ident)["row"])
            else:
                reader.train_row(ident)  # NotFound for an unknown position
                inputs, row = reader.inputs("train"), ident
            if inputs is None or not is_image(inputs[row]):
                raise NotFound(f"{split} example {ident} is not an image")
            images[key] = png_bytes(inputs[row])
        return Response(
            images[key], media_type="image/png", headers={"Cache-Control": "max-age=3600"}
        )

    async def not_found(request: Request, exc: Exception) -> HTMLResponse:
        return _one_line_page(404, str(exc))

    async def http_error(request: Request, exc: HTTPException) -> HTMLResponse:
        message = exc.detail if exc.status_code != 404 else f"no page {request.url.path}"
        return _one_line_page(exc.status_code, message)

    async def user_error(request: Request, exc: Exception) -> HTMLResponse:
        return _one_line_page(500, str(exc))

    routes = [
        Route("/", home),
        Route("/tests", tests),
        Route("/test/{target}", test),
        Route("/train/{position}", train),
        Route("/mislabel", mislabel),
        Route("/leakage", leakage),
        Route("/methods", methods),
        Route("/image/{split}/{ident}.png", image),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            NotFound: not_found,
            HTTPException: http_error,
            DatamodelsError: user_error,
        },
    )
    app.state.reader = reader
    return app


def bind(host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one); `DatamodelsError` naming the
    address when it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise DatamodelsError(
            f"--port {port}: cannot listen on {host}:{port} ({exc.strerror}); "
            "choose another port (0 picks a free one)"
        ) from exc
    sock.listen(128)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def _server(app: Starlette) -> uvicorn.Server:
    """A uvicorn server for ``app``; the run's inputs start decoding beside it."""
    import uvicorn  # on demand: `import datamodels` need not load the server

    threading.Thread(
        target=app.state.reader.warm, name="datamodels-serve-warm", daemon=True
    ).start()
    return uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))


def serve_forever(
    run: Run | str, host: str = "127.0.0.1", port: int = DEFAULT_PORT, k: int = 8, announce=print
) -> None:
    """Serve ``run`` in the foreground until interrupted; ``announce`` gets the startup line."""
    app = create_app(run, k)
    sock = bind(host, port)
    announce(f"serving {app.state.reader.run.uri} at {url_of(sock)} (Ctrl-C stops)")
    try:
        _server(app).run(sockets=[sock])
    finally:
        sock.close()
        app.state.reader.close()


class Served(str):
    """The URL of a server running in a background thread; ``stop()`` ends it."""

    server: uvicorn.Server
    thread: threading.Thread
    app: Starlette

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.app.state.reader.close()


def start(run: Run | str, host: str = "127.0.0.1", port: int = 0, k: int = 8) -> Served:
    """Serve ``run`` from a daemon thread; returns once it answers (port 0: a free one)."""
    app = create_app(run, k)
    sock = bind(host, port)
    server = _server(app)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="datamodels-serve", daemon=True
    )
    url = url_of(sock)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        server.should_exit = True
        sock.close()
        raise DatamodelsError(f"the server for {run} did not start on {url}")
    served = Served(url)
    served.server, served.thread, served.app = server, thread, app
    return served
