# ruff: noqa: E501  (payloads are one template per line, as an attacker writes them)
"""The template payload corpus: what a hostile service's templates try, in both dialects.

Every payload is a whole template.  None may put a canary in the page, a log line or a mail,
change the directory, or get anything but a page (200) or the themed error page (4xx/502).

The corpus is built from a few families crossed with the paths into the proxy's objects that the
issue found, so that a path closed in one spelling is tried in every other spelling too.
"""

from __future__ import annotations

# Paths from the helpers in the context to the proxy's secrets and objects (the findings).
SECRET_PATHS = [
    "plugit_include.pipeline.proxy.config.secret_key",
    "plugit_include.pipeline.config.secret_key",
    "plugit_include.page.proxy.config.secret_key",
    "plugit_get_user.pipeline.proxy.config.secret_key",
    "plugit_get_user.page.proxy.config.secret_key",
    "plugit_include.page.mount.secret",
    "plugit_include.page.mount.api_key",
    "plugit_include.page.client.mount.secret",
    "plugit_get_user.page.mount.api_key",
    "plugit_include.pipeline.config.services",
    "plugit_include.pipeline.proxy.clients",
    "plugit_include.pipeline.proxy.config.sections",
    "plugit_include.page.request.cookies",
    "plugit_include.page.request.headers",
    "plugit_include.page.request.environ",
    "plugit_include.page.request.session",
    "plugit_include.page.request.environ.HTTP_COOKIE",
    "plugit_include.page.request.cookies.plugit_session",
    "plugit_include.pipeline.proxy.sessions._serializer.secret_keys",
    "plugit_include.pipeline.proxy.mail.settings",
    "plugit_include.context",
    "plugit_include.page",
    "plugit_include.page.user",
    "plugit_include.pipeline.proxy.api",
]

# Calls into the user store and other objects, by method (Django's dialect calls them bare).
CALLS = [
    "plugit_include.pipeline.proxy.users.list_users()",
    "plugit_include.pipeline.proxy.users.members('healthy')",
    "plugit_include.pipeline.proxy.users.get_user(3)",
    "plugit_include.pipeline.proxy.users.get_by_username('buddy')",
    "plugit_include.pipeline.proxy.users.set_superuser(ebuio_u.pk, true)",
    "plugit_include.pipeline.proxy.users.grant(ebuio_u.pk, 'healthy', 'admin')",
    "plugit_include.pipeline.proxy.users.create_user('intruder')",
    "plugit_include.pipeline.proxy.users.set_password_hash(4, 'x')",
    "plugit_include.pipeline.proxy.users.list_orgas()",
    "plugit_include.pipeline.proxy.lookup_user(3)",
    "plugit_include.pipeline.proxy.list_orgas()",
    "plugit_include.pipeline.proxy.csrf_token(plugit_include.page.request)",
    "plugit_include.page.client.template('')",
    "plugit_get_user.pipeline.proxy.users.get_user(4)",
]

# Calls of the Django dialect (no parentheses: argument-less callables are called).
DJANGO_CALLS = [
    "plugit_include.pipeline.proxy.users.list_users",
    "plugit_include.pipeline.proxy.users.list_orgas",
    "plugit_include.pipeline.proxy.list_orgas",
    "plugit_include.page.request.cookies.items",
    "plugit_include.page.request.environ.items",
    "plugit_include.pipeline.proxy.config.sections.items",
    "plugit_include.page.service_user.properties",
]

JINJA_CLASSICS = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''.__class__.__mro__ }}",
    "{{ [].__class__.__base__.__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.environ }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ lipsum.__globals__ }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ range.__self__ }}",
    "{{ dict.__base__ }}",
    "{{ self.__init__.__globals__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ self._TemplateReference__context.parent }}",
    "{{ ()|attr('__class__') }}",
    "{{ ''|attr('__class__')|attr('__mro__') }}",
    "{{ plugit_include|attr('pipeline') }}",
    "{{ (plugit_include|attr('pipeline')|attr('proxy')|attr('config')).secret_key }}",
    "{{ plugit_include|attr('__dict__') }}",
    "{{ plugit_include.__dict__ }}",
    "{{ plugit_include.__call__.__globals__ }}",
    "{{ plugit_include.__class__.__init__.__globals__ }}",
    "{{ plugit_get_user.__class__.__mro__ }}",
    "{{ plugit_include.__self__ }}",
    "{{ plugit_include.__func__ }}",
    "{{ plugit_include.func_globals }}",
    "{{ plugit_include|pprint }}",
    "{{ plugit_include.pipeline|pprint }}",
    "{{ plugit_include.page|pprint }}",
    "{{ plugit_include|string }}",
    "{{ plugit_include.page|string }}",
    "{{ plugit_include.pipeline.proxy.config|pprint }}",
    "{{ plugit_include.pipeline.proxy.config|tojson }}",
    "{{ ebuio_u|tojson }}{{ ebuio_u.__class__ }}",
    "{{ csrf_field.__class__.__init__.__globals__ }}",
    "{{ csrf_field.__html__.__globals__ }}",
    "{{ '{0.__class__}'.format(plugit_include) }}",
    "{{ '{0.pipeline.proxy.config.secret_key}'.format(plugit_include) }}",
    "{{ '{0.page.request.cookies}'.format(plugit_include) }}",
    "{{ '{.pipeline.proxy.config.secret_key}'.format_map(plugit_include) }}",
    "{{ '{x.pipeline.config.secret_key}'.format_map({'x': plugit_include}) }}",
    "{{ '%s'|format(plugit_include.pipeline.proxy.config.secret_key) }}",
    "{{ '%(a)s'|format(a=plugit_include.page.mount.api_key) }}",
    "{{ '%r'|format(plugit_include.page.request.cookies) }}",
    "{{ '%s' % plugit_include.page.request.environ }}",
    "{{ csrf_field|format(plugit_include.page.mount.secret) }}",
    "{{ [plugit_include]|map(attribute='pipeline.proxy.config.secret_key')|list }}",
    "{{ [plugit_include]|map(attribute='page.request.cookies')|list }}",
    "{{ [plugit_include]|selectattr('pipeline.proxy.config.secret_key')|list }}",
    "{{ [plugit_include, plugit_include]|sort(attribute='page.mount.api_key')|map(attribute='page.mount.api_key')|join }}",
    "{{ [plugit_include]|groupby('pipeline.proxy.config.secret_key') }}",
    "{% for g in [plugit_include]|groupby('page.mount.secret') %}{{ g.grouper }}{% endfor %}",
    "{{ [plugit_include]|unique(attribute='page.mount.secret')|map(attribute='page.mount.secret')|first }}",
    "{{ [plugit_include]|min(attribute='page.mount.secret') }}",
    "{{ [plugit_include]|sum(attribute='page.mount.secret', start='') }}",
    "{{ [plugit_include]|map('attr', 'pipeline')|map('attr', 'proxy')|list }}",
    "{{ {'a': plugit_include}|dictsort }}",
    "{{ plugit_include.pipeline.proxy.config.secret_key|list|join(',') }}",
    "{{ plugit_include.pipeline.proxy.config.secret_key|reverse }}",
    "{{ plugit_include.pipeline.proxy.config.secret_key|upper }}",
    "{{ plugit_include.pipeline.proxy.config.secret_key|urlencode }}",
    "{{ plugit_include.pipeline.proxy.config.secret_key|batch(4)|list }}",
    "{{ plugit_include.pipeline.proxy.config.secret_key[0:18] }}-{{ plugit_include.pipeline.proxy.config.secret_key[18:] }}",
    "{% set ns = namespace(k=plugit_include.pipeline.proxy.config) %}{{ ns.k.secret_key }}",
    "{% set ns = namespace() %}{% set ns.p = plugit_include %}{{ ns.p.page.mount.secret }}",
    "{% macro m(x) %}{{ x.pipeline.proxy.config.secret_key }}{% endmacro %}{{ m(plugit_include) }}",
    "{% macro m() %}{{ caller() }}{% endmacro %}{% call m() %}{{ plugit_include.page.mount.api_key }}{% endcall %}",
    "{% macro m() %}{{ caller(plugit_include) }}{% endmacro %}{% call(p) m() %}{{ p.page.request.cookies }}{% endcall %}",
    "{{ m.__globals__ if m is defined else lipsum.__globals__ }}",
    "{% macro m() %}{% endmacro %}{{ m.__init__.__globals__ }}{{ m._environment }}",
    "{% macro m() %}{% endmacro %}{{ m._environment.globals }}",
    "{% for x in range(1) %}{{ loop.__class__.__init__.__globals__ }}{% endfor %}",
    "{% for x in range(1) %}{{ loop._iterator }}{{ loop.cycle.__func__ }}{% endfor %}",
    "{% for x in [plugit_include] recursive %}{{ x.pipeline.proxy.config.secret_key }}{% endfor %}",
    "{{ cycler(plugit_include).next().page.mount.secret }}",
    "{{ cycler(1).__class__.__init__.__globals__ }}",
    "{{ joiner().__class__.__init__.__globals__ }}",
    "{% set x = plugit_include.pipeline.proxy %}{{ x.config.secret_key }}",
    "{% with p = plugit_include.page %}{{ p.request.cookies.plugit_session }}{% endwith %}",
    "{% filter upper %}{{ plugit_include.page.mount.secret }}{% endfilter %}",
    "{% include plugit_include.pipeline.proxy.config.secret_key ignore missing %}",
    "{% include '../../../../etc/passwd' ignore missing %}x",
    "{% extends '/etc/passwd' %}",
    "{% import 'plugit/base.html' as b %}{{ b.__dict__ }}",
    "{% from 'plugit/base.html' import x %}{{ x }}",
    "{{ plugit_include('ebuio_api/user/3') }}",
    "{{ plugit_include('../healthy/') }}",
    "{{ plugit_include('/healthy/') }}",
    "{{ plugit_include('..%2f..%2fhealthy%2f') }}",
    "{% for pk in range(0, 8) %}{{ plugit_get_user(pk) }}{% endfor %}",
    "{% for pk in ['1', '2', '3', '4', ' 3', '3.0', '03', '-1'] %}{{ plugit_get_user(pk) }}{% endfor %}",
    "{{ plugit_get_user(3)|tojson }}{{ plugit_get_user(4)|tojson }}",
    "{{ plugit_get_user(3).email }}{{ plugit_get_user(4).email }}",
    "{{ plugit_get_user(ebuio_u.pk + 2) }}",
    "{{ plugit_get_user(plugit_get_user) }}",
    "{{ plugit_get_user([3]) }}{{ plugit_get_user({'pk': 3}) }}",
    "{{ ebuio_u.items()|list }}{{ ebuio_orgas }}{{ ebuio_orga }}",
    "{{ ebuio_u.update({'ebuio_admin': True}) }}",
    "{{ ebuio_u.__setitem__('ebuio_admin', True) }}",
    "{{ ebuio_orgas.append(1) }}{{ ebuio_orgas.pop() }}",
    "{{ csrf_token }}{{ csrf_field }}",
    "{{ config }}{{ request }}{{ session }}{{ g }}{{ settings }}",
    "{{ self }}{{ self.content() if self.content is defined }}",
    "{{ [].copy.__self__.__class__ }}",
    "{{ ''.join.__self__ }}",
    "{{ ''.encode('utf-8').decode.__self__ }}",
    "{{ (1).__class__.__base__.__subclasses__() }}",
    "{{ (1).real.__class__ }}",
    "{{ {}.fromkeys.__self__.__subclasses__() }}",
    "{{ {}.keys.__self__ }}",
    "{{ undefined_thing.__class__.__init__.__globals__ }}",
    "{{ undefined_thing._undefined_exception }}",
    "{{ getattr }}{{ __builtins__ }}{{ globals() }}",
    "{{ plugit_include.pipeline.proxy.config.secret_key is defined }}{{ plugit_include.pipeline.proxy.config.secret_key is string }}",
    "{% if plugit_include.pipeline.proxy.config.secret_key.startswith('cnry') %}LEAKBIT{% endif %}",
    "{% raw %}{{ 7*7 }}{% endraw %}{{ 7*7 }}",
    "{{ plugit_include.page.request.args }}{{ plugit_include.page.request.remote_addr }}",
    "{{ plugit_include.pipeline.hooks.pm.hook.plugit_response }}",
    "{{ plugit_include.pipeline.proxy.context.config.secret_key }}",
    "{{ plugit_include.rendering.context.config.secret_key }}",
    "{{ plugit_include._rendering.context.config.secret_key }}",
    "{{ plugit_get_user._rendering.context.config.secret_key }}",
    "{{ plugit_get_user.rendering.config.secret_key }}",
    "{{ plugit_fragment.__self__.proxy.context.config.secret_key }}",
    "{{ plugit_include.pipeline.proxy.pm.list_name_plugin() }}",
    "{{ plugit_include.pipeline.proxy.site.env.globals }}",
    "{{ plugit_include.pipeline.proxy.templates.hostile.env.globals }}",
    "{{ plugit_include.pipeline.proxy.templates['healthy']._compiled }}",
    "{{ plugit_include.pipeline.proxy.csrf.marks.site_token }}",
    "{{ plugit_include.pipeline.proxy.cache.get('x') }}",
]

DJANGO_CLASSICS = [
    "{{ plugit_include.pipeline.proxy.config.secret_key }}",
    "{{ plugit_include.__class__ }}",
    "{{ plugit_include._Include__x }}",
    "{{ plugit_include.page.request.cookies.plugit_session }}",
    "{{ plugit_include.page.request.environ.HTTP_COOKIE }}",
    "{% with p=plugit_include.pipeline %}{{ p.proxy.config.secret_key }}{% endwith %}",
    "{% with p=plugit_include.page.mount %}{{ p.secret }}{{ p.api_key }}{% endwith %}",
    "{% for m in plugit_include.pipeline.config.services %}{{ m.secret }}|{{ m.api_key }}{% endfor %}",
    "{% for k, v in plugit_include.page.request.cookies.items %}{{ k }}={{ v }}{% endfor %}",
    "{% for k, v in plugit_include.pipeline.proxy.config.sections.items %}{{ k }}={{ v }}{% endfor %}",
    "{% for u in plugit_include.pipeline.proxy.users.list_users %}{{ u.username }} {{ u.email }}{% endfor %}",
    "{% for o in plugit_include.pipeline.proxy.list_orgas %}{{ o.name }}{% endfor %}",
    "{{ plugit_include.pipeline.proxy.config.secret_key|default:'x' }}",
    "{{ plugit_include.pipeline.proxy.config.secret_key|upper }}",
    "{{ plugit_include.pipeline.proxy.config.secret_key|make_list|join:',' }}",
    "{{ plugit_include.pipeline.proxy.config.secret_key|slice:':18' }}",
    "{{ plugit_include.pipeline.proxy.config.secret_key|cut:'-' }}",
    "{{ plugit_include.pipeline.proxy.config.secret_key|urlencode }}",
    "{{ plugit_include.pipeline.proxy.config.secret_key|escapejs }}",
    "{{ plugit_include.pipeline.proxy.config.secret_key|addslashes }}",
    "{{ plugit_include.pipeline.proxy.config.secret_key|slugify }}",
    "{{ plugit_include.pipeline.proxy.config.secret_key|title }}",
    "{{ plugit_include.pipeline.proxy.config.secret_key|truncatechars:500 }}",
    "{{ plugit_include.pipeline.proxy.config.secret_key|add:'' }}",
    "{{ plugit_include|stringformat:'r' }}",
    "{{ plugit_include|stringformat:'s' }}",
    "{{ plugit_include.page|stringformat:'r' }}",
    "{{ plugit_include.pipeline.proxy.config|stringformat:'r' }}",
    "{{ plugit_include.page.request.cookies|stringformat:'r' }}",
    "{{ plugit_include.page.mount|stringformat:'r' }}",
    "{{ plugit_include.pipeline.config.services|dictsort:'secret' }}",
    "{{ plugit_include.pipeline.config.services|first }}",
    "{% for s in plugit_include.pipeline.config.services|dictsort:'api_key' %}{{ s.api_key }}{% endfor %}",
    "{% regroup plugit_include.pipeline.config.services by secret as g %}{% for x in g %}{{ x.grouper }}{% endfor %}",
    "{% firstof plugit_include.page.mount.secret 'x' %}",
    "{% cycle plugit_include.page.mount.api_key 'b' as c %}{{ c }}",
    "{% ifequal plugit_include.page.mount.secret plugit_include.page.mount.secret %}same{% endifequal %}",
    "{% if plugit_include.pipeline.proxy.config.secret_key %}{{ plugit_include.pipeline.proxy.config.secret_key }}{% endif %}",
    "{% filter upper %}{{ plugit_include.pipeline.proxy.config.secret_key }}{% endfilter %}",
    "{% autoescape off %}{{ plugit_include.page.request.environ }}{% endautoescape %}",
    "{% spaceless %}{{ plugit_include.page.request.headers }}{% endspaceless %}",
    "{% blocktrans with k=plugit_include.pipeline.proxy.config.secret_key %}{{ k }}{% endblocktrans %}",
    "{% plugitGetUser 3 as u %}{{ u.email }}{{ u.username }}{{ u.first_name }}",
    "{% plugitGetUser 4 as u %}{{ u }}",
    "{% plugitGetUser '3' as u %}{{ u.last_name }}",
    "{% plugitInclude '../healthy/' %}",
    "{% include plugit_include.pipeline.proxy.config.secret_key %}",
    "{% widthratio plugit_include.page.mount.timeout 1 1 %}",
    "{{ ebuio_u.items }}{{ ebuio_orga }}{{ ebuio_orgas }}",
    "{% csrf_token %}{{ csrf_token }}",
    "{% templatetag openvariable %} plugit_include.pipeline.proxy.config.secret_key {% templatetag closevariable %}",
    "{% verbatim %}{{ plugit_include.pipeline.proxy.config.secret_key }}{% endverbatim %}",
    "{{ plugit_get_user.pipeline.proxy.users.list_users }}",
    "{{ plugit_include.pipeline.proxy.users.list_orgas }}",
    "{{ plugit_include.page.user.email }}{{ plugit_include.page.user.orgas }}",
]


def jinja_payloads() -> list[tuple[str, str]]:
    out = [(f"j-classic-{n}", p) for n, p in enumerate(JINJA_CLASSICS)]
    for n, path in enumerate(SECRET_PATHS):
        out.append((f"j-path-{n}", "{{ " + path + " }}"))
        out.append((f"j-path-item-{n}", "{{ " + _as_items(path) + " }}"))
        out.append((f"j-path-attrfilter-{n}", "{{ " + _as_attr_filter(path) + " }}"))
    for n, call in enumerate(CALLS):
        out.append((f"j-call-{n}", "{{ " + call + " }}"))
    for n, path in enumerate(SECRET_PATHS[:10]):  # inside the theme's base template
        out.append(
            (
                f"j-extends-{n}",
                '{% extends "plugit/base.html" %}{% block content %}{{ '
                + path
                + " }}{% endblock %}",
            )
        )
    return out


def django_payloads() -> list[tuple[str, str]]:
    out = [(f"d-classic-{n}", p) for n, p in enumerate(DJANGO_CLASSICS)]
    for n, path in enumerate(SECRET_PATHS):
        if "._" in path:
            continue  # refused at translation time (a different test)
        out.append((f"d-path-{n}", "{{ " + path + " }}"))
        out.append((f"d-with-{n}", "{% with v=" + path + " %}{{ v }}{% endwith %}"))
        out.append((f"d-for-{n}", "{% for v in " + path + " %}{{ v }}{% endfor %}"))
    for n, call in enumerate(DJANGO_CALLS):
        out.append((f"d-call-{n}", "{{ " + call + " }}"))
        out.append((f"d-forcall-{n}", "{% for v in " + call + " %}{{ v }}{% endfor %}"))
    out.append(
        (
            "d-extends",
            '{% extends "plugIt/base.html" %}{% block content %}'
            "{{ plugit_include.pipeline.proxy.config.secret_key }}{% endblock %}",
        )
    )
    return out


def _as_items(path: str) -> str:
    first, *rest = path.split(".")
    return first + "".join(f"[{part!r}]" for part in rest)


def _as_attr_filter(path: str) -> str:
    first, *rest = path.split(".")
    expression = first
    for part in rest:
        expression = f"({expression}|attr({part!r}))"
    return expression


PAYLOADS: list[tuple[str, str, str]] = [
    *(("jinja", name, source) for name, source in jinja_payloads()),
    *(("django", name, source) for name, source in django_payloads()),
]
