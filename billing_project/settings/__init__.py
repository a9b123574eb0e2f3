"""Settings, read from the environment in one place (see env.py for the parsing helpers).

`BILLING_ENV` selects the mode: `development` (default: SQLite, file-system broker, debug),
`production` (refuses to start without a real SECRET_KEY; secure cookies, HSTS) or `test`.
"""

from billing_project.settings.base import *  # noqa: F403
