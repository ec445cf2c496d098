"""The billing endpoints of the callback API (``<mount>ebuio_api/billing/...``).

Each service sees and manages only its own plans and subscriptions, and only for its own
members and their organisations: a user who is unknown, or not a member of the calling service,
is 404 ``not_found`` whatever the request (an organisation none of its members belongs to
likewise).  Bodies are form fields or a JSON object, at most 1 MiB; anything else (invalid
UTF-8 or JSON, JSON nested too deep, not an object, fields of the wrong type) is a 4xx.

==========================================  ======  ============================================
``billing/plans/``                          GET     ``{"plans": [plan, ...]}``
``billing/subscriptions/?user=PK``          GET     ``{"subscriptions": [...]}`` (active ones;
``billing/subscriptions/?orga=PK``                  ``all=1`` adds the ended and future ones)
``billing/subscriptions/``                  POST    grant ``plan`` to ``user`` or ``orga``, from
                                                    ``start`` to ``end`` (ISO 8601): 201
``billing/subscriptions/<id>``              GET     one subscription
``billing/subscriptions/<id>``              DELETE  cancel it (now, or at ``at``)
==========================================  ======  ============================================
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from werkzeug.wrappers import Response

from plugit_core.proxy.api import ApiError, parse_id

from .store import BillingError, ConflictError, NotFoundError, Subscription, parse_datetime

if TYPE_CHECKING:
    from plugit_core.proxy.api import ApiCall

__all__ = ["ENDPOINTS"]

_GRANT_FIELDS = frozenset({"plan", "user", "orga", "start", "end"})
_CANCEL_FIELDS = frozenset({"at"})
_TRUE = ("1", "true", "yes", "on")


def _store(call: ApiCall) -> Any:
    store = getattr(call.proxy, "billing", None)
    if store is None:
        raise ApiError(503, "billing_unavailable", "this site has no billing (no billing backend)")
    return store


def _created(data: Any) -> Response:
    response = Response(
        json.dumps(data, ensure_ascii=False), status=201, mimetype="application/json"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"
    return response


def _refused(exc: Exception) -> ApiError:
    """A store refusal as an API error (nothing was written)."""
    message = exc.message if isinstance(exc, BillingError) else str(exc)
    if isinstance(exc, KeyError):
        return ApiError(404, "not_found", message)
    if isinstance(exc, ConflictError):
        return ApiError(409, "conflict", message)
    return ApiError(400, "bad_request", message)


def _body(call: ApiCall, allowed: frozenset[str]) -> dict[str, Any]:
    """The request's fields, from a JSON object or a form (each field once); 4xx otherwise."""
    request = call.request
    raw = request.get_data(cache=True)  # read, and checked against the limit, by the API
    data: dict[str, Any] = {}
    if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        if request.files:  # parsed from the body read above
            raise ApiError(400, "bad_request", "this endpoint takes no files")
        for key, values in request.form.lists():
            if len(values) > 1:
                raise ApiError(400, "bad_request", f"{key[:40]!r} is given more than once")
            data[key] = values[0]
    elif request.mimetype == "application/json":
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ApiError(400, "bad_request", "the body is not valid JSON") from None
        except RecursionError:
            raise ApiError(400, "bad_request", "the JSON body is nested too deeply") from None
        if not isinstance(data, dict):
            raise ApiError(400, "bad_request", "the JSON body must be an object")
    elif raw.strip():
        raise ApiError(415, "unsupported_media_type", "send form fields or a JSON object")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ApiError(
            400,
            "bad_request",
            f"unknown field {unknown[0][:40]!r} (this endpoint takes {', '.join(sorted(allowed))})",
        )
    return data


def _pk_field(data: Mapping[str, Any], key: str) -> Any:
    value = data.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ApiError(400, "bad_request", f"{key} must be a pk (a number or a text)")
    if isinstance(value, str) and (len(value) > 200 or not value.strip()):
        raise ApiError(400, "bad_request", f"{key} is not a pk")
    return value


def _date_field(data: Mapping[str, Any], key: str) -> Any:
    try:
        return parse_datetime(data.get(key), key)
    except BillingError as exc:
        raise ApiError(400, "bad_request", exc.message) from None
    except OverflowError:  # 0001-01-01T00:00+01:00 is before year 1 in UTC
        raise ApiError(400, "bad_request", f"{key} is out of the range of dates") from None


def _holder(call: ApiCall, data: Mapping[str, Any]) -> tuple[Any, Any]:
    """``(user_pk, orga_pk)``: at most one, each checked (a member of the service, an
    organisation of one of its members)."""
    user = _pk_field(data, "user")
    orga = _pk_field(data, "orga")
    if user is not None and orga is not None:
        raise ApiError(400, "bad_request", "give user or orga, not both")
    if user is not None:
        return call.user(user).pk, None
    if orga is not None:
        return None, call.orga(orga).pk
    return None, None


def _own(call: ApiCall, subscription_id: str) -> tuple[Any, Subscription]:
    store = _store(call)
    number = parse_id(subscription_id)
    if not isinstance(number, int):
        raise ApiError(404, "not_found", "no such subscription")
    subscription = store.get(number)
    if subscription is None or subscription.service != call.service:
        raise ApiError(404, "not_found", "no such subscription")
    return store, subscription


# -- views -----------------------------------------------------------------------------------------


def plans(call: ApiCall) -> dict[str, Any]:
    return {"plans": [plan.as_dict() for plan in _store(call).list_plans(call.service)]}


def list_subscriptions(call: ApiCall) -> dict[str, Any]:
    store = _store(call)
    args = call.request.args
    for key in args:
        if key not in ("user", "orga", "all"):
            raise ApiError(400, "bad_request", f"unknown parameter {key[:40]!r}")
    user_pk, orga_pk = _holder(call, {k: args.get(k) for k in ("user", "orga")})
    everything = args.get("all", "").lower() in _TRUE
    found = store.subscriptions(
        call.service, user_pk=user_pk, orga_pk=orga_pk, include_inactive=everything
    )
    return {"subscriptions": [subscription.as_dict() for subscription in found]}


def grant(call: ApiCall) -> Response:
    store = _store(call)
    data = _body(call, _GRANT_FIELDS)
    plan = data.get("plan")
    if not isinstance(plan, str) or not plan:
        raise ApiError(400, "bad_request", "plan is required: the code of one of your plans")
    start = _date_field(data, "start")
    end = _date_field(data, "end")
    user_pk, orga_pk = _holder(call, data)
    if user_pk is None and orga_pk is None:
        raise ApiError(400, "bad_request", "give the user or the orga to subscribe")
    try:
        subscription = store.grant(
            call.service, plan, user_pk=user_pk, orga_pk=orga_pk, start=start, end=end
        )
    except NotFoundError as exc:
        raise ApiError(404, "unknown_plan", exc.message) from None
    except (KeyError, ValueError) as exc:
        raise _refused(exc) from None
    return _created(subscription.as_dict())


def get_subscription(call: ApiCall, subscription_id: str) -> dict[str, Any]:
    return _own(call, subscription_id)[1].as_dict()


def cancel(call: ApiCall, subscription_id: str) -> dict[str, Any]:
    store, subscription = _own(call, subscription_id)
    data = _body(call, _CANCEL_FIELDS)
    for key in call.request.args:
        if key != "at":
            raise ApiError(400, "bad_request", f"unknown parameter {key[:40]!r}")
    if "at" not in data and "at" in call.request.args:
        data["at"] = call.request.args["at"]
    at = _date_field(data, "at")
    try:
        return store.cancel(subscription.id, at=at).as_dict()
    except (KeyError, ValueError) as exc:
        raise _refused(exc) from None


ENDPOINTS: tuple[tuple[str, Any, tuple[str, ...]], ...] = (
    ("billing/plans/", plans, ("GET",)),
    ("billing/subscriptions/", list_subscriptions, ("GET",)),
    ("billing/subscriptions/", grant, ("POST",)),
    ("billing/subscriptions/<subscription_id>", get_subscription, ("GET",)),
    ("billing/subscriptions/<subscription_id>", cancel, ("DELETE",)),
)
