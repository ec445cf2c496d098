"""Dev mode's simulated users (``ano``, ``log``, ``mem``, ``adm``), as in the original's
standalone proxy.  Active only when ``dev_mode = true``; the user mode is kept in the session and
switched at ``<mount>ebuio_setUser?mode=...``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from plugit_core.hookspecs import hookimpl
from plugit_core.users import SIMULATED_MODES, PlugItUser, simulated_user

if TYPE_CHECKING:
    from plugit_core.proxy.context import PluginContext


@hookimpl(trylast=True)
def plugit_identify_user(request: Any, proxy: PluginContext) -> PlugItUser | None:
    if not proxy.config.dev_mode:
        return None
    mode = request.session.get("dev_user_mode", "ano")
    return simulated_user(mode if mode in SIMULATED_MODES else "ano")
