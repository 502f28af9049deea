"""Cross-cutting parts: auth, the permission policy, audit, events, jobs, i18n, errors."""
