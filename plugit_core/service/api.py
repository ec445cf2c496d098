"""Client for the proxy's callback API (PROTOCOL.md 6.4), used by services.

Same method names as the original ``PlugItAPI``.  Differences that matter:

* every call has a timeout (connect, read) and reuses one pooled HTTP session;
* the service's key travels in the ``Authorization`` header, never in the URL;
* "not found" answers ``None`` (or ``[]`` for lists) as in the original, while every other failure
  raises a typed :class:`PlugItAPIError` subclass instead of passing silently;
* a call made while an action runs carries the deadline of the proxy's request
  (``Plugit-Deadline``): once the proxy stopped waiting, the API refuses it with
  :class:`PlugItAPIDeadlineError` and does nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import warnings
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any
from urllib.parse import quote

import requests

from ..protocol import H_API_DEADLINE, format_deadline

__all__ = [
    "Orga",
    "PlugItAPI",
    "PlugItAPIAuthError",
    "PlugItAPIDeadlineError",
    "PlugItAPIError",
    "PlugItAPIUnavailableError",
    "User",
    "current_deadline",
    "deadline_scope",
]

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "plugit_deadline", default=None
)


def current_deadline() -> float | None:
    """The deadline of the proxy request being served (seconds since the epoch), or None
    outside an action or when the proxy sent none."""
    return _deadline.get()


@contextlib.contextmanager
def deadline_scope(deadline: float | None) -> Iterator[None]:
    """Make ``deadline`` the current one in this context (the service library does it around
    each action; a thread an action starts copies the context to keep it)."""
    token = _deadline.set(deadline)
    try:
        yield
    finally:
        _deadline.reset(token)


class PlugItAPIError(Exception):
    """The callback API refused or failed a call.  ``status`` is the HTTP status (0 if none)."""

    def __init__(self, message: str, status: int = 0, code: str = "error") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class PlugItAPIAuthError(PlugItAPIError):
    """The API key was refused (403)."""


class PlugItAPIUnavailableError(PlugItAPIError):
    """The proxy could not be reached, timed out or answered a server error."""


class PlugItAPIDeadlineError(PlugItAPIError):
    """The proxy stopped waiting for the request this call was made for (412
    ``deadline_passed``): the visitor was told it failed, and the call did nothing."""


class _Record:
    """A plain attribute container built from a JSON object."""

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in sorted(self.__dict__.items()))
        return f"{type(self).__name__}({inner})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.__dict__ == self.__dict__


class User(_Record):
    """A user as the API returns it (``pk``, ``id``, ``username``, ``orgas``, ...)."""


class Orga(_Record):
    """An organisation (``pk``, ``id``, ``name``, ``codops``)."""


class PlugItAPI:
    """Calls the proxy's callback API at ``url`` (its base, ending with ``/``)."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout: float | tuple[float, float] = (3.05, 10),
        session: requests.Session | None = None,
    ) -> None:
        if not url.endswith("/"):
            url += "/"
        self.url = url
        self.api_key = api_key
        self.timeout = timeout
        self._owns_session = session is None
        self.session = session or requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def close(self) -> None:
        """Close the pooled connections (only when this client created its session)."""
        if self._owns_session:
            self.session.close()

    def __enter__(self) -> PlugItAPI:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- transport --------------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response | None:
        """Perform a call; None on 404, raise on every other failure."""
        deadline = _deadline.get()
        if deadline is not None:
            headers = dict(kwargs.pop("headers", None) or {})
            headers[H_API_DEADLINE] = format_deadline(deadline)
            kwargs["headers"] = headers
        try:
            response = self.session.request(
                method, self.url + path, timeout=self.timeout, allow_redirects=False, **kwargs
            )
        except requests.RequestException as exc:
            raise PlugItAPIUnavailableError(f"{method} {path}: {exc.__class__.__name__}") from exc
        if response.status_code == 404:
            return None
        if response.status_code in (401, 403):
            raise PlugItAPIAuthError(_message(response), response.status_code, "forbidden")
        if response.status_code >= 500:
            raise PlugItAPIUnavailableError(_message(response), response.status_code, "unavailable")
        if response.status_code == 412 and _code(response) == "deadline_passed":
            raise PlugItAPIDeadlineError(_message(response), 412, "deadline_passed")
        if response.status_code >= 400:
            raise PlugItAPIError(_message(response), response.status_code, _code(response))
        return response

    def _get_json(self, path: str, expect: type | None = None, **kwargs: Any) -> Any:
        """GET ``path`` and parse its JSON (None on 404); ``expect`` is the required JSON type."""
        response = self._request("GET", path, **kwargs)
        if response is None:
            return None
        try:
            data = response.json()
        except ValueError:
            raise PlugItAPIError(
                f"GET {path}: the proxy answered non-JSON", response.status_code
            ) from None
        if expect is not None and not isinstance(data, expect):
            kind = "an object" if expect is dict else "a list"
            raise PlugItAPIError(
                f"GET {path}: the proxy answered {type(data).__name__}, not {kind}",
                response.status_code,
                "bad_reply",
            )
        return data

    # -- users and organisations ------------------------------------------------------------------

    def get_user(self, userPk: int | str) -> User | None:  # noqa: N803 (original signature)
        """The user with this pk or UUID, with ``orgas``; None when unknown."""
        data = self._get_json(f"user/{_segment(userPk)}", dict)
        if data is None:
            return None
        return User(**{"pk": userPk, "id": userPk, **data})

    def get_user_techgroups(self, userPk: int | str) -> list[Any]:  # noqa: N803
        """UUIDs of the user's tech groups ([] when the proxy has none)."""
        return self._get_json(f"user/{_segment(userPk)}/techgroups/", list) or []

    def get_subscription_labels(self, userPk: int | str) -> list[str]:  # noqa: N803
        """Labels of the user's active subscriptions to this service ([] when unknown)."""
        return self._get_json(f"subscriptions/{_segment(userPk)}", list) or []

    def get_orgas(self) -> list[Orga] | None:
        """Every organisation visible to this service."""
        data = self._get_json("orgas/", dict)
        if data is None:
            return None
        return [Orga(**{**item, "pk": item.get("id")}) for item in _objects(data, "data")]

    def get_orga(self, orgaPk: int | str) -> Orga | None:  # noqa: N803
        """One organisation; None when unknown."""
        data = self._get_json(f"orga/{_segment(orgaPk)}", dict)
        if data is None:
            return None
        return Orga(**{"pk": orgaPk, "id": orgaPk, **data})

    def get_project_members(self) -> list[User] | None:
        """The members of this service."""
        data = self._get_json("members/", dict)
        if data is None:
            return None
        return [User(**member) for member in _objects(data, "members")]

    def get_techgroups(self) -> list[Any]:
        """Tech groups ([] when the proxy has none)."""
        return self._get_json("techgroups/", list) or []

    # -- mail -------------------------------------------------------------------------------------

    def send_mail(
        self,
        sender: str | None,
        subject: str,
        recipients: Iterable[str],
        message: str,
        response_id: str | None = None,
        html_message: bool = False,
    ) -> requests.Response:
        """Ask the proxy to send a mail; replies are delivered to the ``mail`` endpoint with
        ``response_id``.  Returns the HTTP response (raises on failure)."""
        data: dict[str, Any] = {
            "subject": subject,
            "dests": list(recipients),
            "message": message,
            "html_message": "true" if html_message else "false",
        }
        if sender:
            data["sender"] = sender
        if response_id is not None:
            data["response_id"] = response_id
        response = self._request("POST", "mail/", data=data)
        if response is None:
            raise PlugItAPIError("the proxy offers no mail endpoint", 404, "not_found")
        return response

    # -- billing ----------------------------------------------------------------------------------

    def get_plans(self) -> list[dict[str, Any]]:
        """This service's plans (``code``, ``label``, ``description``)."""
        data = self._get_json("billing/plans/", expect=dict)
        return [] if data is None else list(data.get("plans", []))

    def get_subscriptions(
        self, *, user: int | str | None = None, orga: int | str | None = None, all: bool = False
    ) -> list[dict[str, Any]]:
        """Subscriptions to this service's plans, of a user or an organisation (all when
        neither); ``all`` includes ended and future ones."""
        params = {k: v for k, v in (("user", user), ("orga", orga)) if v is not None}
        if all:
            params["all"] = "true"
        data = self._get_json("billing/subscriptions/", expect=dict, params=params)
        return [] if data is None else list(data.get("subscriptions", []))

    def grant_subscription(
        self,
        plan: str,
        *,
        user: int | str | None = None,
        orga: int | str | None = None,
        start: str | None = None,
        end: str | None = None,
    ) -> dict[str, Any]:
        """Subscribe a user or an organisation to one of this service's plans (ISO dates)."""
        data = {"plan": plan, "user": user, "orga": orga, "start": start, "end": end}
        response = self._request(
            "POST",
            "billing/subscriptions/",
            data={k: str(v) for k, v in data.items() if v is not None},
        )
        if response is None:
            raise PlugItAPIError("unknown plan, user or organisation", 404, "not_found")
        created: dict[str, Any] = response.json()
        return created

    def cancel_subscription(self, subscription_id: int, *, at: str | None = None) -> dict[str, Any]:
        """End a subscription now, or at the ISO date ``at``."""
        response = self._request(
            "DELETE",
            f"billing/subscriptions/{int(subscription_id)}",
            params={"at": at} if at else None,
        )
        if response is None:
            raise PlugItAPIError("no such subscription", 404, "not_found")
        cancelled: dict[str, Any] = response.json()
        return cancelled

    # -- forum (not offered by this proxy; kept for source compatibility) -------------------------

    def forum_create_topic(
        self, subject: str, author: Any, message: str, tags: str = ""
    ) -> requests.Response:
        """Create a forum topic.  The PlugIt proxy has no forum: raises PlugItAPIError."""
        response = self._request(
            "POST",
            "ebuio/forum/",
            data={"subject": subject, "author": author, "message": message, "tags": tags},
        )
        if response is None:
            raise PlugItAPIError("the proxy offers no forum", 404, "no-on-ebuio")
        return response

    def ebuio_forum(self, subject: str, author: Any, message: str, tags: str = "") -> Any:
        """Deprecated alias of :meth:`forum_create_topic` returning its JSON."""
        warnings.warn(
            "ebuio_forum is deprecated, use forum_create_topic", DeprecationWarning, stacklevel=2
        )
        return self.forum_create_topic(subject, author, message, tags).json()

    def forum_topic_get_by_tag_for_user(
        self, tag: str | None = None, author: Any = None
    ) -> list[Any] | None:
        """Forum topics with ``tag``; None without a tag or when the proxy has no forum."""
        if not tag:
            return None
        params = {"u": author} if author is not None else None
        data = self._get_json(f"ebuio/forum/search/bytag/{_segment(tag)}", params=params)
        if not isinstance(data, dict) or "data" not in data:
            return None
        topics: list[Any] | None = data["data"]
        return topics


def _segment(value: Any) -> str:
    """One URL path segment: ``/``, ``?``, ``..`` and the like cannot reach another endpoint."""
    text = quote(str(value), safe="")
    return text.replace(".", "%2E") if text.strip(".") == "" else text


def _objects(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    items = data.get(key, [])
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise PlugItAPIError(f"the proxy's {key!r} is not a list of objects", 200, "bad_reply")
    return items


def _message(response: requests.Response) -> str:
    try:
        payload = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(payload, dict):
        return str(payload.get("message") or payload.get("error") or f"HTTP {response.status_code}")
    return f"HTTP {response.status_code}"


def _code(response: requests.Response) -> str:
    try:
        payload = response.json()
    except ValueError:
        return "error"
    return str(payload.get("error", "error")) if isinstance(payload, dict) else "error"
