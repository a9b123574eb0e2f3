"""The embedded default's database engine: Django's SQLite backend with exact decimals.

`DATABASE_URL=sqlite:///...` selects it (billing_project/settings/base.py). See `base.py`.
"""
