"""Write a PlugIt service: decorated actions served as a WSGI application.

Porting from the original library means changing imports only::

    from plugit.utils import action, only_logged_user, PlugItRedirect   # before
    from plugit_core.service import action, only_logged_user, PlugItRedirect  # after
"""

from .api import (
    Orga,
    PlugItAPI,
    PlugItAPIAuthError,
    PlugItAPIDeadlineError,
    PlugItAPIError,
    PlugItAPIUnavailableError,
    User,
    current_deadline,
)
from .app import PlugItService
from .decorators import (
    action,
    address_in_networks,
    cache,
    crossdomain,
    fragment_assets,
    json_only,
    no_template,
    only_admin_user,
    only_logged_user,
    only_member_user,
    only_orga_admin_user,
    only_orga_member_user,
    public,
    send_etag,
    user_info,
    xml_only,
)
from .helpers import (
    abort,
    add_unique_postfix,
    addressInNetwork,
    get_session_from_request,
    md5Checksum,
)
from .messages import ServiceRequest
from .results import PlugItRedirect, PlugItSendFile, PlugItSetSession
from .settings import ServiceConfig

__all__ = [
    "Orga",
    "PlugItAPI",
    "PlugItAPIAuthError",
    "PlugItAPIDeadlineError",
    "PlugItAPIError",
    "PlugItAPIUnavailableError",
    "PlugItRedirect",
    "PlugItSendFile",
    "PlugItService",
    "PlugItSetSession",
    "ServiceConfig",
    "ServiceRequest",
    "User",
    "abort",
    "action",
    "add_unique_postfix",
    "addressInNetwork",
    "address_in_networks",
    "cache",
    "crossdomain",
    "current_deadline",
    "fragment_assets",
    "get_session_from_request",
    "json_only",
    "md5Checksum",
    "no_template",
    "only_admin_user",
    "only_logged_user",
    "only_member_user",
    "only_orga_admin_user",
    "only_orga_member_user",
    "public",
    "send_etag",
    "user_info",
    "xml_only",
]
