# Settings of the polls service, read by the PlugIt library at start-up (the original's config.py).
import os

DEBUG = True

# The original library's default protocol name, which its own example service kept.
PI_API_NAME = "plugit-sample"
PI_BASE_URL = "/"
PI_ALLOWED_NETWORKS = ["127.0.0.1/32"]

API_URL = "http://127.0.0.1:8000/ebuio_api/"

# The service's own settings.
DATABASE = os.environ.get("POLLS_DATABASE", "polls.db")
EXPORT_FOLDER = os.environ.get("POLLS_EXPORTS", "exports")
MAX_RESPONSES = 10
