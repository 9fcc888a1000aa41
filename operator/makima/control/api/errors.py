"""Every error the API answers is JSON `ErrorBody`; this module makes sure of it.

`ApiError` is what handlers raise. The middleware turns it, aiohttp's own HTTP errors
(404, 405, 413 from `client_max_size`, …), store failures and anything unexpected into
JSON. Unexpected exceptions are logged with method and path only, never the request body
or headers: both can carry a token.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from makima.control.store import StoreUnavailable, TaskNotFound
from makima.core.protocol import ErrorBody, Problem

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """Raise from a handler to answer `status` with an `ErrorBody`."""

    def __init__(
        self,
        status: int,
        error: str,
        problems: Iterable[Problem] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(error)
        self.status = status
        self.body = ErrorBody(error=error, problems=list(problems))
        self.headers = headers or {}


def json_response(model: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A pydantic model (by alias, no nulls) or plain JSON-able value as a JSON response."""
    if hasattr(model, "model_dump_json"):
        text = model.model_dump_json(by_alias=True, exclude_none=True)
        return web.Response(text=text, status=status, content_type="application/json", headers=headers)
    return web.json_response(model, status=status, headers=headers)


def error_response(status: int, body: ErrorBody, headers: dict[str, str] | None = None) -> web.Response:
    return json_response(body, status=status, headers=headers)


def _loc(loc: tuple[int | str, ...]) -> str | None:
    parts = [str(p) for p in loc]
    return ".".join(parts) if parts else None


def problems_from_validation(exc: ValidationError, *, prefix: tuple[int | str, ...] = ()) -> list[Problem]:
    """One `Problem` per pydantic error, with the dotted location as `field`."""
    out: list[Problem] = []
    for err in exc.errors(include_url=False, include_input=False):
        out.append(Problem(message=str(err.get("msg", "invalid")), field=_loc(prefix + tuple(err.get("loc", ())))))
    return out


# Headers aiohttp puts on some errors that are worth keeping (e.g. Allow on a 405).
_KEPT_HEADERS = ("Allow", "WWW-Authenticate", "Retry-After")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.body, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: exc.headers[k] for k in _KEPT_HEADERS if k in exc.headers}
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        return error_response(exc.status, ErrorBody(error=message or exc.reason), headers)
    except TaskNotFound as exc:
        return error_response(404, ErrorBody(error=str(exc)))
    except StoreUnavailable:
        log.warning("%s %s: task store unavailable", request.method, request.path)
        return error_response(503, ErrorBody(error="task store unavailable, retry later"), {"Retry-After": "5"})
    except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
        raise
    except ConnectionResetError:
        # The client went away mid-request (it gave up, or its pod was stopped): nothing to answer.
        # An answer is still returned: aiohttp drops it quietly when the socket is gone.
        log.info("%s %s: the client disconnected before the answer", request.method, request.path)
        return error_response(400, ErrorBody(error="the client disconnected"))
    except Exception as exc:
        # Method, path and exception type only: bodies and headers can carry tokens.
        log.error("unexpected error on %s %s: %s", request.method, request.path, type(exc).__name__, exc_info=exc)
        return error_response(500, ErrorBody(error="internal error (logged by the operator)"))
