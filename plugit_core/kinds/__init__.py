"""The backend kinds: one package per kind, each holding the kind's interface and, in its
``testing`` module, the kind's shared conformance suite.

=============  ==========================================================================
``billing``    plans and subscriptions: :class:`~plugit_core.kinds.billing.BillingStore`
``mailqueue``  the mail backend's durable queue: :class:`~plugit_core.kinds.mailqueue.MailQueue`
=============  ==========================================================================

An implementation of a kind is a backend (``plugit_backends`` or a third-party plugin),
registered under the kind's name through ``plugit_register_backends`` (the registry is
:mod:`plugit_core.backends`).  Its tests subclass the kind's suite, which runs the same
contract against every implementation and its real server.  The ``testing`` modules need
pytest and are imported by no code that serves.
"""
