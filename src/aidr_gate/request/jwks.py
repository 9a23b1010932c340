"""Where verification keys come from: a JWKS URL, a key file, or memory, behind one small interface.

Key sets load and refresh outside the hot path and are swapped whole (one reference assignment), so a
request sees the old set or the new one, never a mix. Outages never erase good state: a fetch that
fails, times out, is too large or returns garbage keeps the last good set. pyjwt's ``PyJWKClient`` is
deliberately not used: it fetches with blocking urllib under a lock, clears its cache when a fetch
fails and refetches on every unknown ``kid``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from aidr_gate.request.keys import KeySet, KeySetError, build_key_set, parse_key_file
from aidr_gate.tasks import stop_task

logger = logging.getLogger("aidr_gate.jwks")

Listener = Callable[[KeySet | None, KeySet], None]

MAX_KEY_FILE_BYTES = 1024 * 1024
# Defaults of the key sources, and of the identity settings that configure them.
DEFAULT_RELOAD_INTERVAL = 30.0  # seconds between key file checks
DEFAULT_REFRESH_MIN = 60.0  # seconds: the shortest JWKS cache lifetime honoured
DEFAULT_REFRESH_MAX = 3600.0  # seconds: the longest
DEFAULT_UNKNOWN_KID_INTERVAL = 30.0  # seconds between refetches for an unknown kid
DEFAULT_HTTP_TIMEOUT = 5.0  # seconds for a whole JWKS fetch
DEFAULT_MAX_JWKS_BYTES = 256 * 1024
_RETRY_FIRST = 1.0  # seconds before the first retry after a failed fetch; doubles up to refresh_min


def on_event_loop() -> bool:
    """True when called from a running event loop, where nothing may block on I/O."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def shown_url(url: str) -> str:
    """A URL as logs and errors show it: no userinfo, query or fragment (they may hold secrets)."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return "<a URL that does not parse>"
    if ":" in host:
        host = f"[{host}]"
    return urlunsplit(
        (parts.scheme, host if port is None else f"{host}:{port}", parts.path, "", "")
    )


def _scrubbed(text: str, url: str, shown: str) -> str:
    """*text* (a library's error message) with *url* shown safely; withheld if a secret remains."""
    text = text.replace(url, shown)
    parts = urlsplit(url)
    secrets = (parts.password, parts.query, parts.fragment, parts.netloc.rpartition("@")[0])
    if any(secret and secret in text for secret in secrets):
        return "(details withheld: they repeat the URL's credentials)"
    return text


class FetchError(KeySetError):
    """A JWKS fetch failed (network, status, size, timeout or not JSON); the last good set is kept."""


class KeyProvider(Protocol):
    """A source of verification keys for the authenticator."""

    @property
    def current(self) -> KeySet | None:
        """The key set in force now (None until one has loaded)."""
        ...

    def add_listener(self, listener: Listener) -> None:
        """Call *listener(old, new)* after every swap (cache invalidation)."""
        ...

    async def start(self) -> None:
        """Load the first key set and start background refresh."""
        ...

    async def close(self) -> None:
        """Stop background work and release connections."""
        ...

    async def refetch_for_unknown_kid(self) -> bool:
        """Try to learn new keys because a token named an unknown kid; True if the set changed."""
        ...

    def load_sync(self) -> KeySet:
        """Load keys once, blocking (CLI use; never on an event loop)."""
        ...


class _KeyStore:
    """Holds the current set and tells listeners when it is replaced."""

    def __init__(self) -> None:
        self._current: KeySet | None = None
        self._listeners: list[Listener] = []

    @property
    def current(self) -> KeySet | None:
        """The key set in force now (None until one has loaded)."""
        return self._current

    def add_listener(self, listener: Listener) -> None:
        """Call *listener(old, new)* after every swap."""
        self._listeners.append(listener)

    def _install(self, new: KeySet) -> None:
        old, self._current = self._current, new
        for listener in self._listeners:
            try:
                listener(old, new)
            except Exception:  # a listener's bug must not undo a good swap
                logger.exception("key set listener failed")


class StaticKeys(_KeyStore):
    """A fixed key set held in memory (tests, embedding)."""

    def __init__(self, key_set: KeySet) -> None:
        super().__init__()
        self._current = key_set

    def replace(self, key_set: KeySet) -> None:
        """Swap in another set (listeners are told)."""
        self._install(key_set)

    async def start(self) -> None:
        """Nothing to load."""

    async def close(self) -> None:
        """Nothing to release."""

    async def refetch_for_unknown_kid(self) -> bool:
        """A fixed set never learns keys."""
        return False

    def load_sync(self) -> KeySet:
        """The fixed set."""
        if self._current is None:  # pragma: no cover - set in __init__
            raise KeySetError("no key set")
        return self._current


class FileKeys(_KeyStore):
    """Keys from a file (PEM public keys or certificates, or a JWKS as JSON), reloaded on change."""

    def __init__(
        self,
        path: str | Path,
        algorithms: Sequence[str],
        *,
        reload_interval: float = DEFAULT_RELOAD_INTERVAL,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self._algorithms = tuple(algorithms)
        self._reload_interval = reload_interval
        self._stamp: tuple[int, int, int] | None = None
        self._task: asyncio.Task[None] | None = None
        self.failures = 0  # reloads refused (the key set metrics read it, as RemoteJwks's)
        # Told the result of every reload, on change or on SIGHUP (the runtime counts them).
        self.on_reload: Callable[[bool], None] | None = None

    def _stat(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read(self) -> tuple[KeySet, tuple[int, int, int]]:
        try:
            stamp = self._stat()
            with open(self.path, "rb") as handle:
                raw = handle.read(MAX_KEY_FILE_BYTES + 1)
        except OSError as exc:
            raise KeySetError(f"{self.path}: cannot read ({exc.strerror or exc})") from None
        if len(raw) > MAX_KEY_FILE_BYTES:
            raise KeySetError(f"{self.path}: larger than {MAX_KEY_FILE_BYTES} bytes")
        try:
            return parse_key_file(raw, self._algorithms, source=str(self.path)), stamp
        except KeySetError:
            raise
        except Exception as exc:  # a parser surprise is a bad file, not a crash at start or reload
            logger.exception("key file %s could not be parsed", self.path)
            raise KeySetError(f"{self.path}: cannot be read ({type(exc).__name__})") from None

    def read_now(self) -> KeySet:
        """Read and parse the file without installing it (the loader's check); blocking."""
        return self._read()[0]

    def load_sync(self) -> KeySet:
        """Read the file now (blocking); raises :class:`KeySetError` when it holds no usable key."""
        key_set, stamp = self._read()
        self._stamp = stamp
        self._install(key_set)
        _log_loaded(key_set)
        return key_set

    async def reload(self) -> bool:
        """Read the file again off the event loop; on failure keep the last good set and log it."""
        try:
            key_set, stamp = await asyncio.to_thread(self._read)
        except KeySetError as exc:
            logger.warning("key file reload refused, keeping the last good keys: %s", exc)
            self.failures += 1
            if self.on_reload is not None:
                self.on_reload(False)
            return False
        self._stamp = stamp
        self._install(key_set)
        _log_loaded(key_set)
        if self.on_reload is not None:
            self.on_reload(True)
        return True

    async def start(self) -> None:
        """Load the file (a failure here is a startup error) and watch it for changes."""
        if self._current is None:
            await asyncio.to_thread(self.load_sync)
        if self._task is None and self._reload_interval > 0:
            self._task = asyncio.create_task(self._watch(), name="aidr-gate-key-file")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._reload_interval)
            try:
                try:
                    stamp = await asyncio.to_thread(self._stat)
                except OSError:
                    stamp = None  # gone for now (an editor's rename); keep the keys we have
                if stamp is not None and stamp != self._stamp:
                    await self.reload()
            except Exception:  # a failed check must not end the watch; the last good keys stay
                logger.exception("key file check failed; keeping the last good keys")

    async def close(self) -> None:
        """Stop watching the file."""
        await stop_task(self._task)
        self._task = None

    async def refetch_for_unknown_kid(self) -> bool:
        """A file changes when its owner changes it, not because a token names a new kid."""
        return False


class RemoteJwks(_KeyStore):
    """A JWKS URL fetched with aiohttp, refreshed in the background on its cache lifetime.

    * The lifetime is the response's ``Cache-Control: max-age`` bounded by *refresh_min* and
      *refresh_max* (no header: *refresh_max*; ``no-cache``/``no-store``: *refresh_min*).
    * A failed fetch keeps the last good set and is retried after 1 s, doubling up to *refresh_min*.
    * An unknown ``kid`` triggers a fetch only when no fetch started in the last
      *unknown_kid_interval* seconds; concurrent callers share the one fetch in flight.
    * Responses are bounded by *max_bytes* (after decompression) and *timeout* seconds in total.
    """

    def __init__(
        self,
        url: str,
        algorithms: Sequence[str],
        *,
        refresh_min: float = DEFAULT_REFRESH_MIN,
        refresh_max: float = DEFAULT_REFRESH_MAX,
        unknown_kid_interval: float = DEFAULT_UNKNOWN_KID_INTERVAL,
        timeout: float = DEFAULT_HTTP_TIMEOUT,
        max_bytes: int = DEFAULT_MAX_JWKS_BYTES,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.url = url
        self._shown_url = shown_url(url)  # for logs and errors
        self._algorithms = tuple(algorithms)
        self._refresh_min = refresh_min
        self._refresh_max = refresh_max
        self._unknown_kid_interval = unknown_kid_interval
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._session = session
        self._owns_session = session is None
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._inflight: asyncio.Task[bool] | None = None
        self._last_attempt = -float("inf")
        self._next_refresh = -float("inf")
        self._failures = 0
        self.failures = 0
        self.last_error: str | None = None

    # -- fetching --------------------------------------------------------------------------------

    def _lifetime(self, max_age: float | None) -> float:
        wanted = self._refresh_max if max_age is None else max_age
        return min(max(wanted, self._refresh_min), self._refresh_max)

    async def _fetch_and_install(self, session: aiohttp.ClientSession) -> bool:
        self._last_attempt = self._clock()
        try:
            data, max_age = await fetch_jwks(
                session, self.url, seconds=self._timeout, max_bytes=self._max_bytes
            )
            key_set = build_key_set(data, self._algorithms, source=self._shown_url)
        except Exception as exc:  # any failure keeps the last good set; CancelledError passes
            self._failures += 1
            self.failures += 1
            self.last_error = str(exc) if isinstance(exc, KeySetError) else type(exc).__name__
            retry = min(self._refresh_min, _RETRY_FIRST * 2 ** (self._failures - 1))
            self._next_refresh = self._clock() + retry
            logger.warning(
                "JWKS fetch failed (%s); keeping the last good keys (%s), retry in %.1fs",
                self.last_error,
                "none yet" if self._current is None else f"{len(self._current)} keys",
                retry,
            )
            return False
        self._failures = 0
        self.last_error = None
        self._next_refresh = self._clock() + self._lifetime(max_age)
        self._install(key_set)
        _log_loaded(key_set)
        return True

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
            self._owns_session = True
        return self._session

    async def refresh(self) -> bool:
        """Fetch now, or join the fetch already in flight; True if a new set was installed."""
        task = self._inflight
        if task is None or task.done():
            task = asyncio.create_task(
                self._fetch_and_install(self._ensure_session()), name="aidr-gate-jwks-fetch"
            )
            self._inflight = task
        # shield: a caller that is cancelled (client gone) must not cancel everyone's fetch
        return await asyncio.shield(task)

    async def refetch_for_unknown_kid(self) -> bool:
        """Fetch because a token named an unknown kid, at most once per *unknown_kid_interval*."""
        task = self._inflight
        if task is not None and not task.done():
            return await asyncio.shield(task)
        if self._clock() - self._last_attempt < self._unknown_kid_interval:
            return False
        return await self.refresh()

    def load_sync(self) -> KeySet:
        """Fetch once, blocking, in a private event loop (CLI use); raises :class:`KeySetError`."""
        if on_event_loop():
            raise KeySetError("cannot fetch keys synchronously inside a running event loop")

        async def once() -> tuple[Any, float | None]:
            async with aiohttp.ClientSession() as session:
                return await fetch_jwks(
                    session, self.url, seconds=self._timeout, max_bytes=self._max_bytes
                )

        self._last_attempt = self._clock()
        data, _ = asyncio.run(once())
        key_set = build_key_set(data, self._algorithms, source=self._shown_url)
        self._install(key_set)
        _log_loaded(key_set)
        return key_set

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Fetch the first set (a failure is logged, not raised: requests fail closed meanwhile)."""
        if self._task is not None:
            return
        if self._current is None:
            await self.refresh()
        self._task = asyncio.create_task(self._run(), name="aidr-gate-jwks-refresh")

    async def _run(self) -> None:
        while True:
            delay = self._next_refresh - self._clock()
            if delay > 0:
                # Re-check after sleeping: an unknown-kid fetch may have moved the schedule.
                await asyncio.sleep(delay)
                continue
            try:
                await self.refresh()
            except Exception:  # keep the refresher alive whatever happens
                logger.exception("JWKS refresh crashed; retrying")
                self._next_refresh = self._clock() + self._refresh_min

    async def close(self) -> None:
        """Stop refreshing, cancel a fetch in flight and close the HTTP session we opened."""
        await stop_task(self._task)
        self._task = None
        await stop_task(self._inflight)
        self._inflight = None
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None


async def fetch_jwks(
    session: aiohttp.ClientSession, url: str, *, seconds: float, max_bytes: int
) -> tuple[Any, float | None]:
    """GET a JWKS: the parsed JSON and the response's max-age; raises :class:`FetchError`.

    Error messages name the URL without userinfo, query or fragment (see :func:`shown_url`).
    """
    shown = shown_url(url)
    try:
        async with asyncio.timeout(seconds):
            async with session.get(
                url,
                allow_redirects=False,
                headers={"Accept": "application/jwk-set+json, application/json"},
            ) as response:
                if response.status != 200:
                    raise FetchError(f"{shown}: HTTP {response.status}")
                declared = response.content_length
                if declared is not None and declared > max_bytes:
                    raise FetchError(f"{shown}: response of {declared} bytes exceeds {max_bytes}")
                body = bytearray()
                async for chunk in response.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > max_bytes:
                        raise FetchError(f"{shown}: response exceeds {max_bytes} bytes")
                max_age = cache_max_age(response.headers.getall("Cache-Control", ()))
    except TimeoutError:
        raise FetchError(f"{shown}: no complete answer within {seconds:g}s") from None
    except aiohttp.ClientError as exc:
        detail = _scrubbed(str(exc), url, shown)
        raise FetchError(f"{shown}: {type(exc).__name__}: {detail}") from None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise FetchError(f"{shown}: response is not JSON") from None
    return data, max_age


def cache_max_age(values: Iterable[str]) -> float | None:
    """Seconds from ``Cache-Control`` header values: ``max-age``; 0 for no-cache/no-store; else None."""
    directives = [d.strip().lower() for v in values for d in v.split(",")]
    if "no-store" in directives or "no-cache" in directives:
        return 0.0
    for directive in directives:
        name, _, value = directive.partition("=")
        if name.strip() == "max-age":
            value = value.strip().strip('"')
            if value.isdigit() and len(value) <= 10:
                return float(value)
    return None


def _log_loaded(key_set: KeySet) -> None:
    logger.info(
        "verification keys loaded from %s: %d usable (%s)%s",
        key_set.source,
        len(key_set),
        ", ".join(key_set.key_ids),
        f"; skipped {'; '.join(key_set.skipped)}" if key_set.skipped else "",
    )
