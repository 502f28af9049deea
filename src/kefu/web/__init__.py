"""Server-rendered pages (Jinja2 + htmx + Alpine.js), their templates and static assets."""

from pathlib import Path

WEB_DIR = Path(__file__).resolve().parent
STATIC_DIR = WEB_DIR / "static"
TEMPLATES_DIR = WEB_DIR / "templates"
