"""URLs of the Django host example (``/polls/`` and ``/_plugit/`` never reach Django)."""

from django.urls import path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", views.login_view, name="login"),
    path("logout/", views.logout_view, name="logout"),
]
