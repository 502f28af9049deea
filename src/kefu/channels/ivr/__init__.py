"""IVR flows: menus, prompts, digit collection, lookups, self-service answers from knowledge, routing."""
