"""The small HTTP client the corpus tools use: one request, its failure sorted by what to do next, and retries.

A failed request is `Retryable` (server busy or broken, connection lost: wait and ask again),
`RequestFailed` (this request is refused; others may still work) or `Fatal` (wrong key, model or URL:
every request would fail the same way, so stop). `with_retries` waits between tries with exponential
backoff, or as long as the server's Retry-After asks. Requests to this machine bypass any proxy set
in the environment.
"""

from __future__ import annotations

import email.utils
import http.client
import ipaddress
import json
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import TypeVar

MAX_BACKOFF_S = 60.0
MAX_RETRY_AFTER_S = 300.0
RETRY_STATUS = frozenset({408, 429})  # plus every 5xx
FATAL_STATUS = frozenset({401, 403, 404})  # wrong key, model or URL: every label would fail the same way

T = TypeVar("T")


class Retryable(Exception):
    """A try that may work when repeated; `retry_after`: the server's hint in seconds, if any."""

    def __init__(self, message: str, retry_after: float | None = None, connection: bool = False):
        super().__init__(message)
        self.retry_after = retry_after
        self.connection = connection  # the server was not reached (no answer at all)


class RequestFailed(Exception):
    """This request failed for good (refused, or every retry used up); other requests may still work."""


class Fatal(Exception):
    """Every request would fail the same way (wrong key, model or URL, or the server out of reach)."""


class Stopped(Exception):
    """The caller asked to stop (another request failed fatally, or the run was interrupted)."""


def is_loopback(url: str) -> bool:
    """Whether `url` names this machine (localhost or a loopback address)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def opener_for(url: str) -> urllib.request.OpenerDirector:
    """A urllib opener for `url`."""
    # A proxy from the environment must not catch requests meant for this machine.
    return (
        urllib.request.build_opener(urllib.request.ProxyHandler({}))
        if is_loopback(url)
        else urllib.request.build_opener()
    )


def retry_after(value: str | None) -> float | None:
    """Seconds a Retry-After header asks to wait (a number or an HTTP date), capped; None when unusable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    if seconds != seconds:  # "NaN" parses as a float: no usable hint, so the usual backoff
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def short(text: str, limit: int = 120) -> str:
    """`text` on one line, cut to `limit` characters, for error messages."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def post_json(
    url: str,
    body: object,
    headers: Mapping[str, str],
    timeout: float,
    opener: urllib.request.OpenerDirector,
    answered: threading.Event,
) -> bytes:
    """POSTs `body` as JSON; returns the answer's bytes or raises Retryable / RequestFailed / Fatal.

    answered: set once the server has answered at all (an error status counts).
    """
    headers = {"Content-Type": "application/json", "Accept": "application/json", **headers}
    request = urllib.request.Request(url, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST")
    try:
        with opener.open(request, timeout=timeout) as response:
            payload = response.read()
    except urllib.error.HTTPError as exc:
        answered.set()
        detail = short(exc.read().decode("utf-8", "replace")) if exc.fp is not None else ""
        message = f"HTTP {exc.code} {exc.reason}" + (f": {detail}" if detail else "")
        if exc.code in RETRY_STATUS or exc.code >= 500:
            raise Retryable(message, retry_after(exc.headers.get("Retry-After"))) from None
        if exc.code in FATAL_STATUS:
            raise Fatal(f"{message} from {url}") from None
        raise RequestFailed(message) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        if isinstance(reason, TimeoutError):
            reason = f"no answer within --timeout {timeout:g} s"
        raise Retryable(f"connection error: {reason}", connection=True) from None
    answered.set()
    return payload


def with_retries(
    attempt: Callable[[], T],
    max_retries: int,
    backoff: float,
    stop: threading.Event,
    url: str,
    answered: threading.Event,
) -> T:
    """Calls `attempt` until it returns, retrying on Retryable up to `max_retries` times; returns its result.

    Waits `backoff` seconds (doubled each retry, with jitter, at most MAX_BACKOFF_S) or the server's
    Retry-After. When every try failed to reach a server that has never answered (`answered` unset), raises
    Fatal: nothing else will get through either; otherwise RequestFailed with the last problem. Raises
    Stopped as soon as `stop` is set.
    """
    attempts = max_retries + 1
    last_problem = ""
    only_connection_errors = True
    for tried in range(attempts):
        if stop.is_set():
            raise Stopped()
        try:
            return attempt()
        except Retryable as exc:
            last_problem, hint = str(exc), exc.retry_after
            only_connection_errors &= exc.connection
        if tried + 1 < attempts:
            delay = hint
            if delay is None:
                delay = min(backoff * 2**tried, MAX_BACKOFF_S) * random.uniform(1.0, 1.25)
            if stop.wait(delay):
                raise Stopped()
    if only_connection_errors and not answered.is_set():  # once it has answered, one slow label is no reason
        raise Fatal(f"cannot reach {url} after {attempts} attempts: {last_problem}")
    raise RequestFailed(f"{last_problem} (after {attempts} attempts)")


# ------------------------------------------------------------------------------------------------ downloads
DOWNLOAD_TIMEOUT_S = 60.0
DOWNLOAD_RETRIES = 3
DOWNLOAD_BACKOFF_S = 1.0


class FetchError(RuntimeError):
    """A published file could not be downloaded or is not what it should be (the message says what to do)."""


def _get(url: str, answered: threading.Event) -> bytes:
    """One GET of `url`: its bytes, or Retryable / RequestFailed / Fatal as this module sorts them."""
    try:
        with opener_for(url).open(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            data = response.read()
    except urllib.error.HTTPError as exc:
        answered.set()
        message = f"HTTP {exc.code} {exc.reason}"
        if exc.code in RETRY_STATUS or exc.code >= 500:
            raise Retryable(message, retry_after(exc.headers.get("Retry-After"))) from None
        if exc.code in FATAL_STATUS:
            raise Fatal(message) from None
        raise RequestFailed(message) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise Retryable(f"connection error: {getattr(exc, 'reason', None) or exc}", connection=True) from None
    answered.set()
    return data


def download_text(url: str, what: str, advice: str) -> bytes:
    """The bytes of the UTF-8 text file at `url` (`what` it should be, e.g. "a split list"), retrying what may
    pass on a second try (busy or broken server, lost connection); FetchError naming the URL, ending with
    `advice`, when it cannot be downloaded, and naming the URL when it is not UTF-8 text or is empty."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https", "file"):
        raise FetchError(f"{url} is not an http(s) or file URL")
    answered = threading.Event()
    try:
        data = with_retries(
            lambda: _get(url, answered), DOWNLOAD_RETRIES, DOWNLOAD_BACKOFF_S, threading.Event(), url, answered
        )
    except (Fatal, RequestFailed) as exc:
        problem = str(exc).replace(f"cannot reach {url} ", "no answer ")  # the message names the URL once
        raise FetchError(f"could not download {url}: {problem}; {advice}") from None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FetchError(f"{url} is not UTF-8 text (byte {exc.start}); not {what}") from None
    if not data.strip():
        raise FetchError(f"{url} is empty; not {what}")
    return data
