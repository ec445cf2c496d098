"""The backend kinds: one package per kind, each holding the kind's interface and the type of
the factory a plugin registers and, in its ``testing`` module, the kind's shared conformance
suite (Kinto's ``core/cache/`` layout).

=============  ===============================================================================
``cache``      :class:`~plugit_core.kinds.cache.CacheBackend`: meta, template and page caches
``session``    :class:`~plugit_core.kinds.session.SessionBackend`: browser sessions
``theme``      :class:`~plugit_core.kinds.theme.Theme`: the site's look (data, no suite)
``auth``       :class:`~plugit_core.kinds.auth.PasswordBackend`, ``RedirectBackend``: logins
``users``      :class:`~plugit_core.kinds.users.UserStore`: the directory
``billing``    :class:`~plugit_core.kinds.billing.BillingStore`: plans and subscriptions
``mail``       :class:`~plugit_core.kinds.mail.MailBackend`: sends the services' mail
``mailqueue``  :class:`~plugit_core.kinds.mailqueue.MailQueue`: the mail backend's queue
=============  ===============================================================================

An implementation of a kind is a backend (``plugit_backends`` or a third-party plugin),
registered under the kind's name through ``plugit_register_backends`` (the registry is
:mod:`plugit_core.backends`; the mail queue is chosen by the mail backend's settings instead).
Its tests subclass the kind's suite, which runs the same contract against every implementation
and its real server.  The ``testing`` modules need pytest and are imported by no code that
serves; the interfaces import no test tooling.
"""
